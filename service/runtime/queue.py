"""The rate-limited work queue, with client-go's semantics (``util/workqueue``).

- A key is queued at most once (the dirty set).
- A key being processed is never handed to a second worker: an add during processing marks it dirty,
  and ``done`` queues it again.
- ``add_after`` keeps one waiting entry per key, at the earliest requested time.
- ``shutdown`` still hands out what is queued, then ``get`` raises ``ShutDown``; waiting entries are
  dropped. ``shutdown_with_drain`` also waits until nothing is being processed.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

import anyio

from service.runtime.clock import REAL_CLOCK, Clock
from service.runtime.metrics import RuntimeMetrics
from service.runtime.ratelimiters import RateLimiter, default_rate_limiter

K = TypeVar("K", bound=Hashable)

UNFINISHED_WORK_UPDATE_PERIOD = 0.5


class ShutDown(Exception):
    """The queue is shut down and has nothing left to hand out."""


class WorkQueue(Generic[K]):
    def __init__(
        self,
        name: str = "",
        *,
        rate_limiter: RateLimiter | None = None,
        clock: Clock = REAL_CLOCK,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.name = name
        self.clock = clock
        self.rate_limiter = rate_limiter or default_rate_limiter(clock=clock)
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._added_at: dict[K, float] = {}
        self._started_at: dict[K, float] = {}
        self._waiting: list[tuple[float, int, K]] = []
        self._ready_at: dict[K, float] = {}
        self._seq = itertools.count()
        self._shutting_down = False
        self._drain = False
        # One event per blocked getter, woken one at a time: waking every idle worker for each key would
        # make K-1 of them loop back to sleep.
        self._getters: deque[anyio.Event] = deque()
        self._waiting_changed = anyio.Event()
        self._processing_changed = anyio.Event()
        self._drainers = 0
        # Only named queues report, as in client-go.
        self._metrics = metrics if name else None
        if self._metrics:
            labels = (name, name)
            self._m_depth = self._metrics.depth.labels(name, name, "")
            self._m_adds = self._metrics.adds.labels(*labels)
            self._m_queue_duration = self._metrics.queue_duration.labels(*labels)
            self._m_work_duration = self._metrics.work_duration.labels(*labels)
            self._m_unfinished = self._metrics.unfinished.labels(*labels)
            self._m_longest = self._metrics.longest.labels(*labels)
            self._m_retries = self._metrics.retries.labels(*labels)

    # ---------------------------------------------------------------- basic queue
    def add(self, item: K) -> None:
        if self._shutting_down or item in self._dirty:
            return
        self._dirty.add(item)
        self._added_at.setdefault(item, self.clock.now())
        if self._metrics:
            self._m_adds.inc()
            self._m_depth.inc()
        if item in self._processing:
            return  # ``done`` puts it back on the queue
        self._queue.append(item)
        self._wake_getters()

    def _wake_getters(self) -> None:
        """Wake one blocked getter (the queue gained one key)."""
        while self._getters:
            event = self._getters.popleft()
            if not event.is_set():
                event.set()
                return

    def _wake_all_getters(self) -> None:
        while self._getters:
            self._getters.popleft().set()

    async def get(self) -> K:
        """The next key to process; waits while the queue is empty. Raises ``ShutDown`` when done.

        Always yields to the event loop first: a worker whose reconciles never await would otherwise take
        every queued key in one step and starve the watches, probes and lease renewals meanwhile."""
        await anyio.lowlevel.checkpoint()
        while not self._queue:
            if self._shutting_down:
                raise ShutDown
            event = anyio.Event()
            self._getters.append(event)
            try:
                await event.wait()
            except BaseException:
                if event.is_set():
                    self._wake_getters()  # woken for a key, but cancelled: pass the key on
                else:
                    self._getters.remove(event)
                raise
        item = self._queue.popleft()
        self._dirty.discard(item)
        self._processing.add(item)
        now = self.clock.now()
        self._started_at[item] = now
        added = self._added_at.pop(item, now)
        if self._metrics:
            self._m_depth.dec()
            self._m_queue_duration.observe(max(0.0, now - added))
        return item

    def done(self, item: K) -> None:
        if item not in self._processing:
            return
        self._processing.discard(item)
        started = self._started_at.pop(item, None)
        if self._metrics and started is not None:
            self._m_work_duration.observe(max(0.0, self.clock.now() - started))
        if item in self._dirty:
            self._queue.append(item)
            self._wake_getters()
        if not self._processing:
            self._signal_drainers()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def processing(self) -> frozenset[K]:
        return frozenset(self._processing)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def shutdown(self) -> None:
        """Stop accepting keys; queued keys are still handed out. Releases any drain in progress."""
        self._shut_down(drain=False)

    async def shutdown_with_drain(self) -> None:
        """Shut down, then wait until every key handed out has been marked done.

        As client-go: a plain ``shutdown`` meanwhile releases every drain waiter; another drain does not.
        """
        self._shut_down(drain=True)
        self._drainers += 1
        try:
            while self._processing and self._drain:
                changed = self._processing_changed
                await changed.wait()
        finally:
            self._drainers -= 1

    def _shut_down(self, *, drain: bool) -> None:
        self._shutting_down = True
        self._drain = drain
        self._waiting.clear()
        self._ready_at.clear()
        self._wake_all_getters()
        self._waiting_changed.set()
        self._signal_drainers()

    def _signal_drainers(self) -> None:
        if self._drainers:  # an Event costs microseconds: make one only when someone waits
            self._processing_changed.set()
            self._processing_changed = anyio.Event()

    # ---------------------------------------------------------------- delaying queue
    def add_after(self, item: K, delay: float) -> None:
        if self._shutting_down:
            return
        if self._metrics:
            self._m_retries.inc()
        if delay <= 0:
            self.add(item)
            return
        ready = self.clock.now() + delay
        current = self._ready_at.get(item)
        if current is not None and current <= ready:
            return  # never postpone an entry that is already waiting
        self._ready_at[item] = ready
        heapq.heappush(self._waiting, (ready, next(self._seq), item))
        self._waiting_changed.set()

    @property
    def waiting(self) -> int:
        return len(self._ready_at)

    def next_ready_at(self) -> float | None:
        self._drop_stale()
        return self._waiting[0][0] if self._waiting else None

    def _drop_stale(self) -> None:
        while self._waiting and self._ready_at.get(self._waiting[0][2]) != self._waiting[0][0]:
            heapq.heappop(self._waiting)

    def _release_ready(self) -> None:
        now = self.clock.now()
        while True:
            self._drop_stale()
            if not self._waiting or self._waiting[0][0] > now:
                return
            _, _, item = heapq.heappop(self._waiting)
            del self._ready_at[item]
            self.add(item)

    # ---------------------------------------------------------------- rate limiting
    def add_rate_limited(self, item: K) -> None:
        self.add_after(item, self.rate_limiter.when(item))

    def forget(self, item: K) -> None:
        self.rate_limiter.forget(item)

    def num_requeues(self, item: K) -> int:
        return self.rate_limiter.num_requeues(item)

    # ---------------------------------------------------------------- background
    async def run(self) -> None:
        """Release waiting keys when their time comes, and refresh the in-flight gauges (until shutdown)."""
        async with anyio.create_task_group() as tg:
            if self._metrics:
                tg.start_soon(self._update_unfinished)
            while not self._shutting_down:
                self._release_ready()
                ready = self.next_ready_at()
                changed = self._waiting_changed = anyio.Event()
                if ready is None:
                    await changed.wait()
                    continue
                await self._sleep_until_or(ready, changed)
            tg.cancel_scope.cancel()

    async def _sleep_until_or(self, deadline: float, changed: anyio.Event) -> None:
        """Sleep until ``deadline`` on the queue's clock, or until ``changed`` fires, whichever is first."""
        async with anyio.create_task_group() as tg:

            async def watch_changed() -> None:
                await changed.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch_changed)
            await self.clock.sleep_until(deadline)
            tg.cancel_scope.cancel()

    def update_unfinished_work(self) -> None:
        if not self._metrics:
            return
        now = self.clock.now()
        ages = [now - t for t in self._started_at.values()]
        self._m_unfinished.set(sum(ages))
        self._m_longest.set(max(ages, default=0.0))

    async def _update_unfinished(self) -> None:
        while True:
            self.update_unfinished_work()
            await self.clock.sleep_until(self.clock.now() + UNFINISHED_WORK_UPDATE_PERIOD)
