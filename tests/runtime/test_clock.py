"""The FakeClock the timing tests rely on."""

from __future__ import annotations

import anyio
import pytest

from service.runtime.clock import REAL_CLOCK, FakeClock
from tests.runtime.conftest import settle

pytestmark = pytest.mark.anyio


async def test_sleepers_wake_in_deadline_order_only_when_the_clock_gets_there() -> None:
    clock = FakeClock(start=0.0)
    woke: list[str] = []

    async def sleep(name: str, deadline: float) -> None:
        await clock.sleep_until(deadline)
        woke.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleep, "late", 3.0)
        tg.start_soon(sleep, "early", 1.0)
        tg.start_soon(sleep, "middle", 2.0)
        await settle()
        assert clock.sleepers == 3 and woke == []
        clock.advance(0.999)
        await settle()
        assert woke == []
        clock.advance(2.001)
        await settle()
    assert woke == ["early", "middle", "late"]
    assert clock.now() == pytest.approx(3.0)
    assert clock.sleepers == 0


async def test_a_deadline_in_the_past_returns_at_once() -> None:
    clock = FakeClock()
    with anyio.fail_after(1):
        await clock.sleep_until(clock.now())
        await clock.sleep_until(clock.now() - 5)
    assert clock.sleepers == 0


async def test_a_cancelled_sleeper_is_forgotten() -> None:
    clock = FakeClock()
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.sleep_until, clock.now() + 5)
        tg.start_soon(clock.sleep_until, clock.now() + 10)
        await settle()
        assert clock.sleepers == 2
        tg.cancel_scope.cancel()
    assert clock.sleepers == 0  # what tests poll on must not count sleepers that went away
    clock.advance(20)  # and advancing past them is harmless


async def test_the_real_clock_sleeps_until_its_deadline() -> None:
    deadline = REAL_CLOCK.now() + 0.01
    await REAL_CLOCK.sleep_until(deadline)
    assert REAL_CLOCK.now() >= deadline
