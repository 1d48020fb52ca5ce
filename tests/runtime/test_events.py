"""EventRecorder against the API emulator over real HTTP: creation, aggregation of repeats, the bounded
buffer, recreation after the server dropped an event, and API errors that must not stop the writer."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from service.runtime.events import MAX_MESSAGE, EventRecorder
from simcluster.faults import FaultRule
from simcluster.server import RunningApiServer
from tests.helpers import eventually

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


async def test_repeat_after_the_event_expired_creates_a_new_one(kube: KubeClient, configmap: Obj) -> None:
    recorder = EventRecorder(kube, COMPONENT)
    async with writing(recorder):
        recorder.record(configmap, "Normal", "Built", "image built")
        recorder.record(configmap, "Normal", "Built", "image built")
        await eventually(lambda: recorder.written == 2, what="create and patch")
        [old] = await events_in(kube, "apps")
        assert old["count"] == 2
        await kube.delete(r.EVENT, old["metadata"]["name"], "apps")  # the API server's event TTL

        recorder.record(configmap, "Normal", "Built", "image built")
        await eventually(lambda: recorder.written == 3, what="the repeat is written")
        [new] = await events_in(kube, "apps")
        assert new["metadata"]["name"] != old["metadata"]["name"]
        assert new["count"] == 1

        recorder.record(configmap, "Normal", "Built", "image built")  # and aggregation resumes on it
        await eventually(lambda: recorder.written == 4, what="the next repeat is written")
    [again] = await events_in(kube, "apps")
    assert again["metadata"]["name"] == new["metadata"]["name"]
    assert again["count"] == 2


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

            # A failing patch of a repeat is logged too, and the next repeat still lands.
            patch_rule = server.faults.add(FaultRule(method="PATCH", path="/events/", status=503, count=1))
            recorder.record(configmap, "Normal", "Kept", "this one is written")
            recorder.record(configmap, "Normal", "Kept", "this one is written")
            await eventually(lambda: recorder.written == 2, what="the second repeat is written")
    assert rule.hits == 1 and patch_rule.hits == 1
    [event] = await events_in(kube, "apps")
    assert (event["reason"], event["count"] >= 2) == ("Kept", True)
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
