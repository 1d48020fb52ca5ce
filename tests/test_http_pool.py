"""The lean HTTP/1.1 pool (service/http/pool.py) against a raw socket server: what it sends, how it frames
answers, and when it does and does not reuse a connection. KubeClient's own suite (tests/test_kube_client.py)
runs every verb through it against the emulator, and the control-plane suites against kube-apiserver over
TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import pytest

from service.http import pool as http_pool
from tests import helpers
from tests.rawhttp import OK, AnsweringServer, raw_server, read_request, wait_for_eof

pytestmark = pytest.mark.anyio


# The closest to the transports: every test on both loops `run` offers (eventLoop).
anyio_backend = helpers.on_both_event_loops


@asynccontextmanager
async def pool_for(
    handler: Callable[[anyio.abc.SocketStream], Awaitable[None]], **options: Any
) -> AsyncIterator[http_pool.Http1Pool]:
    """A raw server with ``handler`` and a pool of connections to it, closed at the end."""
    async with raw_server(handler) as url:
        pool = http_pool.Http1Pool(url, **options)
        try:
            yield pool
        finally:
            pool.close()


async def get(pool: http_pool.Http1Pool, target: str = "/x", time_limit: float = 5.0) -> http_pool.Response:
    return await pool.request("GET", target, [("Accept", "application/json")], None, time_limit)


async def test_what_goes_on_the_wire() -> None:
    server = AnsweringServer()
    async with raw_server(server) as url:
        pool = http_pool.Http1Pool(url)
        try:
            target = http_pool.request_target(
                "/api/v1/namespaces/a b", [("labelSelector", "x in (a,b),!c"), ("n", "+1")]
            )
            await pool.request(
                "PATCH", target, [("Content-Type", "application/merge-patch+json")], b'{"a":1}', 5
            )
            await pool.request("POST", "/empty", [], None, 5)
        finally:
            pool.close()
    (_, (method, sent, headers, body)), (_, (method2, _, headers2, body2)) = server.seen
    parts = urlsplit(sent)
    assert (method, parts.path) == ("PATCH", "/api/v1/namespaces/a%20b")
    assert parse_qs(parts.query) == {"labelSelector": ["x in (a,b),!c"], "n": ["+1"]}
    assert headers["host"] == url.removeprefix("http://")
    assert headers["content-type"] == "application/merge-patch+json"
    assert (headers["content-length"], body) == ("7", b'{"a":1}')
    # A write without a body still says so, as Go's client does; servers may otherwise wait for one.
    assert (method2, headers2["content-length"], body2) == ("POST", "0", b"")


async def test_keep_alive_reuses_one_connection() -> None:
    server = AnsweringServer()
    async with pool_for(server) as pool:
        answers = [await get(pool) for _ in range(3)]
    assert [a.body for a in answers] == [b"{}"] * 3
    assert [number for number, _ in server.seen] == [1, 1, 1]


async def test_a_chunked_answer_is_put_together_and_headers_are_case_insensitive() -> None:
    answer = (
        b"HTTP/1.1 404 Not Found\r\nX-Thing: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3\r\n{"a\r\n5\r\n":1}\n\r\n0\r\n\r\n'
    )
    async with pool_for(AnsweringServer(answer)) as pool:
        response = await get(pool)
        again = await get(pool)
    assert (response.status, response.body, response.headers["x-thing"]) == (404, b'{"a":1}\n', "a")
    assert again.body == response.body


async def test_connection_close_is_honoured() -> None:
    server = AnsweringServer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
    async with pool_for(server) as pool:
        await get(pool)
        await get(pool)
    assert [number for number, _ in server.seen] == [1, 2]


async def test_a_connection_idle_past_keepalive_is_not_reused() -> None:
    server = AnsweringServer()
    async with pool_for(server, keepalive=0.0) as pool:
        await get(pool)
        await get(pool)
        # The stale one is closed, not left to the server.
        with anyio.fail_after(5):
            await server.closed.wait()
    assert [number for number, _ in server.seen] == [1, 2]


async def test_a_compressed_answer_nobody_asked_for_is_refused_by_name() -> None:
    """A proxy that compresses anyway: the body is not passed on as if it were the JSON or blob asked for."""
    gzipped = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00"
    server = AnsweringServer(gzipped)
    async with pool_for(server) as pool:
        with pytest.raises(
            http_pool.BadResponse, match="a 200 answer in Content-Encoding gzip, which was not"
        ):
            await get(pool)
        with anyio.fail_after(5):
            await server.closed.wait()  # its connection is not reused
    assert "accept-encoding" not in server.requests[0][2]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 404 Not Found\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00",
        b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="r"\r\nContent-Encoding: gzip\r\n'
        b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Encoding: gzip\r\n\r\n",
    ],
    ids=["error-with-body", "challenge", "empty-success", "no-content"],
)
async def test_a_compressed_answer_with_nothing_to_misread_keeps_its_status_and_headers(
    answer: bytes,
) -> None:
    """An error answer's body only words its message: dropped, while its status and headers (a 401's
    challenge) still count; an answer with no body has nothing to misread."""
    async with pool_for(AnsweringServer(answer)) as pool:
        response = await get(pool)
    assert response.status == int(answer.split()[1]) and response.body == b""
    assert response.headers["Content-Encoding"] == "gzip"


async def test_identity_is_no_encoding() -> None:
    server = AnsweringServer(b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: 2\r\n\r\n{}")
    async with pool_for(server) as pool:
        assert (await get(pool)).body == b"{}"


async def test_a_pool_nobody_asks_closes_its_idle_connections() -> None:
    """A registry asked once must not keep its sockets until the next request, which may never come."""
    server = AnsweringServer()
    async with pool_for(server, keepalive=0.2) as pool:
        await get(pool)
        with anyio.fail_after(5):
            await server.closed.wait()  # closed by the pool's own timer: no request comes after
        await get(pool)  # and the pool still works, on a new connection
    assert [number for number, _ in server.seen] == [1, 2]


async def test_the_sweep_keeps_a_connection_idle_for_less_than_keepalive() -> None:
    server = AnsweringServer()
    async with pool_for(server, keepalive=30.0) as pool:
        await get(pool)
        pool._close_stale()  # what the timer does when it falls due while a connection was used lately
        await get(pool)
        assert pool._sweep is not None  # looked at again later
    assert [number for number, _ in server.seen] == [1, 1]


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_a_request_left_mid_answer_closes_its_connection(how: str) -> None:
    hung_up = anyio.Event()
    answering = anyio.Event()
    connections = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        buf = bytearray()
        if connections == 1:
            await read_request(stream, buf)
            answering.set()
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{")  # and never the rest
            await wait_for_eof(stream)
            hung_up.set()
            return
        while await read_request(stream, buf) is not None:
            await stream.send(OK)

    async with pool_for(handler) as pool:
        if how == "timeout":
            with pytest.raises(TimeoutError):
                await get(pool, time_limit=0.2)
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(get, pool)
                with anyio.fail_after(5):
                    await answering.wait()
                tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            await hung_up.wait()
            assert (await get(pool)).body == b"{}"
    assert connections == 2


async def test_a_server_that_hangs_up_before_answering() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream, bytearray())

    async with pool_for(handler) as pool:
        with pytest.raises(http_pool.ServerDisconnected), anyio.fail_after(5):
            await get(pool)


async def test_garbage_is_an_error_and_the_connection_is_dropped() -> None:
    server = AnsweringServer(b"SPDY/9 what\r\n\r\n")
    async with pool_for(server) as pool:
        with pytest.raises(http_pool.BadResponse), anyio.fail_after(5):
            await get(pool)
        server.answer = OK
        assert (await get(pool)).status == 200
    assert [number for number, _ in server.seen] == [1, 2]


async def test_bytes_nobody_asked_for_drop_an_idle_connection() -> None:
    dropped = anyio.Event()
    connections = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        buf = bytearray()
        if connections == 1:
            await read_request(stream, buf)
            await stream.send(OK)
            await stream.send(b"HTTP/1.1 200 OK\r\n")  # after the answer: the start of another
            await wait_for_eof(stream)
            dropped.set()
            return
        while await read_request(stream, buf) is not None:
            await stream.send(OK)

    async with pool_for(handler) as pool:
        with anyio.fail_after(5):
            assert (await get(pool)).body == b"{}"
            await dropped.wait()
            assert (await get(pool)).body == b"{}"
    assert connections == 2


async def test_the_limit_bounds_open_connections() -> None:
    release = anyio.Event()
    two_waiting = anyio.Event()
    in_flight = 0
    most = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal in_flight, most
        buf = bytearray()
        while await read_request(stream, buf) is not None:
            in_flight += 1
            most = max(most, in_flight)
            if in_flight == 2:
                two_waiting.set()
            await release.wait()
            in_flight -= 1
            await stream.send(OK)

    async with pool_for(handler, limit=2) as pool:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(get, pool)
                await two_waiting.wait()
                release.set()
    assert most == 2


async def test_a_closed_pool_refuses_requests() -> None:
    pool = http_pool.Http1Pool("http://127.0.0.1:1")
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        await get(pool)


def test_origins_it_cannot_serve_are_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        http_pool.Http1Pool("unix:///var/run/x")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b'{"a":1}',
        b"HTTP/1.0 200 OK\r\n\r\n" + b'{"a":1}',
    ],
)
async def test_a_body_that_ends_with_the_connection(answer: bytes) -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream, bytearray())
        await stream.send(answer)  # and the close says where the body ends

    async with pool_for(handler) as pool:
        with anyio.fail_after(5):
            response = await get(pool)
    assert (response.status, response.body) == (200, b'{"a":1}')


async def test_interim_answers_are_skipped() -> None:
    server = AnsweringServer(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
    async with pool_for(server) as pool:
        with anyio.fail_after(5):
            first, second = await get(pool), await get(pool)
    assert [(r.status, r.body, "link" in r.headers) for r in (first, second)] == [(200, b"{}", False)] * 2
    assert [number for number, _ in server.seen] == [1, 1]


@pytest.mark.parametrize(("method", "resent"), [("PUT", True), ("DELETE", True), ("POST", False)])
async def test_a_kept_alive_connection_closed_under_a_request(method: str, resent: bool) -> None:
    seen: list[tuple[int, str]] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        number = len({n for n, _ in seen}) + 1
        buf = bytearray()
        while (request := await read_request(stream, buf)) is not None:
            seen.append((number, request[0]))
            if len(seen) == 2:
                return  # the second request, on the kept-alive connection: hang up unanswered
            await stream.send(OK)

    async with pool_for(handler) as pool:
        with anyio.fail_after(5):
            await get(pool)
            if resent:
                assert (await pool.request(method, "/x", [], b"{}", 5)).status == 200
            else:
                with pytest.raises(http_pool.ServerDisconnected):
                    await pool.request(method, "/x", [], b"{}", 5)
    expected = [(1, "GET"), (1, method)] + ([(2, method)] if resent else [])
    assert seen == expected


async def test_time_spent_waiting_for_a_connection_counts_and_a_late_request_is_not_sent() -> None:
    release = anyio.Event()
    holding = anyio.Event()
    seen: list[str] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        buf = bytearray()
        while (request := await read_request(stream, buf)) is not None:
            seen.append(request[0])
            holding.set()
            await release.wait()
            await stream.send(OK)

    async with pool_for(handler, limit=1) as pool:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(get, pool)  # holds the one connection until released
                await holding.wait()
                with pytest.raises(TimeoutError):
                    await pool.request("POST", "/create", [], b"{}", 0.2)
                release.set()
    assert seen == ["GET"]


async def test_headers_with_line_breaks_are_refused() -> None:
    pool = http_pool.Http1Pool("http://127.0.0.1:1")
    try:
        for value in ("Bearer a\r\nX-Injected: 1", "a\nb", "a\0b"):
            with pytest.raises(ValueError, match="CR, LF or NUL"):
                await pool.request("GET", "/", [("Authorization", value)], None, 1)
    finally:
        pool.close()


def test_a_lone_percent_is_escaped_and_escapes_are_kept() -> None:
    assert http_pool.request_target("/x/100%", []) == "/x/100%25"
    assert http_pool.request_target("/x/a%2Fb/é", [("q", "a b")]) == "/x/a%2Fb/%C3%A9?q=a%20b"


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/apis/kpack.io/v1alpha2/namespaces/cf-space-1/builds/app-1.build_2~x", None),  # taken as it is
        ("/api/v1/namespaces/ns/pods/a b", "/api/v1/namespaces/ns/pods/a%20b"),
        ("/x/a:b@c", None),  # sub-delims are quoted by no one
        ("/x/a?b#c", "/x/a%3Fb%23c"),
        ("/x/\u00e9", "/x/%C3%A9"),
    ],
)
def test_a_path_is_encoded_only_where_it_must_be(path: str, target: str | None) -> None:
    assert http_pool.request_target(path, []) == (target or path)
    assert http_pool.request_target(path, [("watch", "true"), ("labelSelector", "a=b")]) == (
        f"{target or path}?watch=true&labelSelector=a%3Db"
    )


@pytest.mark.parametrize(
    ("answer", "declared"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11, 11),  # said up front
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nxxxxxx\r\n5\r\nxxxxx\r\n0\r\n\r\n",
            None,
        ),
    ],
    ids=["content-length", "chunked"],
)
async def test_a_body_past_max_body_is_refused_and_its_connection_dropped(
    answer: bytes, declared: int | None
) -> None:
    server = AnsweringServer(answer)
    async with pool_for(server) as pool:
        with pytest.raises(http_pool.BodyTooLarge) as info, anyio.fail_after(5):
            await pool.request("GET", "/big", [], None, 5, max_body=10)
        assert (info.value.status, info.value.limit, info.value.declared) == (200, 10, declared)
        # At the limit is fine, and the refused connection was not reused.
        assert (await pool.request("GET", "/big", [], None, 5, max_body=11)).body == b"x" * 11
        with anyio.fail_after(5):
            await server.closed.wait()
    assert [number for number, _ in server.seen] == [1, 2]
