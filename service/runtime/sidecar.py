"""The HTTP sidecar: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for the kubelet.

Probe endpoints behave as controller-runtime's (``pkg/healthz``), so existing probe settings and habits
carry over: every named check runs, sorted by name; success is 200 ``ok`` (``?verbose`` lists the
checks); any failure is 500 with one ``[-]<name> failed: reason withheld`` line per failing check (the
aggregate endpoint is public, so reasons stay hidden); ``?exclude=<name>`` skips a check;
``/healthz/<name>`` runs one check and, on failure, says why.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from service.http import serving

log = logging.getLogger("service.runtime.sidecar")

# A check returns None when healthy, else the reason it is not.
Check = Callable[[], str | None]

TEXT_HEADERS = {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}


class Checks:
    """A named set of checks served under one path (``/healthz`` or ``/readyz``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        if name in self.checks:
            raise ValueError(f"{self.path}: check {name!r} is already registered")
        self.checks[name] = check

    def run(self, name: str) -> str | None:
        try:
            return self.checks[name]()
        except Exception as exc:  # a broken check is a failing check, not a broken endpoint
            return f"check raised {type(exc).__name__}: {exc}"

    def failures(self) -> dict[str, str]:
        return {name: why for name in sorted(self.checks) if (why := self.run(name)) is not None}

    async def aggregate(self, request: web.Request) -> web.Response:
        if not self.checks:  # controller-runtime serves a kind of check only once one was added
            return web.Response(status=404, text="404 page not found\n", headers=TEXT_HEADERS)
        excluded = set(request.query.getall("exclude", []))
        lines, failed = [], False
        for name in sorted(self.checks):
            if name in excluded:
                excluded.discard(name)
                lines.append(f"[+]{name} excluded: ok")
                continue
            why = self.run(name)
            if why is None:
                lines.append(f"[+]{name} ok")
            else:
                failed = True
                lines.append(f"[-]{name} failed: reason withheld")
                log.info("%s check failed", self.path.strip("/"), extra={"checker": name, "error": why})
        if not failed and "verbose" not in request.query:
            return web.Response(status=200, text="ok", headers=TEXT_HEADERS)
        if excluded:
            quoted = ",".join(f'"{name}"' for name in sorted(excluded))  # Go's formatQuoted
            lines.append(f"warn: some health checks cannot be excluded: no matches for {quoted}")
        lines.append("healthz check failed" if failed else "healthz check passed")
        return web.Response(status=500 if failed else 200, text="\n".join(lines) + "\n", headers=TEXT_HEADERS)

    async def single(self, request: web.Request) -> web.Response:
        name = request.match_info["check"]
        if name not in self.checks:
            return web.Response(status=404, text="404 page not found\n", headers=TEXT_HEADERS)
        why = self.run(name)
        if why is None:
            return web.Response(status=200, text="ok", headers=TEXT_HEADERS)
        return web.Response(status=500, text=f"internal server error: {why}\n", headers=TEXT_HEADERS)

    def routes(self, app: web.Application) -> None:
        app.router.add_get(self.path, self.aggregate)
        app.router.add_get(self.path + "/", self.aggregate)
        app.router.add_get(self.path + "/{check}", self.single)


class LoopMonitor:
    """Notices when the event loop stops turning: a ticker that measures how late it wakes up.

    A stalled loop cannot answer a probe at all, so the probe times out; this also catches stalls that
    come and go between probes, and says how long the last one was.
    """

    def __init__(self, interval: float = 0.5, threshold: float = 5.0, memory: float = 15.0) -> None:
        self.interval, self.threshold, self.memory = interval, threshold, memory
        self.last_tick = time.monotonic()
        self.worst_lag = 0.0
        self._stall_at: float | None = None
        self._stall_lag = 0.0

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await anyio.sleep(self.interval)
            self.last_tick = time.monotonic()
            lag = self.last_tick - before - self.interval
            self.worst_lag = max(self.worst_lag, lag)
            if lag > self.threshold:
                self._stall_at = self.last_tick
                self._stall_lag = lag
                log.warning("event loop stalled", extra={"seconds": round(lag, 3)})

    def check(self) -> str | None:
        now = time.monotonic()
        if now - self.last_tick > self.threshold + self.interval:
            return f"event loop monitor has not run for {now - self.last_tick:.1f} s"
        if self._stall_at is not None and now - self._stall_at < self.memory:
            return f"event loop stalled for {self._stall_lag:.1f} s, {now - self._stall_at:.0f} s ago"
        return None


@dataclass(frozen=True)
class BindAddress:
    host: str | None  # None: every interface
    port: int

    @classmethod
    def parse(cls, value: str) -> BindAddress | None:
        """Go's ``host:port`` listen syntax; ``0`` (or empty) disables the server, as controller-runtime."""
        value = value.strip()
        if value in ("", "0"):
            return None
        host, sep, port = value.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        if bracketed:
            host = host[1:-1]
        if (
            not sep
            or not (port.isascii() and port.isdigit())
            or int(port) > 65535
            or "[" in host
            or "]" in host
            or (":" in host and not bracketed)  # an IPv6 host needs brackets, as in Go
        ):
            raise ValueError(f"bind address {value!r} is not host:port (e.g. :8080 or 127.0.0.1:8080)")
        return cls(host or None, int(port))

    def __str__(self) -> str:
        host = self.host or ""
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


class ListenError(OSError):
    """A server of the sidecar cannot listen on its address; the message is one line, as Go's
    ``listen tcp :8080: bind: address already in use`` but naming the server. An OSError still, so that
    callers that report any OS error in one line (the demo) keep doing so."""

    def __init__(self, roles: tuple[str, ...], address: BindAddress, reason: str) -> None:
        self.roles, self.address, self.reason = roles, address, reason
        names = " and ".join(_ROLE_NAMES[role] for role in roles)
        super().__init__(f"{names} server: cannot listen on {address}: {reason}")


_ROLE_NAMES = {"metrics": "metrics", "probes": "health probe"}


def _listen_reason(exc: OSError) -> str:
    # asyncio's bind error puts the address into strerror ("error while attempting to bind on address
    # ('127.0.0.1', 8080): address already in use"); the errno alone says it once, and the message names
    # the address itself. A resolver error has no errno of the OS's, only its own text.
    if isinstance(exc, socket.gaierror) or not exc.errno:
        reason = exc.strerror or str(exc)
    else:
        reason = os.strerror(exc.errno)
    return reason[:1].lower() + reason[1:]


@dataclass
class Sidecar:
    registry: CollectorRegistry
    healthz: Checks
    readyz: Checks
    metrics_address: BindAddress | None
    probe_address: BindAddress | None
    # Secure metrics (service.runtime.metrics_auth): TLS, and the API server's say on every scrape.
    metrics_tls: ssl.SSLContext | None = None
    metrics_middleware: Middleware | None = None

    def _apps(self) -> list[tuple[BindAddress, web.Application]]:
        metrics_app = web.Application(
            middlewares=[self.metrics_middleware] if self.metrics_middleware else []
        )
        metrics_app.router.add_get("/metrics", make_aiohttp_handler(self.registry, disable_compression=True))
        probe_app = web.Application()
        self.healthz.routes(probe_app)
        self.readyz.routes(probe_app)
        if self.metrics_address and self.metrics_address == self.probe_address:
            if self.metrics_tls or self.metrics_middleware:
                # The kubelet probes without a token: secure metrics need an address of their own.
                raise ValueError("secure metrics need a metrics address apart from the health probe address")
            self.healthz.routes(metrics_app)
            self.readyz.routes(metrics_app)
            return [(self.metrics_address, metrics_app)]
        out = []
        if self.metrics_address:
            out.append((self.metrics_address, metrics_app))
        if self.probe_address:
            out.append((self.probe_address, probe_app))
        return out

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[dict[str, int]]:
        """Listen for the duration of the block; yields the bound port of each server by role."""
        ports: dict[str, int] = {}
        async with AsyncExitStack() as servers:
            for address, app in self._apps():
                roles = tuple(
                    role
                    for role, wanted in (("metrics", self.metrics_address), ("probes", self.probe_address))
                    if address == wanted
                )
                tls = self.metrics_tls if "metrics" in roles else None
                try:
                    port = await servers.enter_async_context(serving(app, address.host, address.port, tls))
                except OSError as exc:
                    raise ListenError(roles, address, _listen_reason(exc)) from exc
                for role in roles:
                    ports[role] = port
                log.info(
                    "serving",
                    extra={"address": str(BindAddress(address.host, port)), "serves": "+".join(roles)},
                )
            yield ports
