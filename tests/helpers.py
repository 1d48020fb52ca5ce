"""Waiting helpers shared by the suites: poll a condition until it holds, with a deadline, never a bare
sleep standing in for an event."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

DEADLINE = 10.0
POLL = 0.02


async def _value(check: Callable[[], T | Awaitable[T]]) -> T:
    value = check()
    if inspect.isawaitable(value):
        return await value
    return value


async def eventually(check: Callable[[], T | Awaitable[T]], within: float = DEADLINE, what: str = "") -> T:
    """Poll ``check`` (sync or async) until it returns something truthy, and return that; fail with
    ``what`` (and the last value) when ``within`` seconds pass first."""
    deadline = time.monotonic() + within
    while True:
        value = await _value(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what or check} (last: {value!r})")
        await anyio.sleep(POLL)


async def consistently(check: Callable[[], T | Awaitable[T]], period: float, what: str = "") -> None:
    """Assert ``check`` stays truthy for ``period`` seconds: for things that must *not* happen, which no
    event can announce (Korifi's suite does the same with Gomega's Consistently)."""
    deadline = time.monotonic() + period
    while time.monotonic() < deadline:
        value = await _value(check)
        if not value:
            raise AssertionError(f"stopped holding: {what or check} (got {value!r})")
        await anyio.sleep(POLL * 5)
