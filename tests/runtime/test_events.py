"""EventRecorder against the API emulator over real HTTP: creation, client-go's correlator (repeats
patched, similar events aggregated, the spam filter), concurrent writers and their limiter, the bounded
queue, recreation after the server dropped an event, API errors that must not stop the writers, the drop
metric, and no Event lost at a benchmark's load or on a graceful shutdown."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry

from service.kube import resources as r
from service.kube.client import KubeClient
from service.runtime.events import MAX_MESSAGE, RECORDED_TYPES, EventRecorder
from service.runtime.metrics import EventMetrics
from simcluster.faults import FaultRule
from simcluster.server import RunningApiServer
from tests.helpers import consistently, eventually

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]
DEADLINE = 5.0
COMPONENT = "kpack-image-builder"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def server(api: RunningApiServer) -> RunningApiServer:
    api.cluster.ensure_namespace("apps")
    return api


@pytest.fixture
def kube(server: RunningApiServer, client: KubeClient) -> KubeClient:
    return client


@pytest.fixture
async def configmap(kube: KubeClient) -> Obj:
    return await kube.create(
        r.CONFIG_MAP, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-1"}}, "apps"
    )


@asynccontextmanager
async def writing(recorder: EventRecorder) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(recorder.run)
        yield
        tg.cancel_scope.cancel()


async def events_in(kube: KubeClient, namespace: str) -> list[Obj]:
    items: list[Obj] = (await kube.list(r.EVENT, namespace))["items"]
    return items


async def test_event_is_created_with_the_object_reference(kube: KubeClient, configmap: Obj) -> None:
    recorder = EventRecorder(kube, COMPONENT, "pod-1")
    async with writing(recorder):
        recorder.record(configmap, "Normal", "Built", "image built")
        await eventually(lambda: recorder.written == 1, what="the event is written")

    [event] = await events_in(kube, "apps")
    meta = configmap["metadata"]
    assert re.fullmatch(r"app-1\.[0-9a-f]+", event["metadata"]["name"]), event["metadata"]["name"]
    assert event["metadata"]["namespace"] == "apps"
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "app-1",
        "namespace": "apps",
        "uid": meta["uid"],
        "resourceVersion": meta["resourceVersion"],
    }
    assert (event["reason"], event["message"], event["type"]) == ("Built", "image built", "Normal")
    assert event["source"] == {"component": COMPONENT, "host": "pod-1"}
    assert (event["reportingComponent"], event["reportingInstance"]) == (COMPONENT, "pod-1")
    assert event["count"] == 1
    assert RFC3339.match(event["firstTimestamp"]) and event["lastTimestamp"] == event["firstTimestamp"]
    assert recorder.dropped == 0
    recorder.record(configmap, "Normal", "Built", "after the writer was cancelled")
    assert recorder.dropped == 1  # nothing would ever write it


async def test_repeats_are_aggregated_into_one_event(kube: KubeClient, configmap: Obj) -> None:
    recorder = EventRecorder(kube, COMPONENT)
    async with writing(recorder):
        recorder.record(configmap, "Warning", "Failed", "no builder")
        await eventually(lambda: recorder.written == 1, what="first write")
        [first] = await events_in(kube, "apps")
        recorder.record(configmap, "Warning", "Failed", "no builder")
        await eventually(lambda: recorder.written == 2, what="second write")
        [repeat] = await events_in(kube, "apps")
        assert repeat["metadata"]["name"] == first["metadata"]["name"]
        assert repeat["count"] == 2
        assert repeat["firstTimestamp"] == first["firstTimestamp"]
        assert RFC3339.match(repeat["lastTimestamp"])
        assert repeat["lastTimestamp"] >= repeat["firstTimestamp"]  # RFC 3339 in UTC sorts as text
        assert repeat["source"] == {"component": COMPONENT}  # no instance, no host

        recorder.record(configmap, "Warning", "Failed", "no builder")
        await eventually(lambda: recorder.written == 3, what="third write")
        [third] = await events_in(kube, "apps")
        assert third["count"] == 3

        # Another message, reason or type is another event.
        recorder.record(configmap, "Warning", "Failed", "no stack")
        recorder.record(configmap, "Normal", "Failed", "no builder")
        await eventually(lambda: recorder.written == 5, what="two more writes")
    events = await events_in(kube, "apps")
    assert sorted((e["type"], e["message"], e["count"]) for e in events) == [
        ("Normal", "no builder", 1),
        ("Warning", "no builder", 3),
        ("Warning", "no stack", 1),
    ]


async def test_event_about_a_cluster_scoped_object_goes_to_default(kube: KubeClient) -> None:
    namespace = await kube.get(r.NAMESPACE, "apps")
    recorder = EventRecorder(kube, COMPONENT)
    async with writing(recorder):
        recorder.record(namespace, "Normal", "Seen", "namespace seen")
        await eventually(lambda: recorder.written == 1, what="write")
    [event] = await events_in(kube, "default")
    assert event["metadata"]["namespace"] == "default"
    assert event["involvedObject"]["kind"] == "Namespace"
    assert event["involvedObject"]["name"] == "apps"
    assert "namespace" not in event["involvedObject"]
    assert await events_in(kube, "apps") == []


async def test_full_buffer_drops_and_counts(
    kube: KubeClient, configmap: Obj, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = EventRecorder(kube, COMPONENT, buffer=2)
    with caplog.at_level(logging.WARNING, logger="service.runtime.events"):
        for i in range(4):  # nothing writes yet: the buffer holds two
            recorder.record(configmap, "Normal", "Step", f"step {i}")
    assert recorder.dropped == 2
    drop_logs = [rec for rec in caplog.records if "dropping events" in rec.getMessage()]
    assert len(drop_logs) == 1  # logged once, counted every time

    async with writing(recorder):
        await eventually(lambda: recorder.written == 2, what="the buffered two are written")
        assert sorted(e["message"] for e in await events_in(kube, "apps")) == ["step 0", "step 1"]
        recorder.record(configmap, "Normal", "Step", "step 4")  # room again once drained
        await eventually(lambda: recorder.written == 3, what="a later event is written")
    assert recorder.dropped == 2
    assert len(await events_in(kube, "apps")) == 3


async def test_repeat_after_the_event_expired_creates_it_again(kube: KubeClient, configmap: Obj) -> None:
    recorder = EventRecorder(kube, COMPONENT)
    async with writing(recorder):
        recorder.record(configmap, "Normal", "Built", "image built")
        await eventually(lambda: recorder.written == 1, what="create")
        recorder.record(configmap, "Normal", "Built", "image built")
        await eventually(lambda: recorder.written == 2, what="patch")
        [old] = await events_in(kube, "apps")
        assert old["count"] == 2
        await kube.delete(r.EVENT, old["metadata"]["name"], "apps")  # the API server's event TTL

        # client-go: the PATCH finds nothing, so the Event is created again, same name, count going on.
        recorder.record(configmap, "Normal", "Built", "image built")
        await eventually(lambda: recorder.written == 3, what="the repeat is written")
        [new] = await events_in(kube, "apps")
        assert new["metadata"]["name"] == old["metadata"]["name"]
        assert new["metadata"]["uid"] != old["metadata"]["uid"]
        assert (new["count"], new["firstTimestamp"]) == (3, old["firstTimestamp"])

        recorder.record(configmap, "Normal", "Built", "image built")  # and patching resumes on it
        await eventually(lambda: recorder.written == 4, what="the next repeat is written")
    [again] = await events_in(kube, "apps")
    assert again["metadata"]["uid"] == new["metadata"]["uid"]
    assert again["count"] == 4


async def test_api_errors_are_logged_and_the_writer_keeps_going(
    server: RunningApiServer, kube: KubeClient, configmap: Obj, caplog: pytest.LogCaptureFixture
) -> None:
    rule = server.faults.add(FaultRule(method="POST", path="/namespaces/apps/events$", status=500, count=1))
    recorder = EventRecorder(kube, COMPONENT)
    with caplog.at_level(logging.INFO, logger="service.runtime.events"):
        async with writing(recorder):
            recorder.record(configmap, "Warning", "Lost", "this one hits the fault")
            recorder.record(configmap, "Normal", "Kept", "this one is written")
            await eventually(lambda: recorder.written == 1, what="the second event is written")

            # A failing patch of a repeat is logged too and counted dropped; the next repeat still
            # lands, and its count takes the lost one in (client-go's).
            patch_rule = server.faults.add(FaultRule(method="PATCH", path="/events/", status=503, count=1))
            recorder.record(configmap, "Normal", "Kept", "this one is written")
            await eventually(lambda: recorder.dropped == 2, what="the failed patch is counted")
            recorder.record(configmap, "Normal", "Kept", "this one is written")
            await eventually(lambda: recorder.written == 2, what="the next repeat is written")
    assert rule.hits == 1 and patch_rule.hits == 1
    [event] = await events_in(kube, "apps")
    assert (event["reason"], event["count"]) == ("Kept", 3)
    failures = [rec for rec in caplog.records if rec.getMessage().startswith("could not write event")]
    assert [getattr(rec, "reason", None) for rec in failures] == ["Lost", "Kept"]
    assert "500" in failures[0].getMessage() and "503" in failures[1].getMessage()


async def test_unsupported_type_is_dropped_and_long_messages_are_cut(
    kube: KubeClient, configmap: Obj, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = EventRecorder(kube, COMPONENT)
    with caplog.at_level(logging.ERROR, logger="service.runtime.events"):
        recorder.record(configmap, "Info", "Odd", "not a valid type")
    assert [rec.getMessage() for rec in caplog.records] == ["dropping event of unsupported type"]
    async with writing(recorder):
        recorder.record(configmap, "Normal", "Long", "x" * 5000)
        await eventually(lambda: recorder.written == 1, what="write")
    [event] = await events_in(kube, "apps")
    assert event["reason"] == "Long"
    assert len(event["message"]) == MAX_MESSAGE and event["message"].endswith("...")


@pytest.mark.parametrize(
    ("choice", "written"), [("all", ["Done", "Failed"]), ("warnings", ["Failed"]), ("none", [])]
)
async def test_only_the_chosen_types_are_recorded(
    kube: KubeClient, configmap: Obj, choice: str, written: list[str]
) -> None:
    registry = CollectorRegistry()
    recorder = EventRecorder(kube, COMPONENT, types=RECORDED_TYPES[choice], metrics=EventMetrics(registry))
    recorder.record(configmap, "Normal", "Done", "routine progress")
    recorder.record(configmap, "Warning", "Failed", "something to act on")
    recorder.close()
    with anyio.fail_after(DEADLINE):
        await recorder.run()  # returns once everything queued is written
    assert sorted(e["reason"] for e in await events_in(kube, "apps")) == written
    assert recorder.dropped == 0  # left out by choice is not a drop
    assert not any(s.value for m in registry.collect() for s in m.samples if "dropped" in s.name)


async def test_close_drains_then_ends_the_writer(kube: KubeClient, configmap: Obj) -> None:
    recorder = EventRecorder(kube, COMPONENT)
    recorder.record(configmap, "Normal", "Last", "written before the writer ends")
    recorder.close()
    recorder.record(configmap, "Normal", "Late", "after close")
    assert recorder.dropped == 1
    with anyio.fail_after(DEADLINE):
        await recorder.run()  # returns by itself once the closed buffer is empty
    assert recorder.written == 1
    [event] = await events_in(kube, "apps")
    assert event["reason"] == "Last"


class Clock:
    """Wall time that moves only when a test says (aggregation and the spam filter count in minutes)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def thing(i: int, namespace: str = "apps") -> Obj:
    """An object to record about: the API takes an Event's involvedObject as given."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"thing-{i}", "namespace": namespace, "uid": f"uid-{i}", "resourceVersion": "7"},
    }


def dropped_sample(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("event_recorder_dropped_events_total", {"reason": reason})
    assert value is not None
    return value


async def test_similar_events_are_combined_as_client_go_does(kube: KubeClient, configmap: Obj) -> None:
    clock = Clock()
    recorder = EventRecorder(kube, COMPONENT, clock=clock)
    async with writing(recorder):
        for i in range(12):  # one reason, twelve messages: the tenth and later are one combined Event
            recorder.record(configmap, "Warning", "Failed", f"attempt {i}")
        await eventually(lambda: recorder.written == 12, what="all written")
        events = await events_in(kube, "apps")
        assert sorted(e["message"] for e in events if e["count"] == 1 and "combined" not in e["message"]) == [
            f"attempt {i}" for i in range(9)
        ]
        [combined] = [e for e in events if e["message"].startswith("(combined from similar events): ")]
        assert combined["message"] == "(combined from similar events): attempt 11"
        assert (combined["count"], combined["reason"], len(events)) == (3, "Failed", 10)

        # Another reason is not similar; and ten minutes after the last similar one the group starts over.
        recorder.record(configmap, "Warning", "Other", "attempt 12")
        clock.now += 601
        recorder.record(configmap, "Warning", "Failed", "attempt 13")
        await eventually(lambda: recorder.written == 14, what="two more")
    messages = sorted(e["message"] for e in await events_in(kube, "apps"))
    assert messages.count("attempt 12") == 1 and "attempt 13" in messages
    assert len(messages) == 12


async def test_the_spam_filter_drops_past_25_per_object_and_refills(kube: KubeClient) -> None:
    clock = Clock()
    registry = CollectorRegistry()
    recorder = EventRecorder(kube, COMPONENT, clock=clock, metrics=EventMetrics(registry))
    assert dropped_sample(registry, "spam_filter") == 0
    async with writing(recorder):
        for i in range(30):  # distinct reasons: neither repeats nor similar
            recorder.record(thing(1), "Normal", f"Step{i}", "step")
        recorder.record(thing(2), "Normal", "Step0", "step")  # another object has its own bucket
        recorder.record(thing(1), "Warning", "Step0", "step")  # and so has another type
        await eventually(lambda: recorder.written == 27, what="25 + 1 + 1 written")
        assert recorder.dropped == 5
        assert dropped_sample(registry, "spam_filter") == 5

        clock.now += 300  # one token back every five minutes
        recorder.record(thing(1), "Normal", "Step30", "step")
        recorder.record(thing(1), "Normal", "Step31", "step")
        await eventually(lambda: recorder.written == 28, what="the refilled one")
    assert recorder.dropped == 6
    reasons = [e["reason"] for e in await events_in(kube, "apps") if e["involvedObject"]["name"] == "thing-1"]
    assert sorted(reasons) == sorted([f"Step{i}" for i in range(25)] + ["Step0", "Step30"])


async def test_a_repeat_during_a_write_is_written_after_it(
    server: RunningApiServer, kube: KubeClient, configmap: Obj
) -> None:
    slow = server.faults.add(FaultRule(method="POST", path="/events$", status=0, latency=0.3))
    recorder = EventRecorder(kube, COMPONENT)
    async with writing(recorder):
        recorder.record(configmap, "Normal", "Built", "image built")
        await eventually(lambda: slow.hits == 1, what="the POST is in flight")
        recorder.record(configmap, "Normal", "Built", "image built")  # cannot be patched yet
        recorder.record(configmap, "Normal", "Built", "image built")
        await eventually(lambda: recorder.written == 3, what="all three written")
    [event] = await events_in(kube, "apps")
    assert event["count"] == 3
    assert slow.hits == 1  # one POST, then a PATCH of the two that came meanwhile


async def test_writers_run_concurrently_up_to_their_number(
    server: RunningApiServer, kube: KubeClient
) -> None:
    held = server.faults.add(FaultRule(method="POST", path="/events$", status=0, latency=30))
    recorder = EventRecorder(kube, COMPONENT, writers=3)
    async with writing(recorder):
        for i in range(5):
            recorder.record(thing(i), "Normal", "Seen", "seen")
        await eventually(lambda: held.hits == 3, what="three POSTs in flight at once")
        assert recorder.written == 0
        await consistently(lambda: held.hits == 3, 0.2, "no fourth while three are held")
    # The cancelled writers drop what they held and what was queued, counted as lost at shutdown.
    assert (recorder.written, recorder.dropped) == (0, 5)


async def test_the_writers_limiter_paces_them(kube: KubeClient) -> None:
    recorder = EventRecorder(kube, COMPONENT, qps=0.5, burst=2)
    async with writing(recorder):
        for i in range(4):
            recorder.record(thing(i), "Normal", "Seen", "seen")
        await eventually(lambda: recorder.written == 2, what="the burst")
        await consistently(lambda: recorder.written == 2, 0.3, "the third waits for a token")


async def test_a_repeat_of_a_queued_event_takes_no_slot(kube: KubeClient, configmap: Obj) -> None:
    recorder = EventRecorder(kube, COMPONENT, buffer=1)
    for _ in range(5):  # nothing writes yet
        recorder.record(configmap, "Normal", "Built", "image built")
    assert recorder.dropped == 0
    async with writing(recorder):
        await eventually(lambda: recorder.written == 5, what="one write of all five")
    [event] = await events_in(kube, "apps")
    assert event["count"] == 5


async def test_thousands_of_events_recorded_at_once_are_all_written(
    kube: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's load: the serial writer with its 1,000-slot buffer lost most of these."""
    registry = CollectorRegistry()
    recorder = EventRecorder(kube, COMPONENT, metrics=EventMetrics(registry))
    objects = [thing(i) for i in range(300)]
    with caplog.at_level(logging.INFO, logger="service.runtime.events"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(recorder.run)
            await anyio.lowlevel.checkpoint()  # running: ``drain`` waits for it
            for k in range(3000):  # ten reasons per object, each once: no aggregation, under the spam burst
                recorder.record(objects[k % 300], "Normal", f"Step{k // 300}", f"event {k}")
            for k in range(500):
                recorder.record(objects[k % 300], "Normal", f"Step{k // 300}", f"event {k}")
            with anyio.fail_after(60):
                await recorder.drain()
            tg.cancel_scope.cancel()
    events = await events_in(kube, "apps")
    assert len(events) == 3000
    assert sum(e["count"] for e in events) == 3500
    assert sorted(e["message"] for e in events) == sorted(f"event {k}" for k in range(3000))
    assert (recorder.written, recorder.dropped) == (3500, 0)
    assert all(dropped_sample(registry, reason) == 0 for reason in EventMetrics.REASONS)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.INFO]


async def test_drain_writes_everything_queued(server: RunningApiServer, kube: KubeClient) -> None:
    server.faults.add(FaultRule(method="POST", path="/events$", status=0, latency=0.05))
    recorder = EventRecorder(kube, COMPONENT, writers=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(recorder.run)
        await anyio.lowlevel.checkpoint()
        for i in range(40):
            recorder.record(thing(i), "Normal", "Last", "the last word")
        with anyio.fail_after(DEADLINE):
            await recorder.drain()
        recorder.record(thing(0), "Normal", "Late", "after the drain")
    assert (recorder.written, recorder.dropped) == (40, 1)
    assert len(await events_in(kube, "apps")) == 40
