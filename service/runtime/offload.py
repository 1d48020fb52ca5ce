"""Slow I/O off the workers: a reconcile hands work that can hang (a call to another service) to a
background pool, waits for it only briefly, and is woken when it ends.

Why: workers are few (``--workers``), and a worker that waits on a dependency that never answers is a
worker no other object can have. With a registry that accepts connections and never replies, two workers
waiting out a 30 s timeout each stall every unrelated workload behind them. Here a reconcile asks
``collect(key, …)``:

- a finished outcome for ``key`` is returned (and forgotten: the next ask starts the work again);
- otherwise the work is started (once per key), and the reconcile waits for it up to a short inline
  budget, so that the common fast case costs no extra reconcile. If it does not end by then, ``collect``
  returns None and the reconcile returns; the job's end calls ``wake`` (which enqueues the request again),
  and that reconcile collects the outcome.

Work runs in *lanes* (one per dependency, e.g. a registry host), each with its own concurrency limit, so
one slow dependency cannot take the pool from the others. A lane that has a job running longer than the
inline budget is slow: reconciles do not wait inline on it at all. Outcomes nobody collects (the object
was deleted meanwhile) are dropped after ``keep`` seconds.

The pool runs as a manager runnable (``run``) while this replica leads; its jobs are cancelled with it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
from prometheus_client import CollectorRegistry

from service.metrics import Gauge
from service.runtime.clock import REAL_CLOCK, Clock

log = logging.getLogger("service.runtime.offload")

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """How a job ended: its value, or the exception it raised."""

    value: T | None = None
    error: Exception | None = None

    def get(self) -> T:
        """The value, or the job's exception raised again."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


@dataclass(eq=False)  # jobs are identities, kept in sets
class _Job:
    lane: str
    wake: Callable[[], None]
    started: float | None = None  # on the clock, once it holds a place in its lane
    waiting: int = 0  # askers waiting inline: they read the outcome themselves, no wake needed
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: Outcome[Any] | None = None
    finished: float = 0.0


class NotRunning(RuntimeError):
    """``collect`` was called while the pool is not running (not leading, or stopped)."""


class Offload:
    def __init__(
        self,
        name: str,
        *,
        per_lane: int = 8,
        inline: float = 0.25,
        keep: float = 600.0,
        registry: CollectorRegistry | None = None,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        if per_lane < 1:
            raise ValueError(f"per_lane must be at least 1, got {per_lane}")
        self.name = name
        self.per_lane = per_lane
        self.inline = inline
        self.keep = keep
        self.clock = clock
        self._jobs: dict[Hashable, _Job] = {}
        self._lanes: dict[str, anyio.Semaphore] = {}
        self._running: dict[str, set[_Job]] = {}  # per lane, at most ``per_lane`` each
        self._finished: deque[tuple[float, Hashable, _Job]] = deque()  # in the order they ended
        self._group: anyio.abc.TaskGroup | None = None
        self._gauge = (
            Gauge(
                "offload_jobs",
                "Background jobs (slow I/O handed off by reconciles) by pool, lane and state",
                ("pool", "lane", "state"),
                registry=registry,
            )
            if registry is not None
            else None
        )

    # --------------------------------------------------------------- running
    async def run(self) -> None:
        """Run jobs until cancelled; pending jobs are cancelled and forgotten with it."""
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                await anyio.sleep_forever()
        finally:
            self._group = None
            self._jobs.clear()
            self._running.clear()
            self._finished.clear()
            if self._gauge is not None:
                self._gauge.clear()

    @property
    def running(self) -> bool:
        return self._group is not None

    # --------------------------------------------------------------- the one call
    async def collect(
        self,
        key: Hashable,
        lane: str,
        work: Callable[[], Awaitable[T]],
        wake: Callable[[], None],
    ) -> Outcome[T] | None:
        """The outcome of ``work`` for ``key``, if it ends within the inline budget (or ended since the last
        ask); else None, and ``wake`` is called when it ends."""
        self._expire()
        job = self._jobs.get(key)
        if job is None:
            if self._group is None:
                raise NotRunning(f"offload pool {self.name} is not running")
            job = self._jobs[key] = _Job(lane, wake)
            self._count(lane, "queued", 1)
            self._group.start_soon(self._run_job, key, job, work)
        else:
            job.wake = wake  # the latest asker is the one to wake
        if job.outcome is None and not self._slow(job.lane):
            job.waiting += 1
            try:
                with anyio.move_on_after(self.inline):
                    await job.done.wait()
            finally:
                job.waiting -= 1
        if job.outcome is None:
            return None
        del self._jobs[key]
        outcome: Outcome[T] = job.outcome
        job.outcome = None  # ``_finished`` still names the job until it expires; not its value
        return outcome

    # --------------------------------------------------------------- internals
    async def _run_job(self, key: Hashable, job: _Job, work: Callable[[], Awaitable[Any]]) -> None:
        lane = self._lanes.setdefault(job.lane, anyio.Semaphore(self.per_lane))
        running = self._running.setdefault(job.lane, set())
        async with lane:
            job.started = self.clock.now()
            running.add(job)
            self._count(job.lane, "queued", -1)
            self._count(job.lane, "running", 1)
            try:
                outcome: Outcome[Any] = Outcome(value=await work())
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # the asker decides what a failure means
                outcome = Outcome(error=exc)
            finally:
                running.discard(job)
                self._count(job.lane, "running", -1)
        job.outcome, job.finished = outcome, self.clock.now()
        self._finished.append((job.finished, key, job))
        job.done.set()
        if self._jobs.get(key) is job and not job.waiting:
            try:
                job.wake()
            except Exception:  # a broken waker must not take the pool down
                log.exception("offload: waking the asker of %r failed", key, extra={"pool": self.name})

    def _slow(self, lane: str) -> bool:
        """A job of this lane has been running for longer than the inline budget: do not wait inline."""
        limit = self.clock.now() - self.inline
        return any(j.started is not None and j.started < limit for j in self._running.get(lane, ()))

    def _expire(self) -> None:
        limit = self.clock.now() - self.keep
        while self._finished and self._finished[0][0] < limit:
            _, key, job = self._finished.popleft()
            if self._jobs.get(key) is job:  # not collected (collected ones are gone or replaced)
                del self._jobs[key]

    def _count(self, lane: str, state: str, delta: int) -> None:
        if self._gauge is not None:
            self._gauge.labels(self.name, lane, state).inc(delta)

    def pending(self, lane: str | None = None) -> int:
        """Jobs queued or running (in one lane, or in all)."""
        return sum(1 for j in self._jobs.values() if j.outcome is None and lane in (None, j.lane))
