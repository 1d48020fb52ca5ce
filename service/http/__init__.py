"""HTTP plumbing shared by the service's aiohttp clients (Kubernetes, registries) and servers (the sidecar,
the API emulator, the in-process registry)."""

from __future__ import annotations

import io
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Self

import aiohttp
import anyio
from aiohttp import web

LARGE_BODY = 2**20


def request_body(data: bytes | None) -> bytes | io.BytesIO | None:
    """A request body aiohttp sends without complaint: it warns (ResourceWarning) about raw bytes over
    1 MiB, so a large one goes as a BytesIO, written in chunks. A BytesIO is consumed by sending: each
    attempt needs its own."""
    if data is not None and len(data) > LARGE_BODY:
        return io.BytesIO(data)
    return data


# Seconds a closing client lets the event loop finish closing its TLS connections (see ``LazySession``).
TLS_CLOSE_GRACE = 0.25


class LazySession:
    """A client's one aiohttp session, made on first use (a session must be born inside the running event
    loop) and closed once; use the client as ``async with``."""

    _session: aiohttp.ClientSession | None = None
    _closed: bool = False
    # Seconds to let the event loop finish closing TLS connections after the session closes: aiohttp closes
    # an SSL transport without waiting for its shutdown (aiohttp#1925), and a loop that stops first leaks
    # the socket (a ResourceWarning, an error under the test suite's warning filter).
    _close_grace: float = 0.0

    def _new_session(self) -> aiohttp.ClientSession:
        raise NotImplementedError

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} is closed")
            self._session = self._new_session()
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            if self._close_grace:
                await anyio.sleep(self._close_grace)

    async def __aenter__(self) -> Self:
        self._get_session()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.close()


@asynccontextmanager
async def serving(
    app: web.Application, host: str | None, port: int, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve ``app`` on ``host:port`` (None: every interface; 0: a free port) for the duration of the block,
    which gets the bound port. Handlers are cancelled when their client goes (aiohttp's default would keep a
    streaming handler alive), and shutdown waits at most a second for them."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        yield int(runner.addresses[0][1])
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
