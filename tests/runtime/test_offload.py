"""The offload pool: slow work runs beside the workers, never in their way."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from prometheus_client import CollectorRegistry

from service.runtime.clock import FakeClock
from service.runtime.offload import NotRunning, Offload, Outcome

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running(pool: Offload) -> AsyncIterator[Offload]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run)
        await anyio.lowlevel.checkpoint()
        while not pool.running:
            await anyio.lowlevel.checkpoint()
        yield pool
        tg.cancel_scope.cancel()


class Gate:
    """Work that ends when the test says so, counting how often it was started."""

    def __init__(self, value: str = "done") -> None:
        self.open = anyio.Event()
        self.starts = 0
        self.value = value

    async def __call__(self) -> str:
        self.starts += 1
        await self.open.wait()
        return self.value


class Wakes:
    def __init__(self) -> None:
        self.count = 0
        self.event = anyio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()


def instant(value: str) -> Callable[[], Awaitable[str]]:
    async def work() -> str:
        return value

    return work


async def test_fast_work_is_collected_inline_without_a_wake() -> None:
    wakes = Wakes()
    async with running(Offload("t", inline=5.0)) as pool:
        outcome = await pool.collect("k", "lane", instant("v"), wakes)
    assert outcome == Outcome(value="v")
    assert wakes.count == 0
    assert outcome is not None and outcome.get() == "v"


async def test_slow_work_returns_at_once_wakes_the_asker_and_is_collected_once() -> None:
    gate, wakes = Gate(), Wakes()
    async with running(Offload("t", inline=0.01)) as pool:
        assert await pool.collect("k", "lane", gate, wakes) is None
        assert await pool.collect("k", "lane", gate, wakes) is None  # asked again: not started again
        assert pool.pending("lane") == 1
        gate.open.set()
        with anyio.fail_after(2):
            await wakes.event.wait()
        outcome = await pool.collect("k", "lane", gate, wakes)
        assert outcome is not None and outcome.get() == "done"
        assert gate.starts == 1 and wakes.count == 1
        # Collected means forgotten: the next ask is new work.
        assert await pool.collect("k", "lane", instant("again"), wakes) == Outcome(value="again")


async def test_a_failure_is_an_outcome_the_asker_reads() -> None:
    async def broken() -> str:
        raise OSError("connection reset")

    async with running(Offload("t", inline=5.0)) as pool:
        outcome = await pool.collect("k", "lane", broken, Wakes())
    assert outcome is not None and isinstance(outcome.error, OSError)
    with pytest.raises(OSError, match="connection reset"):
        outcome.get()


async def test_a_hung_lane_does_not_hold_another_lane() -> None:
    hung = [Gate() for _ in range(3)]
    async with running(Offload("t", per_lane=2, inline=0.01)) as pool:
        for i, gate in enumerate(hung):
            assert await pool.collect(f"hung-{i}", "slow.example", gate, Wakes()) is None
        with anyio.fail_after(2):
            while hung[1].starts == 0:
                await anyio.lowlevel.checkpoint()
        assert [g.starts for g in hung] == [1, 1, 0]  # the lane's limit: the third waits its turn
        with anyio.fail_after(2):
            outcome = await pool.collect("other", "fast.example", instant("v"), Wakes())
        assert outcome == Outcome(value="v")
        hung[0].open.set()
        with anyio.fail_after(2):
            while hung[2].starts == 0:  # the freed place goes to the waiting job
                await anyio.lowlevel.checkpoint()


async def test_no_inline_wait_on_a_lane_whose_job_overran_the_budget() -> None:
    clock = FakeClock()
    async with running(Offload("t", inline=30.0, clock=clock)) as pool:
        first = Gate()
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.collect, "first", "lane", first, Wakes())
                while first.starts == 0:
                    await anyio.lowlevel.checkpoint()
                clock.advance(31)  # the first job has now run longer than the inline budget
                # a reconcile on the same lane does not wait its 30 s budget: it returns at once
                assert await pool.collect("second", "lane", Gate(), Wakes()) is None
                first.open.set()


async def test_uncollected_outcomes_expire() -> None:
    clock = FakeClock()
    gate, wakes = Gate(), Wakes()
    async with running(Offload("t", inline=0.0, keep=60.0, clock=clock)) as pool:
        assert await pool.collect("abandoned", "lane", gate, wakes) is None
        gate.open.set()
        with anyio.fail_after(2):
            await wakes.event.wait()
        clock.advance(61)
        fresh = Gate("fresh")
        # The abandoned outcome is gone after ``keep``: asking for it again starts the work anew.
        assert await pool.collect("abandoned", "lane", fresh, Wakes()) is None
        assert fresh.starts == 1


async def test_asking_a_stopped_pool_is_an_error() -> None:
    with pytest.raises(NotRunning):
        await Offload("t").collect("k", "lane", instant("v"), Wakes())


async def test_stopping_the_pool_cancels_its_jobs_and_the_gauge_counts_them() -> None:
    registry = CollectorRegistry()
    pool = Offload("registry", inline=0.0, registry=registry)
    gate = Gate()
    cancelled = anyio.Event()

    async def hangs() -> str:
        try:
            return await gate()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    async with running(pool):
        assert await pool.collect("k", "r.example", hangs, Wakes()) is None
        with anyio.fail_after(2):
            while gate.starts == 0:
                await anyio.lowlevel.checkpoint()
        labels = {"pool": "registry", "lane": "r.example", "state": "running"}
        assert registry.get_sample_value("offload_jobs", labels) == 1
    assert cancelled.is_set()
    assert not pool.running and pool.pending() == 0
