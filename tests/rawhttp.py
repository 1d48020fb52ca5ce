"""A deliberately bad HTTP/1.1 server for transport tests: each test's handler reads requests off the raw
socket and answers (or hangs up, stalls, sends garbage) as it likes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc

Request = tuple[str, str, dict[str, str], bytes]


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
