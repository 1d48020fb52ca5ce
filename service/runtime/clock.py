"""Time as the runtime sees it: the real monotonic clock, or a fake one that tests move by hand."""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep(max(0.0, deadline - time.monotonic()))


REAL_CLOCK = MonotonicClock()


class FakeClock:
    """A clock that only moves when ``advance`` is called; sleepers wake in deadline order."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        entry = (deadline, next(self._seq), anyio.Event())
        heapq.heappush(self._sleepers, entry)
        try:
            await entry[2].wait()
        finally:
            if not entry[2].is_set():
                # Cancelled: forget the sleeper, so that ``sleepers`` counts only tasks really asleep.
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    @property
    def sleepers(self) -> int:
        """How many tasks are asleep on this clock right now."""
        return sum(1 for _, _, e in self._sleepers if not e.is_set())

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()
