"""How registry GETs travel: through the lean HTTP/1.1 pool (service/http/pool.py), with redirects followed
through aiohttp, bodies bounded, and every way a server can fail named in one line. Against raw socket
servers that answer as each test likes (tests/rawhttp.py); the real and simulated registries of the other
registry tests cover the ordinary answers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import http.server
import ssl
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import orjson
import pytest
from anyio.streams.tls import TLSListener

from service.registry import Keychain, transport
from service.registry.cache import RegistryCache
from service.registry.client import MAX_MANIFEST, RegistryClient
from service.registry.errors import NotFound, RegistryTimeout, UnexpectedResponse, Unreachable
from service.registry.media import OCI_CONFIG, OCI_MANIFEST
from simcluster.certs import serving_certificate
from tests.rawhttp import Request, raw_server, read_request

pytestmark = pytest.mark.anyio

USER, PASSWORD = "alice", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CONFIG = orjson.dumps({"config": {"Labels": {"from": "storage"}}})
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
MANIFEST = orjson.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": CONFIG_DIGEST, "size": len(CONFIG)},
        "layers": [],
    }
)


def answer(status: str, body: bytes = b"", **headers: str) -> bytes:
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    if "Transfer_Encoding" not in headers:
        head += f"Content-Length: {len(body)}\r\n"
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


Route = Callable[[Request], bytes | None]  # None: hang up without answering


class Server:
    """Answers each request by its path; records (path, headers) of every request."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.connections = 0
        self.closed = anyio.Event()  # a connection ended

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        buf = bytearray()
        try:
            while (request := await read_request(stream, buf)) is not None:
                self.seen.append((request[1], request[2]))
                route = self.routes.get(request[1])
                reply = route(request) if route else answer("404 Not Found", b'{"errors":[]}')
                if reply is None:
                    return
                await stream.send(reply)
        finally:
            self.closed.set()

    def authorizations(self, path: str) -> list[str | None]:
        return [headers.get("authorization") for seen, headers in self.seen if seen == path]


def basic_protected(body: bytes, content_type: str) -> Route:
    def route(request: Request) -> bytes:
        if request[2].get("authorization") != BASIC:
            return answer("401 Unauthorized", WWW_Authenticate='Basic realm="test"')
        return answer("200 OK", body, Content_Type=content_type)

    return route


@asynccontextmanager
async def client_of(url: str, **options: Any) -> AsyncIterator[RegistryClient]:
    """A client that knows ``url`` is where its registry is (no HTTPS probe of a plain server)."""
    host = url.split("://", 1)[1]
    cache = RegistryCache()
    cache.bases.put(host, url)
    secret = {
        "type": "kubernetes.io/dockerconfigjson",
        "data": {
            ".dockerconfigjson": base64.b64encode(
                orjson.dumps({"auths": {host: {"username": USER, "password": PASSWORD}}})
            ).decode()
        },
    }
    options.setdefault("keychain", Keychain.from_secrets([secret]))
    options.setdefault("connect_timeout", 2)
    async with RegistryClient(cache=cache, timeout=5, **options) as client:
        yield client


@pytest.mark.parametrize("where", ["same origin", "other origin"])
async def test_a_redirected_blob_is_fetched_and_credentials_stay_with_their_origin(where: str) -> None:
    storage = Server({"/storage/config": lambda _: answer("200 OK", CONFIG)})
    async with raw_server(storage) as storage_url:
        routes: dict[str, Route] = {"/v2/app/manifests/v1": basic_protected(MANIFEST, OCI_MANIFEST)}
        location = "/storage/config" if where == "same origin" else f"{storage_url}/storage/config"
        blob = f"/v2/app/blobs/{CONFIG_DIGEST}"
        routes[blob] = lambda _: answer("307 Temporary Redirect", Location=location)
        routes["/storage/config"] = lambda request: answer("200 OK", CONFIG)
        registry = Server(routes)
        async with raw_server(registry) as url, client_of(url) as client:
            host = url.split("://", 1)[1]
            with anyio.fail_after(10):
                config = await client.image_config(f"{host}/app:v1")
    assert config.labels == {"from": "storage"}
    assert registry.authorizations("/v2/app/manifests/v1") == [None, BASIC]  # challenged, then answered
    assert registry.authorizations(blob) == [BASIC]
    if where == "same origin":
        assert registry.authorizations("/storage/config") == [BASIC]
        assert storage.seen == []
    else:
        assert storage.authorizations("/storage/config") == [None]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_manifest_past_its_limit_is_refused(framing: str) -> None:
    big = b"x" * (MAX_MANIFEST + 1)
    if framing == "chunked":
        reply = answer("200 OK", b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big), Transfer_Encoding="chunked")
        said = f"more than {MAX_MANIFEST} bytes for GET /v2/app/manifests/v1"
    else:
        reply = answer("200 OK", big)
        said = f"{MAX_MANIFEST + 1} bytes for GET /v2/app/manifests/v1 (limit {MAX_MANIFEST})"
    async with raw_server(Server({"/v2/app/manifests/v1": lambda _: reply})) as url, client_of(url) as client:
        host = url.split("://", 1)[1]
        with anyio.fail_after(10), pytest.raises(UnexpectedResponse) as info:
            await client.get_manifest(f"{host}/app:v1")
    assert info.value.message == f"registry {host} sent {said}"


async def test_an_error_body_past_the_limit_still_says_what_the_status_says() -> None:
    huge = answer("404 Not Found", b"e" * (MAX_MANIFEST + 1))
    async with raw_server(Server({"/v2/app/manifests/v1": lambda _: huge})) as url, client_of(url) as client:
        host = url.split("://", 1)[1]
        with anyio.fail_after(10), pytest.raises(NotFound) as info:
            await client.get_manifest(f"{host}/app:v1")
    assert info.value.message == f"image {host}/app:v1 not found (404 Not Found)"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (None, Unreachable),  # hangs up without an answer
        (b"SPDY/9 what\r\n\r\n", UnexpectedResponse),
        (answer("200 OK", b"\x1f\x8b\x08\x00", Content_Encoding="gzip"), UnexpectedResponse),
    ],
    ids=["hang-up", "garbage", "compressed"],
)
async def test_a_server_that_does_not_answer_http(reply: bytes | None, expected: type[Exception]) -> None:
    async with raw_server(Server({"/v2/app/manifests/v1": lambda _: reply})) as url, client_of(url) as client:
        host = url.split("://", 1)[1]
        with anyio.fail_after(10), pytest.raises(expected) as info:
            await client.get_manifest(f"{host}/app:v1")
    why = (
        "is unreachable: the server closed the connection"
        if reply is None
        else "sent an invalid HTTP answer to GET /v2/app/manifests/v1: "
        + ("a 200 answer in Content-Encoding gzip" if b"gzip" in reply else "unreadable HTTP response")
    )
    assert str(info.value).startswith(f"registry {host} {why}")
    assert "\n" not in str(info.value)


@asynccontextmanager
async def tls_server(handler: Server) -> AsyncIterator[tuple[str, bytes]]:
    """A TLS server for 127.0.0.1: its URL and the CA that signed its certificate."""
    certificate = serving_certificate(["127.0.0.1"])
    listener = TLSListener(
        await anyio.create_tcp_listener(local_host="127.0.0.1"),
        certificate.server_context(),
        standard_compatible=False,
    )
    port = listener.listener.extra(anyio.abc.SocketAttribute.local_port)

    async def guarded(stream: Any) -> None:
        async with stream:
            # A refused handshake (the untrusting client) is the client's hang-up, not the server's failure.
            with contextlib.suppress(
                anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError
            ):
                await handler(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, guarded)
        yield f"https://127.0.0.1:{port}", certificate.ca
        tg.cancel_scope.cancel()


async def test_tls_a_trusted_certificate_serves_and_an_untrusted_one_is_named() -> None:
    routes: dict[str, Route] = {"/v2/app/manifests/v1": lambda _: answer("200 OK", MANIFEST)}
    async with tls_server(Server(routes)) as (url, ca):
        host = url.split("://", 1)[1]
        trusted = ssl.create_default_context(cadata=ca.decode())
        async with client_of(url, ssl_context=trusted) as client:
            with anyio.fail_after(10):
                manifest = await client.get_manifest(f"{host}/app:v1")
        assert manifest.config_digest == CONFIG_DIGEST
        async with client_of(url) as client:  # the system's CAs only
            with anyio.fail_after(10), pytest.raises(Unreachable) as info:
                await client.get_manifest(f"{host}/app:v1")
    assert str(info.value).startswith(f"registry {host} is unreachable: its TLS certificate is not trusted (")
    assert "certificate verify failed" in str(info.value)


class _ManifestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's connection stays open until it closes it

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", OCI_MANIFEST)
        self.send_header("Content-Length", str(len(MANIFEST)))
        self.end_headers()
        self.wfile.write(MANIFEST)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_client_closed_just_before_its_event_loop_ends_leaves_no_tls_socket_behind() -> None:
    """Each loop here ends right after the client closes, as a CLI command's or the service's does. A
    TLS connection's close takes loop turns (its shutdown): the transport waits for them, boundedly, or
    the socket is leaked (``unclosed transport``; most such loops leaked one before it did)."""
    certificate = serving_certificate(["127.0.0.1"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ManifestHandler)
    server.daemon_threads = True
    server.socket = certificate.server_context().wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    trusted = ssl.create_default_context(cadata=certificate.ca.decode())

    async def use_and_close() -> str:
        async with client_of(url, ssl_context=trusted) as client:
            return (await client.get_manifest(f"{url.split('://')[1]}/app:v1")).config_digest

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                assert asyncio.run(use_and_close()) == CONFIG_DIGEST
                gc.collect()
    finally:
        server.shutdown()
        server.server_close()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_a_challenge_with_a_body_past_the_limit_is_still_answered() -> None:
    def route(request: Request) -> bytes:
        if request[2].get("authorization") != BASIC:
            big = b"e" * (MAX_MANIFEST + 1)
            return answer("401 Unauthorized", big, WWW_Authenticate='Basic realm="test"')
        return answer("200 OK", MANIFEST, Content_Type=OCI_MANIFEST)

    registry = Server({"/v2/app/manifests/v1": route})
    async with raw_server(registry) as url, client_of(url) as client:
        host = url.split("://", 1)[1]
        with anyio.fail_after(10):
            manifest = await client.get_manifest(f"{host}/app:v1")
    assert manifest.config_digest == CONFIG_DIGEST
    assert registry.authorizations("/v2/app/manifests/v1") == [None, BASIC]


async def test_the_servers_reason_phrase_is_kept() -> None:
    routes: dict[str, Route] = {"/v2/app/manifests/v1": lambda _: answer("520 Origin Error")}
    async with raw_server(Server(routes)) as url, client_of(url) as client:
        host = url.split("://", 1)[1]
        with anyio.fail_after(10), pytest.raises(UnexpectedResponse) as info:
            await client.get_manifest(f"{host}/app:v1")
    assert info.value.message == f"registry {host} answered GET /v2/app/manifests/v1 with 520 Origin Error"


async def test_a_redirect_to_no_url_is_an_invalid_answer() -> None:
    routes: dict[str, Route] = {
        "/v2/app/manifests/v1": lambda _: answer("307 Temporary Redirect", Location="http://[bad")
    }
    async with raw_server(Server(routes)) as url, client_of(url) as client:
        host = url.split("://", 1)[1]
        with anyio.fail_after(10), pytest.raises(UnexpectedResponse) as info:
            await client.get_manifest(f"{host}/app:v1")
    assert info.value.message == (
        f"registry {host} sent an invalid HTTP answer to GET /v2/app/manifests/v1: a redirect to 'http://[bad'"
    )


@pytest.mark.parametrize("method", ["GET", "HEAD"])  # the lean pool's, and aiohttp's
async def test_a_connection_that_does_not_come_up_in_time_names_the_connect_timeout(method: str) -> None:
    silent = Server({})  # takes the TCP connection and never says a word: the TLS handshake waits
    async with (
        raw_server(silent) as url,
        client_of(https := url.replace("http:", "https:"), connect_timeout=0.3) as client,
    ):
        host = https.split("://", 1)[1]
        read = client.get_manifest if method == "GET" else client.head_manifest
        with anyio.fail_after(10), pytest.raises(RegistryTimeout) as info:
            await read(f"{host}/app:v1")
    assert info.value.message == (
        f"registry {host} did not take a connection within 0.3s ({method} /v2/app/manifests/v1)"
    )


async def test_past_the_limit_of_origins_the_least_recently_used_ones_connections_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "MAX_POOLS", 1)
    routes: dict[str, Route] = {"/v2/app/manifests/v1": lambda _: answer("200 OK", MANIFEST)}
    first, second = Server(routes), Server(routes)
    async with raw_server(first) as url_a, raw_server(second) as url_b:
        host_a, host_b = url_a.split("://", 1)[1], url_b.split("://", 1)[1]
        cache = RegistryCache()
        cache.bases.put(host_a, url_a)
        cache.bases.put(host_b, url_b)
        async with RegistryClient(cache=cache, timeout=5, connect_timeout=2) as client:
            with anyio.fail_after(10):
                await client.get_manifest(f"{host_a}/app:v1")
                await client.get_manifest(f"{host_b}/app:v1")
                await first.closed.wait()  # its idle connection went when the second origin came
                await client.get_manifest(f"{host_a}/app:v1")
    assert (first.connections, second.connections) == (2, 1)
