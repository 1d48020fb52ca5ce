"""Helpers shared by the suites: waiting (poll a condition until it holds, with a deadline, never a bare
sleep standing in for an event), a client that does not wait on retries, the environment of child
processes, a server that never answers, and an emulator whose clock disagrees with the machine's."""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.abc
import pytest

from service.kube.client import KubeClient
from service.kube.config import explicit

T = TypeVar("T")
C = TypeVar("C", bound=KubeClient)

DEADLINE = 10.0
POLL = 0.02


async def _value(check: Callable[[], T | Awaitable[T]]) -> T:
    value = check()
    if inspect.isawaitable(value):
        return await value
    return value


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    within: float = DEADLINE,
    what: str = "",
    *,
    until: Callable[[T], object] | None = None,
    interval: float = POLL,
) -> T:
    """Poll ``check`` (sync or async) until it returns something truthy — or, with ``until``, something
    ``until`` accepts — and return that; fail with ``what`` (and the last value) when ``within`` seconds
    pass first."""
    deadline = time.monotonic() + within
    while True:
        value = await _value(check)
        if until(value) if until is not None else value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what or check} (last: {value!r})")
        await anyio.sleep(interval)


async def consistently(check: Callable[[], T | Awaitable[T]], period: float, what: str = "") -> None:
    """Assert ``check`` stays truthy for ``period`` seconds: for things that must *not* happen, which no
    event can announce (Korifi's suite does the same with Gomega's Consistently)."""
    deadline = time.monotonic() + period
    while time.monotonic() < deadline:
        value = await _value(check)
        if not value:
            raise AssertionError(f"stopped holding: {what or check} (got {value!r})")
        await anyio.sleep(POLL * 5)


async def promtool_check(exposition: str) -> None:
    """Lint a /metrics exposition with Debian's promtool (``make`` installs it): no errors, no warnings.
    Skips the calling test where promtool is missing, so that a machine without it says so."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: the exposition was not linted")
    with anyio.fail_after(30):
        result = await anyio.run_process(
            [promtool, "check", "metrics"], input=exposition.encode(), check=False
        )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""


def fast_client(
    url: str,
    cls: type[C] = KubeClient,
    *,
    token: str | None = None,
    throttled: bool = False,
    **kwargs: object,
) -> C:  # type: ignore[assignment]
    """A client for tests that retries without real waiting (Retry-After capped, backoff of milliseconds),
    so that injected faults cost a test no time; without client-side throttling unless ``throttled``."""
    options: dict[str, object] = {"max_retry_after": 0.02, "backoff_base": 0.005, "backoff_cap": 0.02}
    if not throttled:
        options["qps"] = 0
    return cls(explicit(url, token=token), **{**options, **kwargs})  # type: ignore[arg-type]


# anyio's pytest backends: the event loops `run` offers (eventLoop). The suite runs on asyncio's, the
# default; the modules closest to the transports run on both (``on_both_event_loops``).
UVLOOP = ("asyncio", {"use_uvloop": True})
ASYNCIO = ("asyncio", {"use_uvloop": False})


@pytest.fixture(name="anyio_backend", params=[UVLOOP, ASYNCIO], ids=["uvloop", "asyncio"])
def on_both_event_loops(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """A module that sets ``anyio_backend = helpers.on_both_event_loops`` runs each test on both loops."""
    param: tuple[str, dict[str, bool]] = request.param
    return param


def child_env(**extra: str) -> dict[str, str]:
    """This environment for a child process (``run``, ``devcluster``, pytest), without the service's own
    ``KPACK_IMAGE_BUILDER_*`` settings, which would leak into it; plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPACK_IMAGE_BUILDER_")}
    env.update(extra)
    return env


@dataclass
class Hanging:
    port: int
    connections: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def hanging_server() -> AsyncIterator[Hanging]:
    """A TCP server that accepts connections and never answers (a registry behind a dead proxy). It reads
    what comes, so that a client's writes never block, and counts the connections."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    hanging = Hanging(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def hold(stream: anyio.abc.SocketStream) -> None:
        hanging.connections += 1
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    await stream.receive()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        try:
            yield hanging
        finally:
            tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def server_clock_skewed(client: KubeClient, seconds: float) -> AsyncIterator[None]:
    """The emulator's clock ``seconds`` ahead of the machine's (negative: behind) for the block, set over
    ``/__sim__/clock``; the service learns it from the answers' Date, as it would a real server's."""

    async def skew(to: float) -> None:
        status, _, body = await client.request("PUT", "/__sim__/clock", body={"skewSeconds": to})
        assert status == 200, body

    await skew(seconds)
    try:
        yield
    finally:
        await skew(0.0)
