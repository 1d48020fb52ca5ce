"""How a request reaches a registry, as go-containerregistry's ``pkg/v1/remote/transport`` does it: which
scheme, which ``Authorization``, how long, and what a failure is called.

Operations (``client``, ``deletion``, ``push``) only say which path to ask for with which scope, and what
answer they want; everything a registry may do to a request on the way lives here, so that each rule is
written once and holds for every operation:

* a registry that ``Registry.scheme()`` calls ``http`` is tried over HTTPS first and only then over plain
  HTTP (a ``/v2/`` ping; the answer is remembered for the client's life, forgotten after a connection
  failure); other registries are HTTPS only;
* authentication follows the ``WWW-Authenticate`` challenge of a 401: ``Basic`` resends with the
  keychain's username and password; ``Bearer`` fetches a token from the realm (GET with ``service`` and
  ``scope``, Basic credentials when there are any, anonymous otherwise; ``token`` or ``access_token``)
  and resends. Unlike go-containerregistry, which pings before every operation, the challenge and the
  tokens (per registry, scope and credentials, until ``expires_in``, default 60 s) are remembered in the
  ``RegistryCache``, so a warm client sends each request once;
* Korifi's go-containerregistry calls had no context and so no timeout: one hung registry stalled every
  reconcile (korifi.md 6.21). Here an operation runs under one deadline covering all of its requests,
  token exchanges included, and every failure becomes one typed, one-line error
  (``service.registry.errors``) naming the registry and the request in flight, never a secret;
* GETs go through the lean HTTP/1.1 pool (``service.http.pool``, one per origin), everything else
  (tokens, HEADs, writes, a GET's redirect) through aiohttp: a droplet's manifest read costs the service
  about a third of the CPU that way. Both give the same ``Reply`` and the same errors.
"""

from __future__ import annotations

import errno
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from service.http import TLS_CLOSE_GRACE, LazySession, request_body
from service.http import pool as http_pool
from service.registry.auth import Credentials
from service.registry.cache import CachedToken, RegistryCache
from service.registry.errors import (
    NotFound,
    RegistryError,
    RegistryTimeout,
    Unauthorized,
    UnexpectedResponse,
    Unreachable,
    one_line,
)
from service.registry.metrics import RegistryMetrics, operation_of, outcome_of_status
from service.registry.reference import Registry

USER_AGENT = "kpack-image-builder (python aiohttp)"
MAX_SMALL = 64 * 1024  # error bodies, token responses, pings
DEFAULT_TOKEN_SECONDS = 60.0  # the token spec's default when a response has no expires_in
NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_POOLS = 64  # origins with kept-alive GET connections (registries, probes of both schemes)
_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}


# ------------------------------------------------------------------------------- WWW-Authenticate


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer"...
    params: Mapping[str, str]


_SEPARATORS = frozenset(' \t"(),/:;<=>?@[]\\{}')


def _token_end(s: str, i: int) -> int:
    while i < len(s) and 32 < ord(s[i]) < 127 and s[i] not in _SEPARATORS:
        i += 1
    return i


def _skip_space(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def parse_challenge(header: str) -> Challenge | None:
    """One ``WWW-Authenticate`` value, parsed as go-containerregistry's ``authchallenge`` does: a scheme
    token, then ``key=value`` or ``key="quoted"`` pairs separated by commas (keys lower-cased)."""
    end = _token_end(header, 0)
    if end == 0:
        return None
    scheme, i = header[:end].lower(), _skip_space(header, end)
    params: dict[str, str] = {}
    s, i = "," + header[i:], 0
    while i < len(s) and s[i] == ",":
        i = _skip_space(s, i + 1)
        end = _token_end(s, i)
        key = s[i:end].lower()
        if not key or end >= len(s) or s[end] != "=":
            break
        i = end + 1
        if i < len(s) and s[i] == '"':
            value, escaped, i = [], False, i + 1
            while i < len(s):
                c = s[i]
                i += 1
                if escaped:
                    value.append(c)
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == '"':
                    break
                else:
                    value.append(c)
            else:
                break  # unterminated quote
            text = "".join(value)
        else:
            end = _token_end(s, i)
            text, i = s[i:end], end
        if not text:
            break
        params[key] = text
        i = _skip_space(s, i)
    return Challenge(scheme, params)


def pick_challenge(headers: Iterable[str]) -> Challenge | None:
    """The first Basic or Bearer challenge, else the first of any kind (go-containerregistry's choice)."""
    parsed = [c for c in (parse_challenge(h) for h in headers) if c is not None]
    for c in parsed:
        if c.scheme in ("basic", "bearer"):
            return c
    return parsed[0] if parsed else None


# ------------------------------------------------------------------------------ requests, replies


@dataclass(slots=True)
class Reply:
    method: str
    url: URL
    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass(slots=True)
class Operation:
    """One public operation: where it goes, as whom, and which request is in flight (for messages)."""

    registry: Registry
    creds: Credentials
    target: str  # the image or repository, fully qualified
    timeout: float
    current: str = ""

    @property
    def doing(self) -> str:
        """`` (GET /v2/…)``: the request in flight, for the end of a message; empty before the first."""
        return f" ({self.current})" if self.current else ""


def _error_fields(body: bytes) -> tuple[str, str]:
    """The first (code, message) of a distribution error body, or ("", "")."""
    try:
        doc = orjson.loads(body)
        first = doc["errors"][0]
        code, message = first.get("code", ""), first.get("message", "")
        return (code if isinstance(code, str) else ""), (message if isinstance(message, str) else "")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return "", ""


def _describe_status(reply: Reply) -> str:
    code, message = _error_fields(reply.body)
    head = f"{reply.status} {reply.reason}".strip()
    if code:
        return f"{head}: {code}: {one_line(message)}" if message else f"{head}: {code}"
    text = one_line(reply.body.decode("utf-8", "replace"), 120) if reply.body else ""
    return f"{head}: {text}" if text else head


def _headers(headers: Mapping[str, str] | None, authorization: str | None) -> dict[str, str]:
    out = dict(headers or {})
    if authorization:
        out["Authorization"] = authorization
    return out


class Transport(LazySession):
    """The connections to every registry (an aiohttp session, and a lean pool per origin for GETs), and
    what the client learnt about each (``cache``).
    ``connect_timeout`` bounds each TCP+TLS connect and the HTTPS probe of a registry that may be plain
    HTTP; ``insecure_registries`` lists the ``host[:port]`` names that may be reached over plain HTTP."""

    def __init__(
        self,
        *,
        cache: RegistryCache | None = None,
        insecure_registries: Collection[str] = (),
        connect_timeout: float = 10.0,
        max_connections: int = 32,
        max_connections_per_host: int = 8,
        ssl_context: Any = None,
        user_agent: str = USER_AGENT,
        on_request: Callable[[str, str], object] | None = None,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self.cache = cache if cache is not None else RegistryCache()
        self.metrics = metrics
        self.insecure_registries = frozenset(insecure_registries)
        self.connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._max_connections_per_host = max_connections_per_host
        self._ssl = ssl_context if ssl_context is not None else True
        self._user_agent = user_agent
        self._on_request = on_request
        self._pools: OrderedDict[str, http_pool.Http1Pool] = OrderedDict()
        self._pool_tls: ssl.SSLContext | None = None

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=self._max_connections_per_host,
                ssl=self._ssl,
                ttl_dns_cache=60,
            ),
            headers={"User-Agent": self._user_agent},
            # Credentials come from pull secrets only: HTTP(S)_PROXY and .netrc must not leak in.
            trust_env=False,
        )

    def _pool(self, url: URL) -> http_pool.Http1Pool:
        """The lean pool of ``url``'s origin, made on first use."""
        origin = f"{url.scheme}://{url.host_port_subcomponent}"
        pool = self._pools.get(origin)
        if pool is not None:
            self._pools.move_to_end(origin)
        else:
            self._get_session()  # refuses, as the aiohttp path does, once the transport is closed
            pool = http_pool.Http1Pool(
                origin,
                ssl_context=self._tls() if url.scheme == "https" else None,
                limit=self._max_connections_per_host,
                connect_timeout=self.connect_timeout,
            )
            self._pools[origin] = pool
            if len(self._pools) > MAX_POOLS:
                # The least recently used origin's idle connections go; its requests in flight finish.
                _, oldest = self._pools.popitem(last=False)
                oldest.close()
        return pool

    def _tls(self) -> ssl.SSLContext:
        if isinstance(self._ssl, ssl.SSLContext):
            return self._ssl
        if self._pool_tls is None:
            self._pool_tls = ssl.create_default_context()
            if self._ssl is False:  # verification off, as aiohttp's ssl=False
                self._pool_tls.check_hostname = False
                self._pool_tls.verify_mode = ssl.CERT_NONE
        return self._pool_tls

    async def close(self) -> None:
        pools, self._pools = self._pools, OrderedDict()
        for pool in pools.values():
            pool.close()  # every pool's connections start closing now, so that the waits below overlap
        for pool in pools.values():
            await pool.aclose(TLS_CLOSE_GRACE)
        await super().close()

    @asynccontextmanager
    async def operation(
        self, registry: Registry, creds: Credentials, target: str, deadline: float
    ) -> AsyncIterator[Operation]:
        """The block of one public operation, under its deadline: running out of time is a
        ``RegistryTimeout`` that names the request in flight."""
        op = Operation(registry, creds, target, deadline)
        try:
            with anyio.fail_after(deadline):
                yield op
        except TimeoutError as exc:
            if isinstance(exc, RegistryError):
                raise
            raise RegistryTimeout(
                f"registry {op.registry} did not answer within {deadline:g}s{op.doing}",
                registry=op.registry.name,
            ) from None

    # ---------------------------------------------------------------------------------- errors
    def failure(self, op: Operation, reply: Reply, what: str, expected: str = "") -> RegistryError:
        """The typed error for an unwanted answer about ``what``."""
        registry = op.registry.name
        code, _ = _error_fields(reply.body)
        status = _describe_status(reply)
        if reply.status == 404 or code in NOT_FOUND_CODES:
            return NotFound(f"{what} not found ({status})", registry=registry, code=code)
        if reply.status in (401, 403):
            return self._unauthorized(op, reply)
        want = f", expected {expected}" if expected else ""
        return UnexpectedResponse(
            f"registry {op.registry} answered {reply.method} {reply.url.path} with {status}{want}",
            registry=registry,
            status=reply.status,
            code=code,
        )

    def _unauthorized(self, op: Operation, reply: Reply, token_server: str = "") -> Unauthorized:
        code, _ = _error_fields(reply.body)
        status = _describe_status(reply)
        registry = op.registry.name
        by = (
            f"the token server {token_server} of registry {registry}"
            if token_server
            else f"registry {registry}"
        )
        if reply.status == 403:
            message = f"{by} denied {op.creds.describe()} access to {op.target} ({status})"
        elif op.creds.anonymous:
            message = f"{by} requires authentication and no credentials match {op.target} ({status})"
        else:
            message = f"{by} rejected the credentials of {op.creds.describe()} for {op.target} ({status})"
        return Unauthorized(message, registry=registry, status=reply.status, code=code)

    def _unreachable(self, op: Operation, exc: BaseException, host: str = "") -> Unreachable:
        where = f"registry {op.registry}" if not host else f"{host} (token server of registry {op.registry})"
        # Each failure as aiohttp raises it, then as the lean pool does (the plain OSError beneath).
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            why = f"DNS lookup of {exc.host} failed"
        elif isinstance(exc, socket.gaierror):  # only the lean pool's GETs to the registry itself raise it
            why = f"DNS lookup of {URL('//' + op.registry.name).host} failed"
        elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
            why = f"its TLS certificate is not trusted ({exc.certificate_error})"
        elif isinstance(exc, ssl.SSLCertVerificationError):
            why = f"its TLS certificate is not trusted ({exc})"
        elif isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
            why = f"TLS handshake failed ({getattr(exc, 'strerror', None) or exc})"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            why = _ERRNO_TEXT.get(exc.os_error.errno or 0) or exc.os_error.strerror or str(exc.os_error)
        elif isinstance(exc, aiohttp.ServerDisconnectedError | http_pool.ServerDisconnected):
            why = "the server closed the connection"
        elif isinstance(exc, OSError) and exc.errno in _ERRNO_TEXT:
            why = _ERRNO_TEXT[exc.errno]
        else:
            why = str(exc) or type(exc).__name__
        return Unreachable(f"{where} is unreachable: {why}{op.doing}", registry=op.registry.name)

    # ------------------------------------------------------------------------------------ HTTP
    async def _http(
        self,
        op: Operation,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        data: bytes | None = None,
        limit: int = MAX_SMALL,
        params: Mapping[str, str] | None = None,
        token_server: str = "",
    ) -> Reply:
        """One HTTP exchange, body read (up to ``limit``; error bodies are truncated, not refused), counted
        in ``metrics`` (when given) by operation and outcome. A GET to the registry itself goes through the
        lean pool, anything else through aiohttp."""
        op.current = f"{method} {url.path}"
        if self._on_request is not None:
            self._on_request(method, url.path)
        if method == "GET" and params is None and not token_server:
            exchange = self._lean_exchange(op, url, headers, limit)
        else:
            exchange = self._exchange(op, method, url, headers, data, limit, params, token_server)
        if self.metrics is None:
            return await exchange
        started = time.monotonic()
        # Cancelled from outside: the operation's deadline (``operation``) is what cancels in practice.
        outcome = "timeout"
        try:
            reply = await exchange
            outcome = outcome_of_status(reply.status)
            return reply
        except TimeoutError:
            raise
        except Unreachable:
            outcome = "unreachable"
            raise
        except Exception:
            outcome = "invalid_response"
            raise
        finally:
            self.metrics.observe(
                operation_of(method, url, token=bool(token_server)), outcome, time.monotonic() - started
            )

    async def _lean_exchange(self, op: Operation, url: URL, headers: Mapping[str, str], limit: int) -> Reply:
        """A GET through the lean HTTP/1.1 pool (service/http/pool.py): a droplet's manifest and config
        reads cost the service about a third as much CPU as through aiohttp. Redirects (blob storage
        elsewhere) are followed through aiohttp, which drops ``Authorization`` on the way to another
        origin, as it does for its own redirects."""
        sent = [("User-Agent", self._user_agent), *headers.items()]
        try:
            answer = await self._pool(url).request(
                "GET", url.raw_path_qs, sent, None, op.timeout, max_body=max(limit, MAX_SMALL)
            )
        except http_pool.BodyTooLarge as exc:
            if exc.status >= 400:  # an error body is only for the message: none is better than a refusal
                return Reply("GET", url, exc.status, exc.reason, exc.headers, b"")
            # The messages of the aiohttp path (_read), word for word.
            if exc.declared is not None:
                message = f"registry {op.registry} sent {exc.declared} bytes for {op.current} (limit {limit})"
            else:
                message = f"registry {op.registry} sent more than {limit} bytes for {op.current}"
            raise UnexpectedResponse(
                message,
                registry=op.registry.name,
                status=exc.status,
            ) from None
        except http_pool.BadResponse as exc:
            raise UnexpectedResponse(
                f"registry {op.registry} sent an invalid HTTP answer to {op.current}: {exc}",
                registry=op.registry.name,
            ) from None
        except http_pool.ConnectTimeout:
            raise self._connect_timeout(op) from None
        except TimeoutError:
            raise  # no slot in time, or the whole operation's time ran out: the operation's timeout
        except OSError as exc:
            self.cache.bases.pop(op.registry.name)
            raise self._unreachable(op, exc) from None
        location = answer.headers.get("Location")
        if answer.status in REDIRECTS and location:
            try:
                target = url.join(URL(location))  # requoted, as aiohttp does its own redirects
                other_origin = target.origin() != url.origin()
            except ValueError:
                raise UnexpectedResponse(
                    f"registry {op.registry} sent an invalid HTTP answer to {op.current}: "
                    f"a redirect to {one_line(location, 120)!r}",
                    registry=op.registry.name,
                ) from None
            if other_origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            return await self._exchange(op, "GET", target, headers, None, limit, None, "")
        body = answer.body
        if answer.status >= 400:
            body = body[:MAX_SMALL]
        elif len(body) > limit:
            raise UnexpectedResponse(
                f"registry {op.registry} sent more than {limit} bytes for {op.current}",
                registry=op.registry.name,
                status=answer.status,
            )
        return Reply("GET", url, answer.status, answer.reason, answer.headers, body)

    async def _exchange(
        self,
        op: Operation,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        data: bytes | None,
        limit: int,
        params: Mapping[str, str] | None,
        token_server: str,
    ) -> Reply:
        """One exchange through aiohttp (which follows redirects itself)."""
        timeout = aiohttp.ClientTimeout(total=op.timeout, sock_connect=self.connect_timeout)
        if url.scheme == "https":
            self._close_grace = TLS_CLOSE_GRACE  # the session's TLS connections, as KubeClient's
        try:
            async with self._get_session().request(
                method, url, headers=headers, data=request_body(data), params=params, timeout=timeout
            ) as resp:
                if resp.url.scheme == "https":  # redirected there
                    self._close_grace = TLS_CLOSE_GRACE
                body = b"" if method == "HEAD" else await self._read(op, resp, limit)
                return Reply(method, resp.url, resp.status, resp.reason or "", resp.headers, body)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise self._connect_timeout(op) from None
            if isinstance(exc, TimeoutError):
                raise
            if not token_server:
                self.cache.bases.pop(op.registry.name)
            raise self._unreachable(op, exc, token_server) from None
        except aiohttp.ClientError as exc:  # a malformed answer, too many redirects...
            where = token_server or f"registry {op.registry}"
            raise UnexpectedResponse(
                f"{where} sent an invalid HTTP answer to {op.current}: {exc}", registry=op.registry.name
            ) from None

    def _connect_timeout(self, op: Operation) -> RegistryTimeout:
        """A connection that did not come up within ``connect_timeout``: named as such, since that limit,
        not the operation's, is the one to look at (a firewall that drops packets, a registry overloaded)."""
        return RegistryTimeout(
            f"registry {op.registry} did not take a connection within {self.connect_timeout:g}s{op.doing}",
            registry=op.registry.name,
        )

    async def _read(self, op: Operation, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        if resp.status >= 400:  # an error body: only for the message, so cut rather than refuse
            kept = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                kept += chunk[: MAX_SMALL - len(kept)]
                if len(kept) >= MAX_SMALL:
                    break
            return bytes(kept)
        if resp.content_length is not None and resp.content_length > limit:
            raise UnexpectedResponse(
                f"registry {op.registry} sent {resp.content_length} bytes for {op.current} (limit {limit})",
                registry=op.registry.name,
                status=resp.status,
            )
        body = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise UnexpectedResponse(
                    f"registry {op.registry} sent more than {limit} bytes for {op.current}",
                    registry=op.registry.name,
                    status=resp.status,
                )
        return bytes(body)

    async def base(self, op: Operation) -> str:
        """``scheme://host[:port]`` of the registry; for a possibly-plain-HTTP one, decided by pinging
        ``/v2/`` over HTTPS and then over HTTP, as go-containerregistry's ``transport.Ping`` does."""
        name = op.registry.name
        base = self.cache.bases.get(name)
        if base is not None:
            return base
        if op.registry.scheme(self.insecure_registries) == "https":
            base = f"https://{name}"
            self.cache.bases.put(name, base)
            return base
        failures: list[str] = []
        for scheme in ("https", "http"):
            candidate = f"{scheme}://{name}"
            reply: Reply | None = None
            try:
                if scheme == "https":
                    with anyio.move_on_after(self.connect_timeout):
                        reply = await self._http(op, "GET", URL(candidate + "/v2/"), {})
                    if reply is None:
                        failures.append(f"no answer over https within {self.connect_timeout:g}s")
                        continue
                else:
                    reply = await self._http(op, "GET", URL(candidate + "/v2/"), {})
            except TimeoutError as exc:
                if scheme == "http" or isinstance(exc, RegistryError):
                    raise
                failures.append(f"no answer over https within {self.connect_timeout:g}s")
                continue
            except Unreachable as exc:
                why = exc.message.removeprefix(f"registry {name} is unreachable: ").removesuffix(
                    " (GET /v2/)"
                )
                failures.append(f"{scheme}: {why}")
                continue
            if reply.status not in (200, 401):
                failures.append(f"{scheme}: /v2/ answered {_describe_status(reply)}")
                continue
            if reply.status == 401:
                self._remember_challenge(name, reply)
            self.cache.bases.put(name, candidate)
            return candidate
        raise Unreachable(f"registry {name} is unreachable: {'; '.join(failures)}", registry=name)

    # ------------------------------------------------------------------------ authenticated requests
    async def request(
        self,
        op: Operation,
        method: str,
        path: str | URL,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        limit: int = MAX_SMALL,
    ) -> Reply:
        """A registry request with authentication: sent with what we already know (remembered challenge,
        cached token), and once more after answering a 401's challenge. A second 401 is final. ``path``
        is relative to the registry's base URL, or a whole URL (a Link or Location the registry sent)."""
        url = path if isinstance(path, URL) else URL(await self.base(op) + path, encoded=True)
        sent = await self._preauthorization(op, scope)
        reply = await self._http(op, method, url, _headers(headers, sent), data, limit)
        if reply.status != 401:
            return reply
        challenge = self._remember_challenge(op.registry.name, reply)
        authorization = await self._answer(op, challenge, scope, sent, reply)
        reply = await self._http(op, method, url, _headers(headers, authorization), data, limit)
        if reply.status == 401:
            raise self._unauthorized(op, reply)
        return reply

    def _remember_challenge(self, registry: str, reply: Reply) -> Challenge | None:
        challenge = pick_challenge(reply.headers.getall("WWW-Authenticate", []))
        if challenge is not None and challenge.scheme in ("basic", "bearer"):
            # Keep realm and service; scope and error belong to the one request that was refused.
            params = {k: v for k, v in challenge.params.items() if k in ("realm", "service")}
            self.cache.challenges.put(registry, Challenge(challenge.scheme, params))
        return challenge

    async def _preauthorization(self, op: Operation, scope: str) -> str | None:
        creds = op.creds
        if creds.registry_token:
            return f"Bearer {creds.registry_token}"
        challenge = self.cache.challenges.get(op.registry.name)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return creds.basic_authorization()
        token = self._cached_token(op, scope)
        if token is None:
            token = await self._fetch_token(op, challenge, scope, scope)
        return f"Bearer {token}"

    async def _answer(
        self, op: Operation, challenge: Challenge | None, scope: str, sent: str | None, reply: Reply
    ) -> str:
        """The ``Authorization`` to resend with after a 401, or the final ``Unauthorized``."""
        creds = op.creds
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise self._unauthorized(op, reply)
        if creds.registry_token:
            authorization: str | None = f"Bearer {creds.registry_token}"
        elif challenge.scheme == "basic":
            authorization = creds.basic_authorization()
        else:
            self.cache.tokens.pop((op.registry.name, scope, creds.fingerprint()))
            wanted = challenge.params.get("scope") or scope
            authorization = f"Bearer {await self._fetch_token(op, challenge, wanted, scope)}"
        if authorization is None or authorization == sent:
            raise self._unauthorized(op, reply)
        return authorization

    def _cached_token(self, op: Operation, scope: str) -> str | None:
        token = self.cache.tokens.get((op.registry.name, scope, op.creds.fingerprint()))
        if token is None or token.expires <= time.monotonic():
            return None
        return token.value

    async def _fetch_token(self, op: Operation, challenge: Challenge, scope: str, cache_scope: str) -> str:
        """Exchange the keychain's credentials (or none) for a bearer token at the challenge's realm."""
        registry = op.registry.name
        realm = challenge.params.get("realm")
        if not realm:
            raise UnexpectedResponse(
                f"registry {registry} sent a Bearer challenge without a realm", registry=registry
            )
        url = URL(realm)
        if url.scheme not in ("http", "https") or not url.host:
            raise UnexpectedResponse(
                f"registry {registry} sent an invalid token realm {realm!r}", registry=registry
            )
        registry_scheme = (await self.base(op)).split(":", 1)[0]
        if url.scheme == "http" and registry_scheme == "https":
            # Credentials must not travel in clear text to a realm of a registry reached over TLS.
            raise UnexpectedResponse(
                f"registry {registry} sent a plain-HTTP token realm {realm!r}", registry=registry
            )
        params = {k: v for k, v in (("service", challenge.params.get("service", "")), ("scope", scope)) if v}
        headers: dict[str, str] = {}
        basic = op.creds.basic_authorization()
        if basic:
            headers["Authorization"] = basic
        server = str(url.origin()).split("://", 1)[1]
        reply = await self._http(op, "GET", url, headers, params=params, token_server=server)
        if reply.status in (401, 403):
            raise self._unauthorized(op, reply, token_server=server)
        if reply.status != 200:
            raise UnexpectedResponse(
                f"the token server {server} of registry {registry} answered {_describe_status(reply)}",
                registry=registry,
                status=reply.status,
            )
        try:
            doc = orjson.loads(reply.body)
            token = doc.get("token") or doc.get("access_token")
            expires_in = doc.get("expires_in")
        except (orjson.JSONDecodeError, AttributeError):
            token = expires_in = None
        if not isinstance(token, str) or not token:
            raise UnexpectedResponse(
                f"the token server {server} of registry {registry} sent no token", registry=registry
            )
        seconds = (
            float(expires_in)
            if isinstance(expires_in, int | float) and expires_in > 0
            else DEFAULT_TOKEN_SECONDS
        )
        # Renew a little early so that a token does not expire between our check and the registry's.
        expires = time.monotonic() + seconds - min(30.0, seconds / 10)
        self.cache.tokens.put((registry, cache_scope, op.creds.fingerprint()), CachedToken(token, expires))
        return token


__all__ = [
    "MAX_SMALL",
    "USER_AGENT",
    "Challenge",
    "Operation",
    "Reply",
    "Transport",
    "parse_challenge",
    "pick_challenge",
]
