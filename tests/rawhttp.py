"""A deliberately bad HTTP/1.1 server for transport tests: each test's handler reads requests off the raw
socket and answers (or hangs up, stalls, sends garbage) as it likes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc

Request = tuple[str, str, dict[str, str], bytes]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


async def read_request(stream: anyio.abc.SocketStream, buf: bytearray) -> Request | None:
    """One HTTP/1.1 request from ``stream`` (``buf`` keeps what belongs to the next); None at EOF."""
    try:
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive()
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            rest += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return None
    buf[:] = rest[length:]
    return method, target, headers, rest[:length]


async def wait_for_eof(stream: anyio.abc.SocketStream) -> None:
    try:
        while True:
            await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return


@asynccontextmanager
async def raw_server(handler: Callable[[anyio.abc.SocketStream], Awaitable[None]]) -> AsyncIterator[str]:
    async def guarded(stream: anyio.abc.SocketStream) -> None:
        # The client may hang up first; that is never the server's failure.
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
                await handler(stream)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, guarded)
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


class AnsweringServer:
    """A handler that answers every request with ``answer``; records the requests and the connections
    they came on (numbered from 1); ``closed`` is set when a connection ends."""

    def __init__(self, answer: bytes = OK) -> None:
        self.answer = answer
        self.seen: list[tuple[int, Request]] = []
        self.connections = 0
        self.closed = anyio.Event()

    @property
    def requests(self) -> list[Request]:
        return [request for _, request in self.seen]

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        buf = bytearray()
        try:
            while (request := await read_request(stream, buf)) is not None:
                self.seen.append((number, request))
                await stream.send(self.answer)
        finally:
            self.closed.set()
