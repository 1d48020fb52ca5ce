"""The client-side token bucket, on a fake clock: client-go flowcontrol semantics."""

from __future__ import annotations

import math
import time

import anyio
import pytest

from service.kube.ratelimit import TokenBucket

pytestmark = pytest.mark.anyio


class FakeTime:
    """A clock that moves only when a sleeper sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


class GatedSleep:
    """Sleepers record their delay and then block until released (or cancelled)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.delays: list[float] = []
        self.release = anyio.Event()
        self.arrived = anyio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.arrived.set()
        await self.release.wait()


def bucket(qps: float, burst: int, fake: FakeTime | GatedSleep) -> TokenBucket:
    return TokenBucket(qps, burst, clock=fake.clock, sleep=fake.sleep)


async def test_starts_full_then_paces_at_qps() -> None:
    fake = FakeTime()
    tb = bucket(2.0, 3, fake)
    waits = [await tb.acquire() for _ in range(6)]
    assert waits == [0.0, 0.0, 0.0, 0.5, 0.5, 0.5]
    assert fake.sleeps == [0.5, 0.5, 0.5]
    assert fake.now == pytest.approx(101.5)


async def test_reserve_borrows_from_the_future() -> None:
    fake = FakeTime()
    tb = bucket(4.0, 2, fake)
    assert [tb.reserve() for _ in range(5)] == [0.0, 0.0, 0.25, 0.5, 0.75]
    assert fake.sleeps == []  # reserving never waits: the caller schedules itself
    fake.now += 0.75
    assert tb.tokens() == pytest.approx(0.0)
    assert bucket(0.0, 1, fake).reserve() == 0.0


async def test_refills_over_time_up_to_burst() -> None:
    fake = FakeTime()
    tb = bucket(10.0, 5, fake)
    assert all([tb.try_acquire() for _ in range(5)])
    assert not tb.try_acquire()
    fake.now += 0.25  # 2.5 tokens
    assert tb.tokens() == pytest.approx(2.5)
    assert [tb.try_acquire() for _ in range(3)] == [True, True, False]
    fake.now += 3600
    assert tb.tokens() == 5.0


async def test_concurrent_callers_reserve_in_arrival_order() -> None:
    gate = GatedSleep()
    tb = bucket(4.0, 1, gate)
    assert await tb.acquire() == 0.0
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(tb.acquire)
            await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            await gate.arrived.wait()
        # Each queued caller waits one more token's worth than the one before it.
        assert gate.delays == [0.25, 0.5, 0.75]
        assert tb.tokens() == pytest.approx(-3.0)
        gate.release.set()


async def test_a_cancelled_waiter_returns_its_token() -> None:
    gate = GatedSleep()
    tb = bucket(1.0, 1, gate)
    await tb.acquire()
    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tb.acquire)
            await gate.arrived.wait()
            assert tb.tokens() == pytest.approx(-1.0)
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert tb.tokens() == pytest.approx(0.0)
    gate.now += 1.0
    assert tb.try_acquire()


async def test_backwards_clock_does_not_drain_or_refill() -> None:
    fake = FakeTime()
    tb = bucket(1.0, 2, fake)
    await tb.acquire()
    fake.now -= 50
    assert tb.tokens() == pytest.approx(1.0)
    fake.now += 50.5  # half a token after the latest time seen, not 50.5
    assert tb.tokens() == pytest.approx(1.5)


@pytest.mark.parametrize("qps", [0.0, -1.0])
async def test_non_positive_qps_disables_throttling(qps: float) -> None:
    fake = FakeTime()
    tb = bucket(qps, 1, fake)
    assert not tb.enabled
    assert [await tb.acquire() for _ in range(1000)] == [0.0] * 1000
    assert all(tb.try_acquire() for _ in range(10))
    assert fake.sleeps == []
    assert tb.tokens() == math.inf


async def test_burst_below_one_still_admits_one_request() -> None:
    fake = FakeTime()
    tb = bucket(5.0, 0, fake)
    assert tb.burst == 1
    assert await tb.acquire() == 0.0
    assert await tb.acquire() == pytest.approx(0.2)


def test_rejects_non_finite_qps() -> None:
    for qps in (math.nan, math.inf):
        with pytest.raises(ValueError):
            TokenBucket(qps, 1)


async def test_real_clock_paces_requests() -> None:
    tb = TokenBucket(50.0, 1)
    started = time.monotonic()
    with anyio.fail_after(5):
        for _ in range(6):
            await tb.acquire()
    # Five waits of 20 ms each after the single burst token; the lower bound is what throttling promises.
    assert time.monotonic() - started >= 0.09
