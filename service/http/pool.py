"""A lean HTTP/1.1 client for one server's unary requests: a keep-alive connection pool on asyncio
protocols, responses parsed by httptools (llhttp).

Why hand-written: the API client spends most of its CPU in aiohttp's request machinery (sessions,
request/response objects, stream readers, tracing, cookie jars), none of which a JSON API over
keep-alive connections needs. Against the API emulator on the 2-core CI machine a GET costs about 0.20 ms
of client CPU through an aiohttp session and 0.10 ms here (benchmarks/client.py). What is
solved elsewhere stays elsewhere: llhttp parses (Content-Length, chunked, keep-alive), asyncio does TLS,
and anything this does not cover (streams, proxies, HEAD) stays on aiohttp.

Semantics follow Go's transport, which kube-apiserver clients expect: a connection is reused only after a
whole response was read and the server allowed keep-alive; a connection idle longer than ``keepalive`` is
not reused (servers close idle ones, and a write racing that close is lost); a request that is cancelled
or times out closes its connection, which can never be reused half-read. Errors are ``OSError``s
(``ConnectionError`` when the server hung up or the connection failed) and ``TimeoutError``. The one resend
made here is of an idempotent request that met a kept-alive connection the server had just closed, before
any answer; any other resend is the caller's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlencode

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# RFC 9110's idempotent methods: resent once when a kept-alive connection turns out closed (below).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
# A '%' not followed by two hex digits is a literal one, to be escaped (yarl's requoting does the same).
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# RFC 3986 pchar sub-delims, ':' and '@', and '%' so that a path already percent-encoded passes as is.
_PATH_SAFE = "/!$&'()*+,;=:@%"
# A path of only these (every API path the service builds: names are DNS labels) is its own encoding:
# quote() costs some 4 us a request and would return it unchanged.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._~-]*")


class ServerDisconnected(ConnectionError):
    """The server closed the connection before the whole response arrived."""


class ConnectTimeout(TimeoutError):
    """No connection within the pool's ``connect_timeout`` (before the request's own time ran out)."""


class BadResponse(ConnectionError):
    """The server's answer is not HTTP/1.1 this client can read; the connection is dropped."""


class BodyTooLarge(Exception):
    """The answer's body is longer than the request's ``max_body``; the connection is dropped unread.
    ``declared`` is its Content-Length when it said so up front (else None: it grew past the limit);
    ``headers`` are the answer's (a challenge or a Retry-After still counts when the body does not)."""

    def __init__(
        self, status: int, limit: int, declared: int | None, headers: CIMultiDictProxy[str], reason: str
    ) -> None:
        size = f"{declared} bytes" if declared is not None else f"more than {limit} bytes"
        super().__init__(f"a {status} answer of {size} (limit {limit})")
        self.status, self.limit, self.declared = status, limit, declared
        self.headers, self.reason = headers, reason


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    reason: str = ""  # the server's reason phrase


def request_target(path: str, query: Iterable[tuple[str, str]]) -> str:
    """The request line's target: the path percent-encoded where it must be, and the query."""
    target = path if _PLAIN_PATH.fullmatch(path) else quote(_LONE_PERCENT.sub("%25", path), safe=_PATH_SAFE)
    pairs = list(query)
    encoded = urlencode(pairs, quote_via=quote) if pairs else ""
    return f"{target}?{encoded}" if encoded else target


class _Connection(asyncio.Protocol):
    """One connection; it carries one request at a time."""

    def __init__(self, on_lost: Callable[[_Connection], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._on_lost = on_lost
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reusable = False
        self.received = False  # a byte of the answer to the current request arrived
        self._in_message = False
        self._close_delimited = False  # the answer's body ends when the server closes the connection
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._reason = ""
        self._encoding = ""  # the answer's Content-Encoding when not identity (never asked for)
        self.max_body: int | None = None  # of the current request's answer
        self._size = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but not necessarily a subclass of asyncio.Transport (uvloop's is not).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"unreadable HTTP response: {exc}"))
            self.close()
            return
        if self.waiter is None and self._in_message:
            # More came after the answer, in the same read: as above, the framing is lost.
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport: a half-closed HTTP/1.1 connection is finished

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._on_lost is not None:
            self._on_lost(self)
        if exc is None and self._in_message and self._close_delimited:
            # httptools cannot be told of the end of the stream: for a body without Content-Length or
            # chunks (HTTP/1.0, a proxy's ``Connection: close`` answer) the close is the end of the answer.
            self._complete()
            return
        self._fail(ServerDisconnected(f"server closed the connection{f': {exc}' if exc else ''}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._in_message = True

    def on_status(self, reason: bytes) -> None:
        self._reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        length = encoding = ""
        framed = False
        for name, value in self._headers:  # one pass: this runs for every answer
            name = name.lower()
            if name == "content-length":
                length, framed = value.strip(), True
            elif name == "transfer-encoding":
                framed = True
            elif name == "content-encoding":
                encoding = value.strip()
        self._close_delimited = not framed and status >= 200 and status not in (204, 304)
        self._encoding = "" if encoding.lower() in ("", "identity") else encoding
        if self.max_body is not None and status >= 200 and length.isdigit() and int(length) > self.max_body:
            self._too_large(status, int(length))

    def on_body(self, body: bytes) -> None:
        if self.waiter is None:
            return  # refused as too large: the rest is not kept
        self._size += len(body)
        if self.max_body is not None and self._size > self.max_body:
            self._too_large(self.parser.get_status_code(), None)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the final one follows on this connection.
            self._in_message = False
            self._headers, self._body = [], []
            return
        self.reusable = self.parser.should_keep_alive()
        self._complete()

    def _too_large(self, status: int, declared: int | None) -> None:
        assert self.max_body is not None
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        self._fail(BodyTooLarge(status, self.max_body, declared, headers, self._reason))
        self._body = []
        self.close()  # the rest of the answer is still coming: the connection is useless

    def _complete(self) -> None:
        self._in_message = False
        waiter, self.waiter = self.waiter, None
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        headers, self._headers, self._body = self._headers, [], []
        status, encoding, self._encoding = self.parser.get_status_code(), self._encoding, ""
        if encoding and body:
            # Compressed though no Accept-Encoding asked for it (a proxy that compresses anyway), so never
            # decoded here. A success's body read as it is would surface later as a bad digest or bad JSON,
            # far from its cause: refused by name. An error's body only words its message: it is dropped,
            # and its status and headers (a challenge, a Retry-After) still count.
            if 200 <= status < 300:
                exc = BadResponse(
                    f"a {status} answer in Content-Encoding {encoding}, which was not asked for"
                )
                if waiter is not None and not waiter.done():
                    waiter.set_exception(exc)
                return
            body = b""
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(status, CIMultiDictProxy(CIMultiDict(headers)), body, self._reason))

    # ours
    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, data: bytes, waiter: asyncio.Future[Response], max_body: int | None) -> None:
        assert self.transport is not None
        self.waiter = waiter
        self.reusable = False
        self.received = False
        self.max_body, self._size = max_body, 0
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[Response], time_limit: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no whole answer within {time_limit:g} s"))


class Http1Pool:
    """Keep-alive connections to one ``http(s)://host[:port]`` origin; at most ``limit`` at once."""

    def __init__(
        self,
        origin: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        limit: int = 100,
        keepalive: float = 15.0,
        connect_timeout: float = 30.0,
    ) -> None:
        url = URL(origin)  # yarl: IDNA hosts, IPv6 brackets, default ports
        if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        tls = url.scheme == "https"
        self._host = url.raw_host
        self._port = url.port
        self._ssl = (ssl_context or ssl.create_default_context()) if tls else None
        self._server_hostname = (server_hostname or None) if tls else None
        self._host_header = f"Host: {url.host_port_subcomponent}\r\n".encode("ascii")
        self._idle: list[_Connection] = []
        # Every connection not yet lost (idle or carrying a request), so that ``aclose`` can wait for them.
        self._open: set[_Connection] = set()
        self._all_lost: asyncio.Event | None = None
        self._slots = asyncio.Semaphore(limit)
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None

    def _idle_connection(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the likeliest to be alive
            closing = conn.transport is None or conn.transport.is_closing()  # set before connection_lost
            if not conn.closed and not closing and now - conn.idle_since < self._keepalive:
                return conn
            conn.close()
        return None

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        limit = loop.time() + self._connect_timeout
        try:
            async with asyncio.timeout_at(min(deadline, limit)):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._lost),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
        except TimeoutError:
            if limit < deadline:  # the connect's own limit ran out, not the request's time
                raise ConnectTimeout(f"no connection within {self._connect_timeout:g} s") from None
            raise
        if not conn.closed:
            self._open.add(conn)
        return conn

    def _lost(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if not self._open and self._all_lost is not None:
            self._all_lost.set()

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        time_limit: float,
        *,
        max_body: int | None = None,
    ) -> Response:
        """Send one request and read its whole response within ``time_limit`` seconds: waiting for a free
        connection and connecting included; a request whose time ran out before it was sent is not sent.
        An answer whose body is longer than ``max_body`` raises ``BodyTooLarge`` (for a server that is
        not trusted to keep its answers small)."""
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        head = [f"{method} {target} HTTP/1.1\r\n".encode("ascii")]
        head.append(self._host_header)
        for name, value in headers:
            line = f"{name}: {value}\r\n"
            if "\n" in line[:-1] or "\r" in line[:-2] or "\0" in line:
                raise ValueError(f"a header may not contain CR, LF or NUL: {name!r}")
            head.append(line.encode("latin-1"))
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(b"Content-Length: %d\r\n" % len(body or b""))
        head.append(b"\r\n")
        if body:
            head.append(body)
        data = b"".join(head)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + time_limit
        if self._slots.locked():
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            for attempt in (1, 2):
                conn = self._idle_connection()
                reused = conn is not None
                try:
                    if conn is None:
                        conn = await self._connect(deadline)
                    if loop.time() >= deadline:
                        raise TimeoutError(f"no whole answer within {time_limit:g} s")
                    response = await self._exchange(conn, data, deadline, time_limit, max_body)
                except ServerDisconnected:
                    assert conn is not None
                    conn.close()
                    # The server closed a kept-alive connection as this request went out: nothing of it
                    # was read, so an idempotent request goes once more, on a new connection (as aiohttp
                    # and browsers do; Go resends only reads: KubeClient resends those itself).
                    if attempt == 1 and reused and not conn.received and method in IDEMPOTENT_METHODS:
                        continue
                    raise
                except BaseException:
                    # Cancelled, timed out or broken mid-request: the connection's state is unknown.
                    if conn is not None:
                        conn.close()
                    raise
                if conn.reusable and not conn.closed and not self._closed:
                    conn.idle_since = time.monotonic()
                    self._idle.append(conn)
                    if self._sweep is None:
                        self._sweep = loop.call_later(self._keepalive, self._close_stale)
                else:
                    conn.close()
                return response
            raise AssertionError("unreachable: the second attempt returns or raises")
        finally:
            self._slots.release()

    @staticmethod
    async def _exchange(
        conn: _Connection, data: bytes, deadline: float, time_limit: float, max_body: int | None
    ) -> Response:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        # A timer on the answer's future, not asyncio.timeout: this runs for every API request, and the
        # timer costs a third of what the context manager does.
        timer = loop.call_at(deadline, _expire, waiter, time_limit)
        try:
            conn.send(data, waiter, max_body)
            return await waiter
        finally:
            timer.cancel()

    def _close_stale(self) -> None:
        """Close the connections idle for ``keepalive``: a pool that is no longer asked (a registry used
        once) would otherwise hold its sockets until the next request, half-closed once the server gives
        up on them. One timer per pool, not per request; it runs again while any connection is idle."""
        self._sweep = None
        now = time.monotonic()
        fresh = []
        for conn in self._idle:
            if not conn.closed and now - conn.idle_since < self._keepalive:
                fresh.append(conn)
            else:
                conn.close()
        self._idle = fresh
        if fresh and not self._closed:
            due = min(c.idle_since for c in fresh) + self._keepalive - now
            # At least a tenth of the keepalive later: the timer never spins on a clock's rounding.
            self._sweep = asyncio.get_running_loop().call_later(
                max(due, self._keepalive / 10), self._close_stale
            )

    def close(self) -> None:
        """Close the idle connections now, and each busy one as its request ends."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def aclose(self, grace: float) -> None:
        """``close``, then wait up to ``grace`` seconds until every connection is closed for good. A TLS
        connection's close takes loop turns (its shutdown); a loop that stops first leaks the socket, a
        ResourceWarning at best. Busy connections count too: their requests are ending."""
        self.close()
        if self._open:
            self._all_lost = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._all_lost.wait()
