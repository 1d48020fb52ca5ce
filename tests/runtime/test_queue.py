"""The work queue against client-go's semantics (machinery.md §1.1-1.3, §2.1), timed by a FakeClock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.runtime.clock import FakeClock
from service.runtime.metrics import RuntimeMetrics
from service.runtime.queue import ShutDown, WorkQueue
from service.runtime.ratelimiters import ItemExponentialFailure
from tests.runtime.conftest import settle

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def started(queue: WorkQueue[str]) -> AsyncIterator[anyio.abc.TaskGroup]:
    """Run the queue's delay loop (and metrics refresh) for the duration of the block."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue.run)
        await settle()
        yield tg
        tg.cancel_scope.cancel()


async def advance(clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    await settle()


@dataclass
class Getter:
    """A worker that only takes keys (never marks them done): what it got, and whether it saw ShutDown."""

    queue: WorkQueue[str]
    got: list[str] = field(default_factory=list)
    shut_down: bool = False

    async def run(self, count: int = 1_000_000) -> None:
        try:
            for _ in range(count):
                self.got.append(await self.queue.get())
        except ShutDown:
            self.shut_down = True


async def take_all(queue: WorkQueue[str]) -> list[str]:
    out = []
    with anyio.fail_after(1):
        while len(queue):
            out.append(await queue.get())
    return out


# ---------------------------------------------------------------------------------------------- basic queue
async def test_add_deduplicates_a_queued_key() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "a", "b", "c"):
        q.add(key)
    assert len(q) == 3
    assert await take_all(q) == ["a", "b", "c"]


async def test_keys_come_out_in_fifo_order() -> None:
    q: WorkQueue[str] = WorkQueue()
    keys = ["k7", "k2", "k9", "k1", "k5"]
    for key in keys:
        q.add(key)
    assert await take_all(q) == keys


async def test_get_waits_for_an_add() -> None:
    q: WorkQueue[str] = WorkQueue()
    getter = Getter(q)
    async with anyio.create_task_group() as tg:
        tg.start_soon(getter.run, 1)
        await settle()
        assert getter.got == []  # blocked: nothing queued
        q.add("x")
        await settle()
        assert getter.got == ["x"]
        assert q.processing == {"x"}


async def test_one_add_wakes_one_getter_and_cancelled_getters_leave_no_trace() -> None:
    queue: WorkQueue[str] = WorkQueue(clock=FakeClock())
    got: list[tuple[int, str]] = []
    async with anyio.create_task_group() as tg:
        scopes = [anyio.CancelScope() for _ in range(3)]
        for i, scope in enumerate(scopes):

            async def getter(i: int = i, scope: anyio.CancelScope = scope) -> None:
                with scope:
                    got.append((i, await queue.get()))

            tg.start_soon(getter)
        await settle()
        assert len(queue._getters) == 3
        queue.add("a")
        assert len(queue._getters) == 2  # one add wakes one getter, not all three
        await settle()
        assert [key for _, key in got] == ["a"]
        waiting = [i for i in range(3) if i not in {g for g, _ in got}]
        scopes[waiting[0]].cancel()  # a blocked getter goes away without taking anything
        await settle()
        assert len(queue._getters) == 1
        queue.add("b")
        await settle()
        assert got[-1] == (waiting[1], "b")
        queue.shutdown()
    assert sorted(key for _, key in got) == ["a", "b"]


async def test_add_during_processing_is_requeued_only_after_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert await q.get() == "a"
    q.add("a")  # while processing: dirty only
    assert len(q) == 0
    second = Getter(q)
    async with anyio.create_task_group() as tg:
        tg.start_soon(second.run, 2)
        await settle()
        assert second.got == []  # "a" is never handed to a second worker while the first holds it
        q.add("b")
        await settle()
        assert second.got == ["b"]
        q.add("a")  # already dirty: nothing changes
        q.done("a")  # now it goes back on the queue, once
        await settle()
        assert second.got == ["b", "a"]
    assert len(q) == 0
    assert q.processing == {"a", "b"}


async def test_done_without_a_pending_add_does_not_requeue() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert await q.get() == "a"
    q.done("a")
    q.done("a")  # a stray second done changes nothing
    assert len(q) == 0 and q.processing == frozenset()


# ---------------------------------------------------------------------------------------------- delaying
async def test_add_after_waits_for_its_time() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    async with started(q):
        q.add_after("a", 5)
        await settle()
        assert len(q) == 0 and q.waiting == 1
        await advance(clock, 4.999)
        assert len(q) == 0
        await advance(clock, 0.001)
        assert len(q) == 1 and q.waiting == 0
        assert await q.get() == "a"


async def test_add_after_keeps_the_earliest_time() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    async with started(q):
        q.add_after("a", 10)
        q.add_after("a", 5)  # earlier: wins
        assert q.waiting == 1
        assert q.next_ready_at() == clock.now() + 5
        await advance(clock, 5)
        assert await take_all(q) == ["a"]
        q.done("a")
        await advance(clock, 5)  # the superseded 10 s entry must not fire as well
        assert len(q) == 0 and q.waiting == 0


async def test_add_after_never_postpones_a_waiting_key() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    async with started(q):
        q.add_after("a", 5)
        q.add_after("a", 10)
        q.add_after("a", 5.5)
        assert q.next_ready_at() == clock.now() + 5
        await advance(clock, 5)
        assert len(q) == 1


async def test_waiting_keys_are_released_in_time_order() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    async with started(q):
        q.add_after("late", 3)
        q.add_after("early", 1)
        q.add_after("middle", 2)
        q.add("now")
        await advance(clock, 3)
        assert await take_all(q) == ["now", "early", "middle", "late"]


async def test_plain_add_of_a_waiting_key_processes_it_now_and_again_later() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    async with started(q):
        q.add_after("a", 5)
        q.add("a")
        assert len(q) == 1 and q.waiting == 1  # the heap entry stays
        assert await q.get() == "a"
        q.done("a")
        await advance(clock, 5)
        assert await take_all(q) == ["a"]  # added again when its timer fired


async def test_a_waiting_key_that_is_still_queued_when_its_time_comes_is_deduplicated() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    async with started(q):
        q.add_after("a", 5)
        q.add("a")
        await advance(clock, 5)
        assert len(q) == 1
        assert await take_all(q) == ["a"]


async def test_add_after_zero_or_negative_is_a_plain_add() -> None:
    q: WorkQueue[str] = WorkQueue(clock=FakeClock())  # no delay loop running: nothing can wait
    q.add_after("a", 0)
    q.add_after("b", -3)
    assert len(q) == 2 and q.waiting == 0
    assert await take_all(q) == ["a", "b"]


# ---------------------------------------------------------------------------------------------- rate limiting
async def test_rate_limited_adds_count_failures_until_forgotten() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock, rate_limiter=ItemExponentialFailure(0.005, 1000.0))
    async with started(q):
        q.add_rate_limited("a")
        assert q.next_ready_at() == clock.now() + 0.005
        q.add_rate_limited("a")  # 10 ms, but the 5 ms entry is earlier and is kept
        q.add_rate_limited("a")
        assert q.num_requeues("a") == 3
        assert q.next_ready_at() == clock.now() + 0.005
        assert q.num_requeues("b") == 0
        q.forget("a")
        assert q.num_requeues("a") == 0
        assert q.waiting == 1  # forget resets the limiter only; the key still comes
        await advance(clock, 0.005)
        assert await take_all(q) == ["a"]
        q.done("a")
        q.add_rate_limited("a")  # counting starts again at 5 ms
        assert q.next_ready_at() == clock.now() + 0.005


async def test_rate_limited_delay_grows_per_failure() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock, rate_limiter=ItemExponentialFailure(0.005, 1000.0))
    async with started(q):
        for n in range(4):
            q.add_rate_limited("a")
            assert q.next_ready_at() == pytest.approx(clock.now() + 0.005 * 2**n)
            await advance(clock, 0.005 * 2**n)
            assert await take_all(q) == ["a"]
            q.done("a")


# ---------------------------------------------------------------------------------------------- shutdown
async def test_shutdown_still_hands_out_queued_keys_then_raises() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("b")
    q.shutdown()
    assert q.shutting_down
    q.add("c")  # ignored
    q.add_after("d", 0)  # ignored
    assert await take_all(q) == ["a", "b"]
    with anyio.fail_after(1), pytest.raises(ShutDown):
        await q.get()


async def test_shutdown_wakes_blocked_getters_with_shutdown() -> None:
    q: WorkQueue[str] = WorkQueue()
    getters = [Getter(q) for _ in range(3)]
    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            for g in getters:
                tg.start_soon(g.run)
            await settle()
            q.shutdown()
    assert all(g.shut_down and g.got == [] for g in getters)


async def test_a_key_being_processed_at_shutdown_is_still_requeued_by_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    await q.get()
    q.add("a")  # dirty while processing
    q.shutdown()
    q.done("a")
    assert await take_all(q) == ["a"]


async def test_waiting_keys_are_dropped_at_shutdown() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(q.run)
            q.add_after("a", 5)
            await settle()
            q.shutdown()  # the delay loop ends by itself
    assert q.waiting == 0
    clock.advance(10)
    assert len(q) == 0
    with pytest.raises(ShutDown):
        await q.get()


async def test_shutdown_with_drain_waits_for_processing() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "c"):
        q.add(key)
    await q.get()
    await q.get()
    drained = anyio.Event()

    async def drain() -> None:
        await q.shutdown_with_drain()
        drained.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        await settle()
        q.done("a")
        await settle()
        assert not drained.is_set()  # "b" still in flight
        assert await q.get() == "c"  # queued keys are still handed out while draining
        q.done("b")
        await settle()
        assert not drained.is_set()  # "c" now in flight
        q.done("c")
        await settle()
        assert drained.is_set()


async def test_shutdown_with_drain_returns_at_once_with_nothing_in_flight() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("queued")  # queued but never handed out: not waited for (client-go waits on processing only)
    with anyio.fail_after(1):
        await q.shutdown_with_drain()
    assert q.shutting_down


async def test_plain_shutdown_releases_a_drain() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    await q.get()
    drained = anyio.Event()

    async def drain() -> None:
        await q.shutdown_with_drain()
        drained.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        await settle()
        assert not drained.is_set()
        q.shutdown()
        await settle()
        assert drained.is_set()
    assert q.processing == {"a"}


async def test_a_second_drain_does_not_release_the_first() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    await q.get()
    returned: list[int] = []

    async def drain(i: int) -> None:
        await q.shutdown_with_drain()
        returned.append(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, 1)
        await settle()
        tg.start_soon(drain, 2)
        await settle()
        assert returned == []  # "a" is still in flight: nobody may return
        q.done("a")
        await settle()
        assert sorted(returned) == [1, 2]


# ---------------------------------------------------------------------------------------------- metrics
def sample(registry: CollectorRegistry, metric: str, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


def q_sample(registry: CollectorRegistry, metric: str, name: str = "q", **labels: str) -> float | None:
    return sample(registry, metric, name=name, controller=name, **labels)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


async def test_depth_and_adds_metrics(registry: CollectorRegistry) -> None:
    q: WorkQueue[str] = WorkQueue("q", metrics=RuntimeMetrics(registry), clock=FakeClock())

    def depth() -> float | None:
        return q_sample(registry, "workqueue_depth", priority="")

    assert depth() == 0 and q_sample(registry, "workqueue_adds_total") == 0  # series exist from the start
    q.add("a")
    q.add("a")  # duplicate: not counted
    q.add("b")
    assert depth() == 2 and q_sample(registry, "workqueue_adds_total") == 2
    await q.get()
    assert depth() == 1
    q.add("a")  # while processing: accepted, counted
    assert depth() == 2 and q_sample(registry, "workqueue_adds_total") == 3
    q.done("a")  # back on the queue: no new add
    assert depth() == 2 and q_sample(registry, "workqueue_adds_total") == 3
    await take_all(q)
    assert depth() == 0


async def test_retries_metric_counts_every_add_after(registry: CollectorRegistry) -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue("q", metrics=RuntimeMetrics(registry), clock=clock)
    q.add_after("a", 0)
    q.add_after("a", -1)
    q.add_after("a", 5)
    q.add_after("a", 10)  # not postponing, but still a retry
    q.add_rate_limited("a")
    assert q_sample(registry, "workqueue_retries_total") == 5
    assert q_sample(registry, "workqueue_adds_total") == 1  # only the first was an accepted add
    q.shutdown()
    q.add_after("a", 1)  # ignored at shutdown, not counted
    assert q_sample(registry, "workqueue_retries_total") == 5


async def test_queue_and_work_duration_metrics(registry: CollectorRegistry) -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue("q", metrics=RuntimeMetrics(registry), clock=clock)
    q.add("a")
    clock.advance(2.0)
    q.add("a")  # a duplicate add does not restart the queue clock
    clock.advance(0.5)
    await q.get()
    clock.advance(3.0)
    q.done("a")
    assert q_sample(registry, "workqueue_queue_duration_seconds_count") == 1
    assert q_sample(registry, "workqueue_queue_duration_seconds_sum") == pytest.approx(2.5)
    assert q_sample(registry, "workqueue_queue_duration_seconds_bucket", le="1.0") == 0
    assert q_sample(registry, "workqueue_queue_duration_seconds_bucket", le="10.0") == 1
    assert q_sample(registry, "workqueue_work_duration_seconds_count") == 1
    assert q_sample(registry, "workqueue_work_duration_seconds_sum") == pytest.approx(3.0)


async def test_unfinished_work_and_longest_running_processor(registry: CollectorRegistry) -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue("q", metrics=RuntimeMetrics(registry), clock=clock)
    async with started(q):
        q.add("old")
        q.add("new")
        await q.get()
        await advance(clock, 3.0)  # the run loop refreshes the gauges every 0.5 s of clock time
        assert q_sample(registry, "workqueue_unfinished_work_seconds") == pytest.approx(3.0)
        await q.get()
        clock.advance(1.0)
        q.update_unfinished_work()
        assert q_sample(registry, "workqueue_unfinished_work_seconds") == pytest.approx(4.0 + 1.0)
        assert q_sample(registry, "workqueue_longest_running_processor_seconds") == pytest.approx(4.0)
        q.done("old")
        q.done("new")
        await advance(clock, 0.5)
        assert q_sample(registry, "workqueue_unfinished_work_seconds") == 0
        assert q_sample(registry, "workqueue_longest_running_processor_seconds") == 0


async def test_an_unnamed_queue_reports_nothing(registry: CollectorRegistry) -> None:
    q: WorkQueue[str] = WorkQueue("", metrics=RuntimeMetrics(registry))
    q.add("a")
    q.add_after("b", 0)
    assert q_sample(registry, "workqueue_adds_total", name="") is None
    assert q_sample(registry, "workqueue_depth", name="", priority="") is None


# ---------------------------------------------------------------------------------------------- properties
class Model:
    """client-go's queue written out plainly: the reference the real one is compared with, step by step."""

    def __init__(self) -> None:
        self.now = 0.0
        self.queue: list[str] = []
        self.dirty: set[str] = set()
        self.processing: set[str] = set()
        self.waiting: dict[str, tuple[float, int]] = {}
        self.seq = 0
        self.blocked = 0  # getters waiting for a key
        self.handed: list[str] = []
        self.released: list[str] = []  # keys whose add_after time came

    def add(self, key: str) -> None:
        if key in self.dirty:
            return
        self.dirty.add(key)
        if key in self.processing:
            return
        self.queue.append(key)
        self.serve()

    def serve(self) -> None:
        while self.blocked and self.queue:
            self.blocked -= 1
            self.get()

    def get(self) -> str:
        key = self.queue.pop(0)
        self.dirty.discard(key)
        self.processing.add(key)
        self.handed.append(key)
        return key

    def done(self, key: str) -> None:
        self.processing.discard(key)
        if key in self.dirty:
            self.queue.append(key)
            self.serve()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        ready = self.now + delay
        if key in self.waiting and self.waiting[key][0] <= ready:
            return
        self.seq += 1
        self.waiting[key] = (ready, self.seq)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for key, _ in sorted(
            ((k, v) for k, v in self.waiting.items() if v[0] <= self.now), key=lambda kv: kv[1]
        ):
            del self.waiting[key]
            self.released.append(key)
            self.add(key)


KEYS = st.sampled_from("abcd")
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), KEYS),
        st.tuples(st.just("get"), st.just("")),
        st.tuples(st.just("done"), st.integers(0, 3)),
        st.tuples(st.just("add_after"), KEYS, st.sampled_from([-1.0, 0.0, 1.0, 2.0, 3.0, 5.0])),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 2.0, 4.0])),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
async def test_random_operations_never_run_a_key_twice_and_never_lose_one(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    clock = FakeClock(start=0.0)
    q: WorkQueue[str] = WorkQueue(clock=clock)
    model = Model()
    in_flight: list[str] = []  # handed out and not done, as the workers see it
    handed: list[str] = []
    owed: set[str] = set()  # keys added since they were last handed out: each must come out again

    def take(key: str) -> None:
        assert key not in in_flight, f"{key} handed out while still being processed"
        in_flight.append(key)
        handed.append(key)
        owed.discard(key)

    async def blocked_getter() -> None:
        with suppress(ShutDown):
            take(await q.get())

    def check() -> None:
        assert handed == model.handed  # same keys, same (FIFO) order
        assert sorted(in_flight) == sorted(model.processing) == sorted(q.processing)
        assert len(q) == len(model.queue)
        assert q.waiting == len(model.waiting)

    async def step(op: tuple) -> None:  # type: ignore[type-arg]
        kind = op[0]
        if kind == "add":
            owed.add(op[1])
            q.add(op[1])
            model.add(op[1])
        elif kind == "get":
            if model.queue and not model.blocked:
                take(await q.get())
                model.get()
            else:
                model.blocked += 1
                tg.start_soon(blocked_getter)
        elif kind == "done" and in_flight:
            key = sorted(in_flight)[op[1] % len(in_flight)]
            in_flight.remove(key)
            q.done(key)
            model.done(key)
        elif kind == "add_after":
            if op[2] <= 0:
                owed.add(op[1])
            q.add_after(op[1], op[2])
            model.add_after(op[1], op[2])
        elif kind == "advance":
            clock.advance(op[1])
            before = len(model.released)
            model.advance(op[1])
            owed.update(model.released[before:])
        await settle()
        check()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(q.run)
            for op in ops:
                await step(op)
            # Quiesce: every timer fires, then work is finished until nothing is queued or in flight.
            await step(("advance", 100.0))
            while model.queue or in_flight:
                if model.queue and not model.blocked:
                    await step(("get", ""))
                else:
                    await step(("done", 0))
            assert not owed, f"keys added but never handed out again: {owed}"
            q.shutdown()  # releases the getters still blocked, and the delay loop
