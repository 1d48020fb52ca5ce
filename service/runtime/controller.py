"""Controllers: watched sources mapped to requests, a rate-limited queue, and N async workers.

controller-runtime's model: informer events pass the predicates, become ``Request``s (the object
itself, its owners, or any map function), and are queued; workers reconcile one request at a time per
key. The outcome decides what happens next (``service.runtime.reconcile.judge`` classifies exceptions):

| outcome                           | queue                         | ``reconcile_total{result}`` |
| an error                          | rate-limited requeue          | error                       |
| ``TerminalError``                 | dropped (not retried)         | error                       |
| ``Result(requeue_after=s)``       | forget, then add after ``s``  | requeue_after               |
| ``Result(requeue=True)``          | rate-limited requeue          | requeue                     |
| 409 Conflict / AlreadyExists      | rate-limited requeue          | requeue (logged at info)    |
| ``Requeue(after=s)`` raised       | as ``Result``, logged at info | requeue / requeue_after     |
| ``None`` / ``Result()``           | forget                        | success                     |
| the gate closed (see below)       | rate-limited requeue          | not counted                 |

An unexpected error (a bug) logs its traceback once per object and error, not on every retry. A
reconcile runs in a ``ReconcileContext`` with the deadline of the reconcile timeout; it is cancelled only
a grace period after that deadline, so that a reconciler watching ``remaining()`` can still record why it
stopped, and is then retried like an error. No exception ever kills a worker.

The gate says whether this replica may reconcile at all (the manager's: it holds the leader lease and
has renewed it within the renew deadline). A worker checks it before it starts a reconcile; inside one,
every write checks it too (``service.kube.fence``), so a process frozen mid-reconcile that resumes after
its lease has gone sends nothing more; and a reconcile that ends with the gate closed was not this
replica's to finish: its outcome is neither counted nor acted on, the key goes back to the queue (for the
next leader's list, or for this replica should the renewal still succeed).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from service.kube.errors import NotFound
from service.kube.fence import guarded_writes
from service.kube.resources import Resource
from service.runtime.clock import REAL_CLOCK, Clock
from service.runtime.informer import FuncHandler, Informer
from service.runtime.metrics import RESULTS, RuntimeMetrics
from service.runtime.queue import ShutDown, WorkQueue
from service.runtime.ratelimiters import RateLimiter
from service.runtime.reconcile import (
    Reconcile,
    ReconcileContext,
    Request,
    Result,
    judge,
    running,
)
from service.runtime.store import Obj

log = logging.getLogger("service.runtime.controller")

CACHE_SYNC_TIMEOUT = 120.0


Mapper = Callable[[Obj], Iterable[Request]]


def new_reconcile_id() -> str:
    """A random version-4 UUID, as controller-runtime gives each reconcile; from ``random``, not
    ``uuid.uuid4``: an ID to find a reconcile's log lines needs no secrecy, and the OS entropy read cost a
    per-cent of the service's CPU."""
    digits = f"{random.getrandbits(128):032x}"
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


class Predicate(Protocol):
    def create(self, obj: Obj) -> bool: ...

    def update(self, old: Obj, new: Obj) -> bool: ...

    def delete(self, obj: Obj) -> bool: ...


# ------------------------------------------------------------------------ mappers
def enqueue_object(obj: Obj) -> Iterable[Request]:
    return (Request.for_object(obj),)


def enqueue_owner(
    group: str, kind: str, *, only_controller: bool = True, owner_namespaced: bool = True
) -> Mapper:
    """Requests for the owners of kind ``group/kind`` named by an object's ownerReferences.

    As controller-runtime's EnqueueRequestForOwner: by default only the controller reference counts;
    the version in ``apiVersion`` is ignored.
    """

    def mapper(obj: Obj) -> Iterable[Request]:
        meta = obj["metadata"]
        namespace = meta.get("namespace", "") if owner_namespaced else ""
        out = []
        for ref in meta.get("ownerReferences") or ():
            ref_group = ref.get("apiVersion", "").rpartition("/")[0]
            if only_controller and not ref.get("controller"):
                continue
            if ref_group == group and ref.get("kind") == kind:
                out.append(Request(namespace, ref["name"]))
            if only_controller:
                break  # only the first controller reference counts
        return out

    return mapper


# ------------------------------------------------------------------------ predicates
class Funcs:
    """A predicate from optional functions; an event type without a function passes."""

    def __init__(
        self,
        *,
        create: Callable[[Obj], bool] | None = None,
        update: Callable[[Obj, Obj], bool] | None = None,
        delete: Callable[[Obj], bool] | None = None,
    ) -> None:
        self._create, self._update, self._delete = create, update, delete

    def create(self, obj: Obj) -> bool:
        return self._create(obj) if self._create else True

    def update(self, old: Obj, new: Obj) -> bool:
        return self._update(old, new) if self._update else True

    def delete(self, obj: Obj) -> bool:
        return self._delete(obj) if self._delete else True


def _meta(obj: Obj, field: str) -> Any:
    return obj["metadata"].get(field)


GENERATION_CHANGED = Funcs(update=lambda old, new: _meta(old, "generation") != _meta(new, "generation"))
RESOURCE_VERSION_CHANGED = Funcs(
    update=lambda old, new: _meta(old, "resourceVersion") != _meta(new, "resourceVersion")
)
LABELS_CHANGED = Funcs(update=lambda old, new: _meta(old, "labels") != _meta(new, "labels"))
ANNOTATIONS_CHANGED = Funcs(update=lambda old, new: _meta(old, "annotations") != _meta(new, "annotations"))


def changed(view: Callable[[Obj], Any]) -> Funcs:
    """Updates pass when ``view`` (what a reconciler reads of the object) differs between old and new, and
    on a resync (the same resourceVersion), which must still reach the reconciler; the informer delivers an
    object a relist found changed as a resync too, so that changes undone while the watch was away pass.

    For a controller that acts on a few fields of an object others write often: every write it does not
    act on would otherwise cost a reconcile that does nothing. Creates and deletes pass."""

    def update(old: Obj, new: Obj) -> bool:
        return bool(_meta(old, "resourceVersion") == _meta(new, "resourceVersion") or view(old) != view(new))

    return Funcs(update=update)


class AnyOf:
    def __init__(self, *predicates: Predicate) -> None:
        self.predicates = predicates

    def create(self, obj: Obj) -> bool:
        return any(p.create(obj) for p in self.predicates)

    def update(self, old: Obj, new: Obj) -> bool:
        return any(p.update(old, new) for p in self.predicates)

    def delete(self, obj: Obj) -> bool:
        return any(p.delete(obj) for p in self.predicates)


# ------------------------------------------------------------------------ the controller
class GateClosed(Exception):
    """A write refused because this replica may not reconcile any more (see the module docstring)."""


class Controller:
    def __init__(
        self,
        name: str,
        reconcile: Reconcile,
        *,
        max_concurrent: int = 1,
        rate_limiter: RateLimiter | None = None,
        reconcile_timeout: float | None = None,
        cache_sync_timeout: float = CACHE_SYNC_TIMEOUT,
        metrics: RuntimeMetrics | None = None,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"controller {name}: max_concurrent must be at least 1, not {max_concurrent}")
        self.name = name
        self.reconcile = reconcile
        # The resource this controller reconciles (set by the builder's ``for_``): a 404 about the object
        # itself means it went meanwhile, which is not a failure.
        self.primary: Resource | None = None
        self.max_concurrent = max_concurrent
        self.reconcile_timeout = reconcile_timeout
        self.cache_sync_timeout = cache_sync_timeout
        self.metrics = metrics
        self.clock = clock
        self.queue: WorkQueue[Request] = WorkQueue(
            name, rate_limiter=rate_limiter, clock=clock, metrics=metrics
        )
        self.informers: list[Informer] = []
        self._stopping = False
        self._traced: dict[Request, str] = {}  # the last error whose traceback was logged, per object
        self.started = anyio.Event()
        self.gate: Callable[[], bool] = lambda: True  # may this replica reconcile now? (set by the manager)
        self._series = _Series.of(metrics, name) if metrics else None
        if metrics:
            metrics.init_controller(name, max_concurrent)

    # --------------------------------------------------------------- sources
    def watch(
        self,
        informers: Informer | Sequence[Informer],
        mapper: Mapper = enqueue_object,
        predicates: Sequence[Predicate] = (),
    ) -> None:
        """Map every event of these informers that passes ``predicates`` to requests on this queue."""
        for informer in [informers] if isinstance(informers, Informer) else informers:
            if informer not in self.informers:
                self.informers.append(informer)
            informer.add_handler(self._handler(mapper, predicates))

    def _handler(self, mapper: Mapper, predicates: Sequence[Predicate]) -> FuncHandler:
        def enqueue(objs: Iterable[Obj]) -> None:
            for request in {r for obj in objs for r in mapper(obj)}:
                self.queue.add(request)

        def on_add(obj: Obj, initial: bool) -> None:
            if all(p.create(obj) for p in predicates):
                enqueue((obj,))

        def on_update(old: Obj, new: Obj) -> None:
            if all(p.update(old, new) for p in predicates):
                enqueue((old, new))  # both: an owner that lost a child is told too

        def on_delete(obj: Obj, state_unknown: bool) -> None:
            if all(p.delete(obj) for p in predicates):
                enqueue((obj,))

        return FuncHandler(on_add, on_update, on_delete)

    def enqueue(self, request: Request, after: float = 0.0) -> None:
        if after > 0:
            self.queue.add_after(request, after)
        else:
            self.queue.add(request)

    # --------------------------------------------------------------- running
    @property
    def synced(self) -> bool:
        return all(i.has_synced for i in self.informers)

    async def run(self) -> None:
        """Wait for the caches, then reconcile until ``stop`` is called and in-flight work is done."""
        with anyio.fail_after(self.cache_sync_timeout):
            for informer in self.informers:
                await informer.wait_synced()
        log.info("starting workers", extra={"controller": self.name, "workers": self.max_concurrent})
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.queue.run)
            async with anyio.create_task_group() as workers:
                for i in range(self.max_concurrent):
                    workers.start_soon(self._worker, name=f"{self.name} worker {i}")
                self.started.set()
            tg.cancel_scope.cancel()
        log.info("workers stopped", extra={"controller": self.name})

    async def stop(self, grace: float) -> bool:
        """Stop taking new work; wait up to ``grace`` seconds for in-flight reconciles. True if they finished."""
        self._stopping = True
        with anyio.move_on_after(grace) as scope:
            await self.queue.shutdown_with_drain()
        self.queue.shutdown()
        return not scope.cancelled_caught

    async def _worker(self) -> None:
        while True:
            try:
                request = await self.queue.get()
            except ShutDown:
                return
            if self._stopping:
                # Queued keys are not started once stopping (controller-runtime's priority-queue behaviour);
                # the next leader reconciles them anyway from its initial list.
                self.queue.done(request)
                continue
            if not self.gate():
                self.queue.add_rate_limited(request)
                self.queue.done(request)
                continue
            try:
                await self.process(request)
            except Exception:  # a bug in the outcome handling (a rate limiter, a metric) must not kill us
                log.exception("worker: handling %s failed", request, extra={"controller": self.name})

    def _check_gate(self) -> None:
        if not self.gate():
            raise GateClosed(
                f"controller {self.name}: this replica may not write any more (it no longer leads)"
            )

    async def _call(self, request: Request) -> tuple[Result | None, Exception | None]:
        try:
            with guarded_writes(self._check_gate):
                return await self.reconcile(request), None
        except Exception as exc:  # TerminalError included: the caller sorts them out
            return None, exc

    async def process(self, request: Request) -> None:
        """Reconcile one request and act on the outcome; never raises (but for cancellation)."""
        series = self._series
        if series:
            series.active.inc()
        reconcile_id = new_reconcile_id()
        # controller-runtime's keys; ``name_`` prints as ``name`` (see service.runtime.logs).
        fields = {
            "controller": self.name,
            "namespace": request.namespace,
            "name_": request.name,
            "reconcileID": reconcile_id,
        }
        deadline = time.monotonic() + self.reconcile_timeout if self.reconcile_timeout else None
        context = ReconcileContext(self.name, request, reconcile_id, deadline, fields)
        started = time.perf_counter()
        outcome: str | None = "error"
        try:
            timed_out = False
            result: Result | None = None
            error: Exception | None = None
            with running(context):
                if self.reconcile_timeout:
                    with anyio.move_on_after(
                        self.reconcile_timeout + _grace(self.reconcile_timeout)
                    ) as scope:
                        result, error = await self._call(request)
                    if scope.cancelled_caught:
                        timed_out = True
                        error = TimeoutError(f"reconcile exceeded its {self.reconcile_timeout} s timeout")
                else:
                    result, error = await self._call(request)
            if not self.gate():
                outcome = None
                log.info("reconcile abandoned: this replica may not reconcile any more", extra=fields)
                self.queue.add_rate_limited(request)
            elif error is not None:
                outcome = self._failed(request, error, timed_out, fields)
            else:
                self._traced.pop(request, None)
                if result is not None and result.requeue_after > 0:
                    outcome = "requeue_after"
                    self.queue.forget(request)
                    self.queue.add_after(request, result.requeue_after)
                elif result is not None and result.requeue:
                    outcome = "requeue"
                    self.queue.add_rate_limited(request)
                else:
                    outcome = "success"
                    self.queue.forget(request)
        finally:
            if series:
                if outcome is not None:
                    series.total[outcome].inc()
                    series.time.observe(time.perf_counter() - started)
                series.active.dec()
            self.queue.done(request)

    def _failed(self, request: Request, error: Exception, timed_out: bool, fields: Mapping[str, Any]) -> str:
        """Log, count and requeue a failed reconcile as ``judge`` says; the ``result`` label to count."""
        if self._vanished(request, error):
            log.info("object is gone: nothing to reconcile (%s)", error, extra=fields)
            self._traced.pop(request, None)
            self.queue.forget(request)
            return "success"
        verdict = judge(error, timed_out=timed_out)
        series = self._series
        if verdict.kind == "requeue":
            log.log(verdict.level, "reconcile requeued: %s", error, extra=fields)
            self._traced.pop(request, None)
            if verdict.after > 0:
                self.queue.forget(request)
                self.queue.add_after(request, verdict.after)
                return "requeue_after"
            self.queue.add_rate_limited(request)
            return "requeue"
        # The traceback once per object and error: a bug met on every retry would otherwise fill the log.
        signature = f"{type(error).__qualname__}: {error}"
        traceback = verdict.traceback and self._traced.get(request) != signature
        if verdict.traceback:
            self._traced[request] = signature
        if verdict.kind == "terminal":
            log.log(verdict.level, "reconcile failed permanently: %s", error, extra=fields)
            if series:
                series.terminal.inc()
        else:
            log.log(
                verdict.level,
                "reconcile failed: %s",
                error,
                extra=fields,
                exc_info=error if traceback else None,
            )
            if timed_out and series:
                series.timeouts.inc()
            self.queue.add_rate_limited(request)
        if series:
            series.errors.inc()
        return "error"

    def _vanished(self, request: Request, error: Exception) -> bool:
        """Whether ``error`` is the API server's 404 for the reconciled object itself (its details name
        the primary resource and the request's name): a reconcile that raced the object's deletion."""
        details = error.details if isinstance(error, NotFound) else None
        if self.primary is None or not details:
            return False
        return (
            details.get("name") == request.name
            and details.get("kind") == self.primary.plural
            and (details.get("group") or "") == self.primary.group
        )


def _grace(timeout: float) -> float:
    """How long past its deadline a reconcile may run to record why it stopped, before it is cancelled."""
    return min(5.0, timeout / 4)


@dataclass(frozen=True)
class _Series:
    """One controller's metric children, looked up once: ``labels()`` costs microseconds per call."""

    active: Any
    errors: Any
    terminal: Any
    timeouts: Any
    time: Any
    total: dict[str, Any]

    @classmethod
    def of(cls, m: RuntimeMetrics, name: str) -> _Series:
        return cls(
            m.active_workers.labels(name),
            m.reconcile_errors.labels(name),
            m.terminal_errors.labels(name),
            m.timeouts.labels(name),
            m.reconcile_time.labels(name),
            {result: m.reconcile_total.labels(name, result) for result in RESULTS},
        )
