"""Controllers: events to requests, predicates, the reconcile outcome table, timeouts, worker safety, metrics,
start and stop (machinery.md §2.2, §4), and convergence of 1,000 objects against a faulty emulator."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.kube.client import Page
from service.kube.resources import CONFIG_MAP
from service.runtime import (
    ANNOTATIONS_CHANGED,
    GENERATION_CHANGED,
    LABELS_CHANGED,
    RESOURCE_VERSION_CHANGED,
    AnyOf,
    Controller,
    Funcs,
    ReconcileContext,
    Request,
    Requeue,
    Result,
    TerminalError,
    changed,
    current,
    enqueue_object,
    enqueue_owner,
)
from service.runtime.clock import FakeClock
from service.runtime.informer import Informer
from service.runtime.metrics import RESULTS, RuntimeMetrics
from service.runtime.store import Obj
from simcluster.faults import FaultRule, Faults
from simcluster.server import running_apiserver
from tests.helpers import fast_client
from tests.runtime.conftest import DEADLINE, RecordingBackoff, eventually, settle

pytestmark = pytest.mark.anyio

KORIFI = "korifi.cloudfoundry.org"


def obj(
    name: str,
    namespace: str = "ns",
    *,
    owners: list[Obj] | None = None,
    generation: int = 1,
    rv: str = "1",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "generation": generation, "resourceVersion": rv}
    if owners is not None:
        meta["ownerReferences"] = owners
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}


def ref(name: str, kind: str = "BuildWorkload", api_version: str = f"{KORIFI}/v1alpha1", **extra: Any) -> Obj:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": f"uid-{name}", **extra}


class StubClient:
    """Lists ``items`` once ``release`` is set; its watches stay open and silent."""

    def __init__(self, items: list[Obj] | None = None, *, released: bool = True) -> None:
        self.items = items or []
        self.release = anyio.Event()
        if released:
            self.release.set()

    async def pages(self, res: Any, namespace: str | None = None, **kwargs: Any) -> AsyncIterator[Page]:
        await self.release.wait()
        yield Page([dict(i) for i in self.items], "10")

    @asynccontextmanager
    async def watch(self, res: Any, namespace: str | None = None, **kwargs: Any) -> AsyncIterator[Silent]:
        yield Silent()


class Silent:
    def __aiter__(self) -> Silent:
        return self

    async def __anext__(self) -> tuple[str, Obj]:
        await anyio.sleep_forever()
        raise StopAsyncIteration


def informer_for(items: list[Obj] | None = None, *, released: bool = True) -> Informer:
    return Informer(StubClient(items, released=released), CONFIG_MAP)


def emit(informer: Informer, event: str, *args: Any) -> None:
    """Deliver one notification to every handler, as the informer does."""
    for handler in informer.handlers:
        getattr(handler, f"on_{event}")(*args)


async def queued(controller: Controller) -> set[Request]:
    """Take (and finish) everything on the controller's queue."""
    out = set()
    with anyio.fail_after(1):
        while len(controller.queue):
            request = await controller.queue.get()
            controller.queue.done(request)
            out.add(request)
    return out


async def noop(request: Request) -> None:
    return None


# ---------------------------------------------------------------------------------------------- mapping
def test_enqueue_object_maps_to_namespace_and_name() -> None:
    assert list(enqueue_object(obj("a", "ns1"))) == [Request("ns1", "a")]
    cluster_scoped = {"metadata": {"name": "node"}}
    assert list(enqueue_object(cluster_scoped)) == [Request("", "node")]
    assert str(Request("ns1", "a")) == "ns1/a" and str(Request("", "node")) == "node"


def test_enqueue_owner_takes_only_the_first_controller_reference_by_default() -> None:
    mapper = enqueue_owner(KORIFI, "BuildWorkload")
    child = obj(
        "child",
        owners=[
            ref("plain-owner"),  # not a controller reference
            ref("the-controller", controller=True),
            ref("second-controller", controller=True),  # only the first controller reference counts
        ],
    )
    assert list(mapper(child)) == [Request("ns", "the-controller")]
    other_kind_first = obj("c", owners=[ref("d", "Deployment", "apps/v1", controller=True), ref("bw")])
    assert list(mapper(other_kind_first)) == []  # the controller is of another kind
    assert list(mapper(obj("orphan"))) == []


def test_enqueue_owner_every_owner_when_not_only_controller() -> None:
    mapper = enqueue_owner(KORIFI, "BuildWorkload", only_controller=False)
    child = obj(
        "child",
        owners=[
            ref("a"),
            ref("b", controller=True),
            ref("d", "Deployment", "apps/v1"),
            ref("c", api_version=f"{KORIFI}/v1"),
            ref("e", api_version="other.io/v1alpha1"),  # same kind, another group
        ],
    )
    assert sorted(mapper(child)) == [Request("ns", "a"), Request("ns", "b"), Request("ns", "c")]


def test_enqueue_owner_ignores_the_version_and_handles_core_and_cluster_scoped_owners() -> None:
    v1 = obj("x", owners=[ref("bw", api_version=f"{KORIFI}/v1", controller=True)])
    assert list(enqueue_owner(KORIFI, "BuildWorkload")(v1)) == [Request("ns", "bw")]
    core = obj("x", owners=[ref("cfg", "ConfigMap", "v1", controller=True)])
    assert list(enqueue_owner("", "ConfigMap")(core)) == [Request("ns", "cfg")]
    assert list(enqueue_owner("apps", "ConfigMap")(core)) == []
    node_owned = obj("x", owners=[ref("n1", "Node", "v1", controller=True)])
    assert list(enqueue_owner("", "Node", owner_namespaced=False)(node_owned)) == [Request("", "n1")]


async def test_events_become_requests_on_the_queue() -> None:
    controller = Controller("c", noop)
    informer = informer_for()
    controller.watch(informer)
    assert controller.informers == [informer]
    emit(informer, "add", obj("a"), True)
    emit(informer, "update", obj("b", rv="1"), obj("b", rv="2"))
    emit(informer, "delete", obj("c"), True)
    emit(informer, "add", obj("a"), False)  # already queued: deduplicated
    assert len(controller.queue) == 3
    assert await queued(controller) == {Request("ns", "a"), Request("ns", "b"), Request("ns", "c")}


async def test_an_owner_update_enqueues_both_old_and_new_owners_once() -> None:
    controller = Controller("c", noop)
    informer = informer_for()
    controller.watch(informer, enqueue_owner(KORIFI, "BuildWorkload"))
    moved_old = obj("child", owners=[ref("old-owner", controller=True)])
    moved_new = obj("child", owners=[ref("new-owner", controller=True)], rv="2")
    emit(informer, "update", moved_old, moved_new)
    assert await queued(controller) == {Request("ns", "old-owner"), Request("ns", "new-owner")}
    same_old = obj("child", owners=[ref("owner", controller=True)])
    same_new = obj("child", owners=[ref("owner", controller=True)], rv="3")
    emit(informer, "update", same_old, same_new)
    assert len(controller.queue) == 1


async def test_one_informer_many_sources() -> None:
    controller = Controller("c", noop)
    informer = informer_for()
    controller.watch([informer], enqueue_object)
    controller.watch(informer, lambda o: [Request("ns", "fixed")])
    assert controller.informers == [informer]  # listed once
    emit(informer, "add", obj("a"), False)
    assert await queued(controller) == {Request("ns", "a"), Request("ns", "fixed")}


# ---------------------------------------------------------------------------------------------- predicates
def test_builtin_predicates() -> None:
    base = obj("a", generation=1, rv="1", labels={"x": "1"}, annotations={"y": "1"})
    status_only = obj("a", generation=1, rv="2", labels={"x": "1"}, annotations={"y": "1"})
    spec_change = obj("a", generation=2, rv="3", labels={"x": "1"}, annotations={"y": "1"})
    relabelled = obj("a", generation=1, rv="4", labels={"x": "2"}, annotations={"y": "1"})
    annotated = obj("a", generation=1, rv="5", labels={"x": "1"}, annotations={"y": "2"})

    assert not GENERATION_CHANGED.update(base, status_only)
    assert GENERATION_CHANGED.update(base, spec_change)
    assert RESOURCE_VERSION_CHANGED.update(base, status_only)
    assert not RESOURCE_VERSION_CHANGED.update(base, base)  # a resync
    assert LABELS_CHANGED.update(base, relabelled) and not LABELS_CHANGED.update(base, annotated)
    assert ANNOTATIONS_CHANGED.update(base, annotated) and not ANNOTATIONS_CHANGED.update(base, relabelled)
    for predicate in (GENERATION_CHANGED, RESOURCE_VERSION_CHANGED, LABELS_CHANGED, ANNOTATIONS_CHANGED):
        assert predicate.create(base) and predicate.delete(base)  # undefined event types pass

    by_labels = changed(lambda o: o["metadata"].get("labels"))
    assert by_labels.update(base, relabelled) and not by_labels.update(base, annotated)
    assert by_labels.update(base, base)  # a resync passes: the periodic re-look reaches the reconciler
    assert by_labels.create(base) and by_labels.delete(base)

    either = AnyOf(GENERATION_CHANGED, LABELS_CHANGED)
    assert either.update(base, relabelled) and either.update(base, spec_change)
    assert not either.update(base, annotated)
    only_big = Funcs(create=lambda o: o["metadata"]["name"] == "big")
    assert only_big.create(obj("big")) and not only_big.create(obj("small"))
    assert only_big.update(base, base) and only_big.delete(base)


async def test_predicates_filter_events_before_mapping() -> None:
    controller = Controller("c", noop)
    informer = informer_for()
    no_deletes = Funcs(delete=lambda o: False)
    controller.watch(informer, predicates=[GENERATION_CHANGED, no_deletes])
    emit(informer, "update", obj("status", generation=1), obj("status", generation=1, rv="2"))
    emit(informer, "update", obj("resync"), obj("resync"))
    emit(informer, "delete", obj("deleted"), False)
    assert len(controller.queue) == 0
    emit(informer, "update", obj("spec", generation=1), obj("spec", generation=2, rv="2"))
    emit(informer, "add", obj("new"), False)
    assert await queued(controller) == {Request("ns", "spec"), Request("ns", "new")}


# ---------------------------------------------------------------------------------------------- outcomes
Behaviour = Callable[[Request], Awaitable[Result | None]]


class Scripted:
    """A reconciler that runs the next behaviour of its script on each call."""

    def __init__(self, *script: Behaviour) -> None:
        self.script = list(script)
        self.calls: list[Request] = []

    async def __call__(self, request: Request) -> Result | None:
        self.calls.append(request)
        return await self.script.pop(0)(request)


def returns(result: Result | None) -> Behaviour:
    async def behave(request: Request) -> Result | None:
        return result

    return behave


def raises(exc: BaseException) -> Behaviour:
    async def behave(request: Request) -> Result | None:
        raise exc

    return behave


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"controller": "c", **labels})


def totals(registry: CollectorRegistry) -> dict[str, float | None]:
    return {r: metric(registry, "controller_runtime_reconcile_total", result=r) for r in RESULTS}


async def reconcile_once(controller: Controller, request: Request) -> None:
    controller.queue.add(request)
    assert await controller.queue.get() == request
    await controller.process(request)
    assert request not in controller.queue.processing  # always marked done


REQ = Request("ns", "a")


def controller_with(
    registry: CollectorRegistry, *script: Behaviour, **kwargs: Any
) -> tuple[Controller, FakeClock, Scripted]:
    clock = FakeClock()
    reconcile = Scripted(*script)
    controller = Controller("c", reconcile, metrics=RuntimeMetrics(registry), clock=clock, **kwargs)
    return controller, clock, reconcile


def fail_before(controller: Controller, times: int) -> None:
    """Record earlier failures of REQ in the rate limiter, as if it had been retried ``times`` times."""
    for _ in range(times):
        controller.queue.rate_limiter.when(REQ)


async def test_success_forgets_and_does_not_requeue(registry: CollectorRegistry) -> None:
    controller, _, _ = controller_with(registry, returns(None), returns(Result()))
    fail_before(controller, 2)
    await reconcile_once(controller, REQ)
    assert controller.queue.num_requeues(REQ) == 0
    assert len(controller.queue) == 0 and controller.queue.waiting == 0
    await reconcile_once(controller, REQ)
    assert totals(registry) == {"success": 2, "error": 0, "requeue": 0, "requeue_after": 0}
    assert metric(registry, "controller_runtime_reconcile_errors_total") == 0
    assert metric(registry, "controller_runtime_reconcile_time_seconds_count") == 2
    assert metric(registry, "controller_runtime_active_workers") == 0


async def test_a_conflict_is_a_quiet_rate_limited_requeue(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    from service.kube.errors import Conflict

    controller, _, _ = controller_with(registry, raises(Conflict("the object has been modified")))
    with caplog.at_level("INFO", logger="service.runtime.controller"):
        await reconcile_once(controller, REQ)
    assert controller.queue.num_requeues(REQ) == 1 and controller.queue.waiting == 1
    assert totals(registry) == {"success": 0, "error": 0, "requeue": 1, "requeue_after": 0}
    assert metric(registry, "controller_runtime_reconcile_errors_total") == 0
    assert [r.levelname for r in caplog.records if r.name == "service.runtime.controller"] == ["INFO"]


async def test_an_error_is_requeued_rate_limited_and_never_forgotten(registry: CollectorRegistry) -> None:
    controller, clock, _ = controller_with(registry, *[raises(RuntimeError("boom"))] * 3)
    for n in range(3):
        await reconcile_once(controller, REQ)
        assert controller.queue.num_requeues(REQ) == n + 1
        assert controller.queue.waiting == 1
        assert controller.queue.next_ready_at() == pytest.approx(clock.now() + 0.005)  # earliest kept
    assert totals(registry) == {"success": 0, "error": 3, "requeue": 0, "requeue_after": 0}
    assert metric(registry, "controller_runtime_reconcile_errors_total") == 3
    assert metric(registry, "controller_runtime_terminal_reconcile_errors_total") == 0


async def test_a_failed_reconcile_logs_controller_runtime_fields(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    from service.runtime.logs import JsonFormatter

    controller, _, _ = controller_with(registry, raises(RuntimeError("boom")))
    with caplog.at_level("ERROR", logger="service.runtime.controller"):
        await reconcile_once(controller, REQ)
    [record] = [r for r in caplog.records if r.name == "service.runtime.controller"]
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["level"] == "error" and "boom" in entry["msg"]
    assert (entry["controller"], entry["namespace"], entry["name"]) == ("c", "ns", "a")
    assert len(entry["reconcileID"]) == 36
    assert entry["logger"] == "service.runtime.controller"


async def test_the_error_backoff_grows_per_failure(registry: CollectorRegistry) -> None:
    controller, clock, reconcile = controller_with(
        registry, *[raises(RuntimeError("boom"))] * 4, returns(None)
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(controller.queue.run)
        controller.queue.add(REQ)
        for n in range(5):
            with anyio.fail_after(1):
                request = await controller.queue.get()
            await controller.process(request)
            if n < 4:
                assert controller.queue.next_ready_at() == pytest.approx(clock.now() + 0.005 * 2**n)
                clock.advance(0.005 * 2**n)
        assert controller.queue.num_requeues(REQ) == 0  # the success forgot the failures
        assert controller.queue.waiting == 0
        tg.cancel_scope.cancel()
    assert len(reconcile.calls) == 5


async def test_a_terminal_error_is_neither_requeued_nor_forgotten(registry: CollectorRegistry) -> None:
    controller, _, _ = controller_with(registry, raises(TerminalError("cannot ever work")))
    fail_before(controller, 2)
    await reconcile_once(controller, REQ)
    assert len(controller.queue) == 0 and controller.queue.waiting == 0
    assert controller.queue.num_requeues(REQ) == 2
    assert totals(registry)["error"] == 1
    assert metric(registry, "controller_runtime_reconcile_errors_total") == 1
    assert metric(registry, "controller_runtime_terminal_reconcile_errors_total") == 1


async def test_requeue_after_forgets_then_adds_after(registry: CollectorRegistry) -> None:
    controller, clock, _ = controller_with(
        registry, returns(Result(requeue_after=7.0)), returns(Result(requeue=True, requeue_after=3.0))
    )
    fail_before(controller, 2)
    await reconcile_once(controller, REQ)
    assert controller.queue.num_requeues(REQ) == 0
    assert controller.queue.waiting == 1 and len(controller.queue) == 0
    assert controller.queue.next_ready_at() == clock.now() + 7.0
    await reconcile_once(controller, REQ)  # requeue_after wins over requeue
    assert controller.queue.next_ready_at() == clock.now() + 3.0
    assert controller.queue.num_requeues(REQ) == 0
    assert totals(registry) == {"success": 0, "error": 0, "requeue": 0, "requeue_after": 2}


async def test_requeue_is_rate_limited_without_forget(registry: CollectorRegistry) -> None:
    controller, clock, _ = controller_with(registry, returns(Result(requeue=True)))
    fail_before(controller, 2)
    await reconcile_once(controller, REQ)
    assert controller.queue.num_requeues(REQ) == 3
    assert controller.queue.next_ready_at() == pytest.approx(clock.now() + 0.005 * 4)
    assert totals(registry) == {"success": 0, "error": 0, "requeue": 1, "requeue_after": 0}
    assert metric(registry, "controller_runtime_reconcile_errors_total") == 0


async def test_a_reconcile_timeout_cancels_counts_and_retries(registry: CollectorRegistry) -> None:
    cancelled = anyio.Event()

    async def hang(request: Request) -> Result | None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return None

    controller, clock, reconcile = controller_with(registry, hang, returns(None), reconcile_timeout=0.05)
    with anyio.fail_after(DEADLINE):
        await reconcile_once(controller, REQ)
    assert cancelled.is_set()
    assert metric(registry, "controller_runtime_reconcile_timeouts_total") == 1
    assert metric(registry, "controller_runtime_reconcile_errors_total") == 1
    assert totals(registry)["error"] == 1
    assert controller.queue.num_requeues(REQ) == 1 and controller.queue.waiting == 1
    async with anyio.create_task_group() as tg:  # the retry comes after the rate limiter's delay
        tg.start_soon(controller.queue.run)
        clock.advance(0.005)
        with anyio.fail_after(1):
            request = await controller.queue.get()
        await controller.process(request)
        tg.cancel_scope.cancel()
    assert reconcile.calls == [REQ, REQ]
    assert totals(registry)["success"] == 1
    assert metric(registry, "controller_runtime_reconcile_timeouts_total") == 1  # only when it fired


async def test_already_exists_is_a_stale_cache_and_requeued_quietly(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Two creators of one object, or a create for an object the cache has not seen yet: it heals."""
    from service.kube.errors import AlreadyExists

    controller, _, _ = controller_with(registry, raises(AlreadyExists('images "app" already exists')))
    with caplog.at_level("INFO", logger="service.runtime.controller"):
        await reconcile_once(controller, REQ)
    assert totals(registry) == {"success": 0, "error": 0, "requeue": 1, "requeue_after": 0}
    assert metric(registry, "controller_runtime_reconcile_errors_total") == 0
    assert [r.levelname for r in caplog.records if r.name == "service.runtime.controller"] == ["INFO"]


async def test_a_raised_requeue_is_not_an_error(registry: CollectorRegistry) -> None:
    controller, clock, _ = controller_with(
        registry, raises(Requeue("waits for its secret", after=4.0)), raises(Requeue("again"))
    )
    fail_before(controller, 2)
    await reconcile_once(controller, REQ)
    assert controller.queue.num_requeues(REQ) == 0  # a delayed requeue forgets the backoff
    assert controller.queue.next_ready_at() == clock.now() + 4.0
    await reconcile_once(controller, REQ)
    assert controller.queue.num_requeues(REQ) == 1
    assert totals(registry) == {"success": 0, "error": 0, "requeue": 1, "requeue_after": 1}
    assert metric(registry, "controller_runtime_reconcile_errors_total") == 0


async def test_a_bug_logs_its_traceback_once_per_object_and_error(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Retried every few seconds for hours, a bug would otherwise bury the log in one traceback."""
    controller, _, _ = controller_with(
        registry,
        *[raises(KeyError("status"))] * 3,
        raises(ValueError("another bug")),
        returns(None),
        raises(KeyError("status")),
    )
    with caplog.at_level("ERROR", logger="service.runtime.controller"):
        for _ in range(6):
            await reconcile_once(controller, REQ)
    records = [r for r in caplog.records if r.name == "service.runtime.controller"]
    assert len(records) == 5  # every failure is logged ...
    traced = [r.getMessage() for r in records if r.exc_info]
    # ... with its traceback the first time, when it changes, and again after a success in between
    assert traced == [
        "reconcile failed: 'status'",
        "reconcile failed: another bug",
        "reconcile failed: 'status'",
    ]
    assert metric(registry, "controller_runtime_reconcile_errors_total") == 5


async def test_an_error_marked_expected_logs_no_traceback(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    class RegistryDown(Exception):
        expected = True  # ordinary weather, as registry errors say of themselves

    controller, _, _ = controller_with(registry, raises(RegistryDown("registry.example.com: unreachable")))
    with caplog.at_level("ERROR", logger="service.runtime.controller"):
        await reconcile_once(controller, REQ)
    [record] = [r for r in caplog.records if r.name == "service.runtime.controller"]
    assert record.exc_info is None and "unreachable" in record.getMessage()


async def test_a_reconcile_knows_its_context_and_every_line_it_logs_carries_it(
    registry: CollectorRegistry,
) -> None:
    import io
    import logging

    from service.runtime.logs import setup_logging

    seen: list[ReconcileContext | None] = []
    logger = logging.getLogger("tests.some.reconciler")

    async def reconcile(request: Request) -> None:
        seen.append(current())
        logger.warning("looking at it")

    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("info", "json", stream)
    try:
        controller = Controller("c", reconcile, metrics=RuntimeMetrics(registry), reconcile_timeout=30.0)
        await reconcile_once(controller, REQ)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    [context] = seen
    assert context is not None and context.request == REQ and context.controller == "c"
    assert 29.0 < context.remaining() <= 30.0
    assert current() is None  # only inside the reconcile
    [line] = [orjson.loads(x) for x in stream.getvalue().splitlines() if "looking at it" in x]
    assert (line["controller"], line["namespace"], line["name"]) == ("c", "ns", "a")
    assert line["reconcileID"] == context.reconcile_id


async def test_a_timed_out_reconcile_gets_a_grace_period_to_record_why(registry: CollectorRegistry) -> None:
    """The deadline is the timeout; the cancellation comes a grace period later, so that a reconciler that
    watches ``remaining()`` can still write that it stopped (a status condition, an Event)."""
    recorded: list[str] = []

    async def careful(request: Request) -> None:
        context = current()
        assert context is not None
        with anyio.move_on_after(context.remaining()):
            await anyio.sleep_forever()  # the slow part
        await anyio.sleep(0.01)  # the write of why it stopped, inside the grace period
        recorded.append("stopped: out of time")
        raise TimeoutError("out of time")

    controller, _, _ = controller_with(registry, careful, reconcile_timeout=0.2)
    with anyio.fail_after(DEADLINE):
        await reconcile_once(controller, REQ)
    assert recorded == ["stopped: out of time"]
    assert metric(registry, "controller_runtime_reconcile_errors_total") == 1


# ---------------------------------------------------------------------------------------------- running
@asynccontextmanager
async def started(controller: Controller, *informers: Informer) -> AsyncIterator[anyio.abc.TaskGroup]:
    async with anyio.create_task_group() as tg:
        for informer in informers:
            tg.start_soon(informer.run)
        tg.start_soon(controller.run)
        yield tg
        tg.cancel_scope.cancel()


async def test_exceptions_never_kill_a_worker(registry: CollectorRegistry) -> None:
    done = anyio.Event()
    attempts: dict[str, int] = {}

    async def reconcile(request: Request) -> None:
        attempts[request.name] = attempts.get(request.name, 0) + 1
        if request.name == "bad":
            raise ValueError("a bug in the reconciler")
        if request.name == "bad-api":
            raise KeyError("another bug")
        done.set()

    controller = Controller("c", reconcile, max_concurrent=1, metrics=RuntimeMetrics(registry))
    informer = informer_for()
    controller.watch(informer)
    async with started(controller, informer):
        controller.enqueue(Request("ns", "bad"))
        controller.enqueue(Request("ns", "bad-api"))
        controller.enqueue(Request("ns", "good"))
        with anyio.fail_after(DEADLINE):
            await done.wait()
        # The failures are retried (5 ms, 10 ms, ...) by the same single worker.
        await eventually(lambda: attempts.get("bad", 0) >= 3 and attempts.get("bad-api", 0) >= 3)
        assert await controller.stop(grace=5.0)
    assert metric(registry, "controller_runtime_reconcile_errors_total") >= 6


async def test_a_broken_rate_limiter_does_not_kill_the_worker() -> None:
    class Broken:
        def when(self, item: Hashable) -> float:
            raise RuntimeError("limiter bug")

        def forget(self, item: Hashable) -> None:
            pass

        def num_requeues(self, item: Hashable) -> int:
            return 0

    reconciled: list[str] = []
    done = anyio.Event()

    async def reconcile(request: Request) -> Result | None:
        reconciled.append(request.name)
        if request.name == "last":
            done.set()
        return Result(requeue=True) if request.name == "first" else None

    controller = Controller("c", reconcile, rate_limiter=Broken())
    informer = informer_for()
    controller.watch(informer)
    async with started(controller, informer):
        controller.enqueue(Request("ns", "first"))
        controller.enqueue(Request("ns", "last"))
        with anyio.fail_after(DEADLINE):
            await done.wait()
        assert reconciled == ["first", "last"]
        assert await controller.stop(grace=5.0)


async def test_workers_start_only_after_the_informers_synced() -> None:
    seen: list[str] = []
    controller = Controller("c", lambda r: _record(seen, r), max_concurrent=2)
    informer = informer_for([obj("listed")], released=False)
    controller.watch(informer)
    async with started(controller, informer):
        controller.enqueue(Request("ns", "early"))
        await settle()
        assert not controller.synced and not controller.started.is_set()
        assert seen == []  # queued, but no worker runs before the caches are ready
        informer.client.release.set()  # type: ignore[attr-defined]
        with anyio.fail_after(DEADLINE):
            await controller.started.wait()
        await eventually(lambda: sorted(seen) == ["early", "listed"])
        assert controller.synced
        assert await controller.stop(grace=5.0)


async def _record(seen: list[str], request: Request) -> None:
    seen.append(request.name)


async def test_run_fails_when_the_caches_do_not_sync_in_time() -> None:
    controller = Controller("c", noop, cache_sync_timeout=0.05)
    controller.watch(informer_for(released=False))
    with anyio.fail_after(DEADLINE), pytest.raises(TimeoutError):
        await controller.run()  # the informer never runs here, so it never syncs
    assert not controller.started.is_set()


async def test_a_key_is_never_reconciled_by_two_workers_at_once() -> None:
    release = anyio.Event()
    entered = anyio.Event()
    calls: list[str] = []
    concurrent = 0
    most = 0

    async def reconcile(request: Request) -> None:
        nonlocal concurrent, most
        concurrent += 1
        most = max(most, concurrent)
        calls.append(request.name)
        entered.set()
        if len(calls) == 1:
            await release.wait()
        concurrent -= 1

    controller = Controller("c", reconcile, max_concurrent=4)
    informer = informer_for()
    controller.watch(informer)
    async with started(controller, informer):
        controller.enqueue(REQ)
        with anyio.fail_after(DEADLINE):
            await entered.wait()
        for _ in range(3):
            controller.enqueue(REQ)  # three idle workers, and the key is dirty again
        await settle()
        assert calls == ["a"] and most == 1
        release.set()
        await eventually(lambda: len(calls) == 2)
        await settle()
        assert calls == ["a", "a"] and most == 1  # the three adds made one more reconcile, after the first
        assert await controller.stop(grace=5.0)


async def test_stop_drains_in_flight_work_and_starts_nothing_new() -> None:
    release = anyio.Event()
    entered = anyio.Event()
    reconciled: list[str] = []

    async def reconcile(request: Request) -> None:
        if request.name == "slow":
            entered.set()
            await release.wait()
        reconciled.append(request.name)

    controller = Controller("c", reconcile, max_concurrent=1)
    informer = informer_for()
    controller.watch(informer)
    stopped: list[bool] = []
    ran = anyio.Event()

    async def run() -> None:
        await controller.run()
        ran.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(informer.run)
        tg.start_soon(run)
        controller.enqueue(Request("ns", "slow"))
        with anyio.fail_after(DEADLINE):
            await entered.wait()
        controller.enqueue(Request("ns", "queued"))  # waits behind the busy worker

        async def stop() -> None:
            stopped.append(await controller.stop(grace=DEADLINE))

        tg.start_soon(stop)
        await settle()
        assert stopped == [] and not ran.is_set()  # waiting for the in-flight reconcile
        controller.enqueue(Request("ns", "late"))  # refused: shutting down
        release.set()
        with anyio.fail_after(DEADLINE):
            await ran.wait()
        await settle()
        assert stopped == [True]
        assert reconciled == ["slow"]  # queued keys were not started once stopping
        tg.cancel_scope.cancel()


async def test_stop_gives_up_after_the_grace_period() -> None:
    entered = anyio.Event()

    async def reconcile(request: Request) -> None:
        entered.set()
        await anyio.sleep_forever()

    controller = Controller("c", reconcile)
    informer = informer_for()
    controller.watch(informer)
    async with started(controller, informer):
        controller.enqueue(REQ)
        with anyio.fail_after(DEADLINE):
            await entered.wait()
            assert await controller.stop(grace=0.05) is False
        assert controller.queue.shutting_down


def test_max_concurrent_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_concurrent must be at least 1"):
        Controller("c", noop, max_concurrent=0)


# ---------------------------------------------------------------------------------------------- metrics
async def test_metric_series_exist_at_zero_before_the_first_reconcile(registry: CollectorRegistry) -> None:
    Controller("c", noop, max_concurrent=3, metrics=RuntimeMetrics(registry))
    assert totals(registry) == dict.fromkeys(RESULTS, 0.0)
    for name in (
        "controller_runtime_reconcile_errors_total",
        "controller_runtime_terminal_reconcile_errors_total",
        "controller_runtime_reconcile_panics_total",
        "controller_runtime_reconcile_timeouts_total",
        "controller_runtime_active_workers",
    ):
        assert metric(registry, name) == 0, name
    assert metric(registry, "controller_runtime_max_concurrent_reconciles") == 3
    queue = {"name": "c", "controller": "c"}
    assert registry.get_sample_value("workqueue_depth", {**queue, "priority": ""}) == 0
    for name in ("workqueue_adds_total", "workqueue_retries_total", "workqueue_unfinished_work_seconds"):
        assert registry.get_sample_value(name, queue) == 0, name


async def test_active_workers_counts_reconciles_in_flight(registry: CollectorRegistry) -> None:
    release = anyio.Event()
    entered: list[str] = []

    async def reconcile(request: Request) -> None:
        entered.append(request.name)
        await release.wait()

    controller = Controller("c", reconcile, max_concurrent=3, metrics=RuntimeMetrics(registry))
    informer = informer_for()
    controller.watch(informer)
    async with started(controller, informer):
        for name in ("a", "b"):
            controller.enqueue(Request("ns", name))
        await eventually(lambda: len(entered) == 2)
        assert metric(registry, "controller_runtime_active_workers") == 2
        release.set()
        assert await controller.stop(grace=5.0)
    assert metric(registry, "controller_runtime_active_workers") == 0
    assert totals(registry)["success"] == 2


# ---------------------------------------------------------------------------------------------- acceptance
OBJECTS = 1000
WORKERS = 4


async def test_a_controller_converges_1000_objects_despite_faults(
    backoff: type[RecordingBackoff], registry: CollectorRegistry
) -> None:
    """Every ConfigMap's ``status`` annotation must come to equal its ``data.spec``, while 10% of writes
    fail (500, 409, 429), watches are dropped, one re-watch fails (forcing a relist) and some specs change
    mid-way; no key may ever be reconciled by two workers at once."""
    ns = "converge"
    faults = Faults(seed=20261121)
    async with (
        running_apiserver(bookmark_interval=0.2, faults=faults) as api,
        fast_client(api.url, max_throttle_retries=0) as client,
    ):
        cluster = api.cluster
        cluster.ensure_namespace(ns)
        kind = cluster.lookup("", "v1", "configmaps")
        for i in range(OBJECTS):
            body = {"metadata": {"name": f"cm-{i:04d}"}, "data": {"spec": f"v1-{i}"}}
            cluster.create(kind, "v1", ns, body)
        for status, share in ((500, 0.04), (409, 0.03), (429, 0.03)):
            faults.add(FaultRule(method="PATCH", path="/configmaps/", status=status, probability=share))

        informer = Informer(client, CONFIG_MAP, ns)
        in_flight: set[Request] = set()
        overlaps: list[Request] = []
        most_parallel = 0
        reconciles = 0
        writes = 0

        async def reconcile(request: Request) -> None:
            nonlocal most_parallel, reconciles, writes
            if request in in_flight:
                overlaps.append(request)
            in_flight.add(request)
            most_parallel = max(most_parallel, len(in_flight))
            reconciles += 1
            try:
                current = informer.store.get_by(request.namespace, request.name)
                if current is None:
                    return
                want = current["data"]["spec"]
                if (current["metadata"].get("annotations") or {}).get("status") == want:
                    return
                patch = {"metadata": {"annotations": {"status": want}}}
                await client.merge_patch(CONFIG_MAP, request.name, patch, request.namespace)
                writes += 1
            finally:
                in_flight.discard(request)

        controller = Controller(
            "converge", reconcile, max_concurrent=WORKERS, metrics=RuntimeMetrics(registry)
        )
        controller.watch(informer)

        respecced_after_write = 0

        def converged() -> bool:
            for stored in cluster.objects[kind.key].values():
                if stored["metadata"]["namespace"] != ns:
                    continue
                if (stored["metadata"].get("annotations") or {}).get("status") != stored["data"]["spec"]:
                    return False
            return True

        async def disturb() -> None:
            """Drop the watches three times; at the first, also change 100 specs and fail the re-watch."""
            nonlocal respecced_after_write
            for n, threshold in enumerate((OBJECTS // 4, OBJECTS // 2, OBJECTS)):
                await eventually(lambda t=threshold: reconciles >= t, within=20)  # type: ignore[misc]
                if n == 0:
                    for i in range(0, OBJECTS, 10):
                        stored = cluster.get(kind, ns, f"cm-{i:04d}")
                        respecced_after_write += "status" in (stored["metadata"].get("annotations") or {})
                        patch = orjson.dumps({"data": {"spec": f"v2-{i}"}})
                        cluster.patch(kind, "v1", ns, f"cm-{i:04d}", "application/merge-patch+json", patch)
                    faults.add(FaultRule(method="GET", path="/configmaps$", status=500, count=1))
                cluster.drop_watches()

        started_at = time.monotonic()
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(informer.run)
                tg.start_soon(controller.run)
                await disturb()
                await eventually(converged, within=25)
                assert await controller.stop(grace=5.0)
                tg.cancel_scope.cancel()
        elapsed = time.monotonic() - started_at

    assert overlaps == [], f"keys reconciled concurrently: {overlaps[:5]}"
    assert most_parallel > 1, "the workers never ran in parallel"
    assert most_parallel <= WORKERS
    failed = [r.hits for r in faults.rules if r.method == "PATCH"]
    assert all(hits > 0 for hits in failed), failed  # every kind of write fault actually fired
    errors = registry.get_sample_value(
        "controller_runtime_reconcile_errors_total", {"controller": "converge"}
    )
    requeues = registry.get_sample_value(
        "controller_runtime_reconcile_total", {"controller": "converge", "result": "requeue"}
    )
    # Each failed write was retried until it converged: a 500 or 429 as an error, a 409 as a requeue.
    conflicts = next(r.hits for r in faults.rules if r.method == "PATCH" and r.status == 409)
    assert (errors, requeues) == (sum(failed) - conflicts, conflicts)
    assert respecced_after_write > 0
    assert writes >= OBJECTS + respecced_after_write  # every object, and the re-specced ones again
    final = [
        cluster.get(kind, ns, f"cm-{i:04d}")["metadata"]["annotations"]["status"] for i in range(OBJECTS)
    ]
    assert final == [f"v2-{i}" if i % 10 == 0 else f"v1-{i}" for i in range(OBJECTS)]
    assert informer.relists >= 2  # the failed re-watch forced a relist
    assert informer.watches >= 4
    assert elapsed < 30


def test_reconcile_ids_are_version_4_uuids_and_differ() -> None:
    import uuid

    from service.runtime.controller import new_reconcile_id

    ids = [new_reconcile_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
