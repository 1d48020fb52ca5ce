"""Watches: event types, initial state, resuming, expiry, bookmarks, timeouts, selectors, query params."""

from __future__ import annotations

import time

import aiohttp
import anyio
import orjson
import pytest

from tests.helpers import eventually
from tests.sim.conftest import (
    BOOKMARK_INTERVAL,
    CM,
    DEADLINE,
    GROUP,
    WIDGETS,
    Kube,
    Obj,
    WatchReader,
    assert_page_not_found,
    assert_status,
    configmap,
    install_crd,
    watching,
    widget,
    widget_crd,
)

pytestmark = pytest.mark.anyio


async def test_added_modified_deleted(kube: Kube, session: aiohttp.ClientSession, widgets: Obj) -> None:
    start = (await kube.get(kube.path(WIDGETS))).body["metadata"]["resourceVersion"]
    async with kube.watching(kube.path(WIDGETS), resourceVersion=start) as w:
        created = await kube.create(WIDGETS, widget("w1"))
        added = await w.expect("ADDED", "w1")
        assert added == created
        patched = await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"size": 2}})
        modified = await w.expect("MODIFIED", "w1")
        assert modified == patched.body
        await kube.delete(kube.path(WIDGETS, name="w1"))
        deleted = await w.expect("DELETED", "w1")
        assert int(deleted["metadata"]["resourceVersion"]) > int(patched.rv)
        assert deleted["spec"]["size"] == 2
        # Every event's object is complete, with its kind and apiVersion.
        for ev in w.seen:
            assert ev["object"]["kind"] == "Widget"
            assert ev["object"]["apiVersion"] == f"{GROUP}/v1"


async def test_watch_is_scoped_to_its_namespace(kube: Kube, session: aiohttp.ClientSession) -> None:
    other = await kube.namespace("other")
    rv = (await kube.get(kube.path(CM))).body["metadata"]["resourceVersion"]
    async with (
        kube.watching(kube.path(CM), resourceVersion=rv) as here,
        kube.watching("/api/v1/configmaps", resourceVersion=rv) as everywhere,
    ):
        await kube.create(CM, configmap("elsewhere"), ns=other)
        await kube.create(CM, configmap("local"))
        await here.expect("ADDED", "local")  # the other namespace's object never arrives here
        assert (await everywhere.expect("ADDED", "elsewhere"))["metadata"]["namespace"] == other
        await everywhere.expect("ADDED", "local")


@pytest.mark.parametrize("rv", [None, "0"])
async def test_initial_state_comes_first_as_added(
    kube: Kube, session: aiohttp.ClientSession, rv: str | None
) -> None:
    for name in ("a", "b", "c"):
        await kube.create(CM, configmap(name))
    await kube.delete(kube.path(CM, name="b"))
    params = {"resourceVersion": rv} if rv is not None else {}
    if rv == "0":
        # "0" is any resourceVersion: kube-apiserver starts from its watch cache, which may not have seen
        # the delete yet. A list at "0" is served from the same cache: once it has, the watch starts there.
        await eventually(
            lambda: kube.get(kube.path(CM), **params),
            DEADLINE,
            "the watch cache has seen the delete",
            until=lambda r: kube.names(r.body) == ["a", "c"],
        )
    async with kube.watching(kube.path(CM), **params) as w:
        initial = [await w.event() for _ in range(2)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [
            ("ADDED", "a"),
            ("ADDED", "c"),
        ]
        await kube.create(CM, configmap("d"))
        await w.expect("ADDED", "d")


async def test_resume_replays_every_event_after_the_resource_version(
    kube: Kube, session: aiohttp.ClientSession
) -> None:
    a = await kube.create(CM, configmap("a"))
    since = a["metadata"]["resourceVersion"]
    await kube.patch(kube.path(CM, name="a"), {"data": {"k": "2"}})
    await kube.create(CM, configmap("b"))
    await kube.delete(kube.path(CM, name="a"))
    async with kube.watching(kube.path(CM), resourceVersion=since) as w:
        replay = [await w.event() for _ in range(3)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in replay] == [
            ("MODIFIED", "a"),
            ("ADDED", "b"),
            ("DELETED", "a"),
        ]
        rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in replay]
        assert rvs == sorted(rvs) and rvs[0] > int(since)
        # then it goes on live
        await kube.create(CM, configmap("c"))
        await w.expect("ADDED", "c")


@pytest.mark.emulator  # compaction and dropped watches on demand
async def test_too_old_resource_version_is_expired(kube: Kube, session: aiohttp.ClientSession) -> None:
    a = await kube.create(CM, configmap("a"))
    await kube.patch(kube.path(CM, name="a"), {"data": {"k": "2"}})
    await kube.post("/__sim__/compact", {})
    async with kube.watching(kube.path(CM), resourceVersion=a["metadata"]["resourceVersion"]) as w:
        rest = await w.expect_end()
    assert len(rest) == 1, rest
    ev = rest[0]
    assert ev["type"] == "ERROR"
    status = ev["object"]
    assert status["kind"] == "Status" and status["apiVersion"] == "v1"
    assert status["status"] == "Failure"
    assert (status["code"], status["reason"]) == (410, "Expired")
    assert status["message"].startswith("too old resource version: ")


@pytest.mark.emulator  # compaction and dropped watches on demand
async def test_watch_from_the_compaction_point_is_fine(kube: Kube, session: aiohttp.ClientSession) -> None:
    await kube.create(CM, configmap("a"))
    compacted = await kube.post("/__sim__/compact", {})
    rv = compacted.body["compactedResourceVersion"]
    async with kube.watching(kube.path(CM), resourceVersion=rv) as w:
        await kube.create(CM, configmap("b"))
        await w.expect("ADDED", "b")


@pytest.mark.emulator  # kube-apiserver sends a bookmark about once a minute
async def test_bookmarks(kube: Kube, session: aiohttp.ClientSession, widgets: Obj) -> None:
    start = (await kube.get(kube.path(WIDGETS))).body["metadata"]["resourceVersion"]
    async with kube.watching(kube.path(WIDGETS), resourceVersion=start, allowWatchBookmarks="true") as w:
        created = await kube.create(WIDGETS, widget("w1"))
        bookmarks: list[Obj] = []
        events: list[Obj] = []
        while len(bookmarks) < 3:
            ev = await w.event(within=BOOKMARK_INTERVAL * 10, skip_bookmarks=False)
            (bookmarks if ev["type"] == "BOOKMARK" else events).append(ev)
            if len(bookmarks) == 1:
                await kube.create(CM, configmap("elsewhere"))  # moves the global resourceVersion on
        assert [e["type"] for e in events] == ["ADDED"]
        rvs = [int(b["object"]["metadata"]["resourceVersion"]) for b in bookmarks]
        assert rvs == sorted(rvs), rvs  # never backwards
        assert rvs[0] >= int(created["metadata"]["resourceVersion"])
        for b in bookmarks:
            obj = b["object"]
            assert obj["kind"] == "Widget"
            assert obj["apiVersion"] == f"{GROUP}/v1"
            assert set(obj["metadata"]) <= {"resourceVersion", "creationTimestamp", "annotations"}
        # Resuming from a bookmark loses nothing.
        last = bookmarks[-1]["object"]["metadata"]["resourceVersion"]
    await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"size": 3}})
    async with kube.watching(kube.path(WIDGETS), resourceVersion=last) as resumed:
        ev = await resumed.expect("MODIFIED", "w1")
        assert ev["spec"]["size"] == 3


async def test_no_bookmarks_unless_asked(kube: Kube, session: aiohttp.ClientSession) -> None:
    rv = (await kube.get(kube.path(CM))).body["metadata"]["resourceVersion"]
    async with kube.watching(kube.path(CM), resourceVersion=rv, timeoutSeconds="1") as w:
        rest = await w.expect_end(within=DEADLINE)
    assert rest == []  # a second of silence: ~5 bookmark intervals, and none came


async def test_timeout_seconds_ends_the_stream_cleanly(kube: Kube, session: aiohttp.ClientSession) -> None:
    await kube.create(CM, configmap("a"))
    started = time.monotonic()
    async with kube.watching(kube.path(CM), timeoutSeconds="1") as w:
        rest = await w.expect_end(within=DEADLINE)
    elapsed = time.monotonic() - started
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in rest] == [("ADDED", "a")]
    assert 0.8 <= elapsed < 3, elapsed


async def test_label_selector_transitions(kube: Kube, session: aiohttp.ClientSession) -> None:
    rv = (await kube.get(kube.path(CM))).body["metadata"]["resourceVersion"]
    async with kube.watching(kube.path(CM), resourceVersion=rv, labelSelector="app=web") as w:
        await kube.create(CM, configmap("x"))  # does not match: not seen
        await kube.patch(kube.path(CM, name="x"), {"metadata": {"labels": {"app": "web"}}})
        entered = await w.expect("ADDED", "x")  # starts matching: ADDED
        assert entered["metadata"]["labels"] == {"app": "web"}
        await kube.patch(kube.path(CM, name="x"), {"data": {"k": "2"}})
        await w.expect("MODIFIED", "x")
        moved = await kube.patch(kube.path(CM, name="x"), {"metadata": {"labels": {"app": "db"}}})
        left = await w.expect("DELETED", "x")  # stops matching: DELETED
        assert left["metadata"]["resourceVersion"] == moved.rv
        await kube.delete(kube.path(CM, name="x"))  # not matching any more: not seen
        await kube.create(CM, configmap("marker", {"app": "web"}))
        await w.expect("ADDED", "marker")  # the next event is the marker: nothing slipped in between


async def test_single_object_watch_by_field_selector(kube: Kube, session: aiohttp.ClientSession) -> None:
    await kube.create(CM, configmap("a"))
    await kube.create(CM, configmap("b"))
    async with kube.watching(kube.path(CM), fieldSelector="metadata.name=b") as w:
        await w.expect("ADDED", "b")
        await kube.patch(kube.path(CM, name="a"), {"data": {"k": "x"}})
        await kube.patch(kube.path(CM, name="b"), {"data": {"k": "y"}})
        modified = await w.expect("MODIFIED", "b")
        assert modified["data"] == {"k": "y"}


@pytest.mark.parametrize("value", ["true", "1", "True", "TRUE", "yes"])
async def test_watch_param_true_values(kube: Kube, session: aiohttp.ClientSession, value: str) -> None:
    await kube.create(CM, configmap("a"))
    with anyio.fail_after(DEADLINE):
        async with session.get(kube.path(CM), params={"watch": value}) as resp:
            assert resp.status == 200
            line = await resp.content.readline()
    event = orjson.loads(line)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "a")


@pytest.mark.parametrize("value", ["false", "0", "False", "FALSE"])
async def test_watch_param_false_values(kube: Kube, value: str) -> None:
    await kube.create(CM, configmap("a"))
    reply = await kube.get(kube.path(CM), watch=value)
    assert reply.status == 200
    assert reply.body["kind"] == "ConfigMapList"


@pytest.mark.emulator  # kube-apiserver sends a bookmark about once a minute
async def test_bookmark_param_follows_the_same_rule(kube: Kube, session: aiohttp.ClientSession) -> None:
    rv = (await kube.get(kube.path(CM))).body["metadata"]["resourceVersion"]
    async with kube.watching(kube.path(CM), resourceVersion=rv, allowWatchBookmarks="1") as w:
        ev = await w.next(within=BOOKMARK_INTERVAL * 10)
        assert ev is not None and ev["type"] == "BOOKMARK"
    async with watching(
        session, kube.path(CM), resourceVersion=rv, allowWatchBookmarks="0", timeoutSeconds="1"
    ) as w:
        assert await w.expect_end() == []


@pytest.mark.emulator  # compaction and dropped watches on demand
async def test_drop_watches_ends_every_open_watch_and_the_count_shows_it(
    kube: Kube, session: aiohttp.ClientSession, widgets: Obj
) -> None:
    rv = (await kube.get(kube.path(CM))).body["metadata"]["resourceVersion"]
    async with (
        kube.watching(kube.path(CM), resourceVersion=rv) as one,
        kube.watching(kube.path(WIDGETS), resourceVersion=rv) as two,
        kube.watching("/api/v1/namespaces", resourceVersion=rv) as three,
    ):
        await kube.create(CM, configmap("a"))
        await one.expect("ADDED", "a")  # the watches are live
        counted = (await kube.get("/__sim__/watches")).body["open"]
        assert min(counted["configmaps"], counted[f"widgets.{GROUP}"], counted["namespaces"]) >= 1
        dropped = await kube.post("/__sim__/drop-watches", {})
        assert dropped.status == 200
        assert dropped.body["dropped"] >= 3
        for w in (one, two, three):
            assert await w.expect_end() == []
        assert "configmaps" not in (await kube.get("/__sim__/watches")).body["open"]
    # New watches work afterwards.
    async with kube.watching(kube.path(CM), resourceVersion=rv) as again:
        await again.expect("ADDED", "a")


async def test_watch_of_unknown_resource_is_not_found(kube: Kube) -> None:
    assert_page_not_found(
        await kube.get(kube.path(f"/apis/{GROUP}/v1/namespaces/{{ns}}/nothings"), watch="true")
    )
    assert_status(
        await kube.get(kube.path("/api/v1/namespaces/{ns}/nothings"), watch="true"), 404, "NotFound"
    )


TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"


async def test_watch_as_table(kube: Kube, session: aiohttp.ClientSession) -> None:
    """`kubectl get --watch` asks for Tables: each event carries a one-row Table (column definitions only
    in the first), as kube-apiserver's watch encoder sends them."""
    columns = [
        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    ]
    crd = widget_crd(group=kube.group, plural="gizmos", kind="Gizmo", extra_versions=())
    crd["spec"]["versions"][0]["additionalPrinterColumns"] = columns
    await install_crd(kube, crd)
    gizmos = f"/apis/{kube.group}/v1/namespaces/{{ns}}/gizmos"
    first = await kube.create(gizmos, {**widget("g1", group=kube.group), "kind": "Gizmo"})
    with anyio.fail_after(DEADLINE):
        resp = await session.get(
            kube.path(gizmos),
            params={"watch": "true"},
            headers={"Accept": TABLE},
            timeout=aiohttp.ClientTimeout(),
        )
    try:
        w = WatchReader(resp)
        added = await w.event()
        assert added["type"] == "ADDED"
        table = added["object"]
        assert (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
        # A CRD's printer columns replace the default Age column.
        assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size", "Phase"]
        assert table["metadata"] == {"resourceVersion": first["metadata"]["resourceVersion"]}
        [row] = table["rows"]
        assert row["cells"][:3] == ["g1", 1, None]  # no status.phase: null
        assert row["object"]["kind"] == "PartialObjectMetadata"
        assert row["object"]["metadata"]["uid"] == first["metadata"]["uid"]

        patched = await kube.patch(kube.path(gizmos, name="g1"), {"spec": {"size": 7}})
        modified = await w.event()
        assert modified["type"] == "MODIFIED"
        assert modified["object"]["kind"] == "Table"
        assert modified["object"]["columnDefinitions"] is None  # headers only once
        assert modified["object"]["metadata"]["resourceVersion"] == patched.rv
        assert modified["object"]["rows"][0]["cells"][:2] == ["g1", 7]
    finally:
        resp.close()
    # Without the Table media type, the same watch carries the objects themselves.
    async with kube.watching(kube.path(gizmos)) as plain:
        obj = await plain.expect("ADDED", "g1")
        assert obj["kind"] == "Gizmo" and obj["spec"]["size"] == 7
