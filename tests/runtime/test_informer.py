"""Informers against a live API emulator through a real KubeClient (machinery.md §3).

Changes the informer must discover "while away" are written straight into the emulator's state in the
same synchronous step as the watch drop, so no re-watch can slip in between.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
import pytest

from service.kube.client import KubeClient
from service.kube.resources import CONFIG_MAP, NAMESPACE, SECRET, Resource
from service.runtime import Controller, Request, changed
from service.runtime import informer as informer_mod
from service.runtime.clock import FakeClock
from service.runtime.informer import Backoff, FuncHandler, Informer, InformerFactory, Lister
from service.runtime.store import Obj, by_label
from simcluster.faults import FaultRule
from simcluster.kinds import Kind
from simcluster.server import RunningApiServer, running_apiserver
from tests.helpers import fast_client
from tests.runtime.conftest import (
    DEADLINE,
    Recorder,
    RecordingBackoff,
    SpyClient,
    cm,
    eventually,
    running,
)

pytestmark = pytest.mark.anyio

MERGE = "application/merge-patch+json"


@pytest.fixture
async def spy(api: RunningApiServer) -> AsyncIterator[SpyClient]:
    async with fast_client(api.url, SpyClient) as c:
        yield c


def configmaps(api: RunningApiServer) -> Kind:
    return api.cluster.lookup("", "v1", "configmaps")


def put(api: RunningApiServer, name: str, namespace: str = "default", **extra: Any) -> Obj:
    """Create a ConfigMap straight in the emulator's state (synchronously, no HTTP)."""
    return api.cluster.create(configmaps(api), "v1", namespace, cm(name, namespace, **extra))


def patch(api: RunningApiServer, name: str, body: Obj, namespace: str = "default") -> Obj:
    return api.cluster.patch(configmaps(api), "v1", namespace, name, MERGE, orjson.dumps(body))


def remove(api: RunningApiServer, name: str, namespace: str = "default") -> None:
    api.cluster.delete(configmaps(api), "v1", namespace, name)


def rv(obj: Obj) -> str:
    return str(obj["metadata"]["resourceVersion"])


async def mark(client: KubeClient, recorder: Recorder, name: str) -> Obj:
    """Create an object over HTTP and wait until the informer delivered it: proof its watch is live."""
    created = await client.create(CONFIG_MAP, cm(name))
    await recorder.wait_event("add", f"default/{name}")
    return created


# ---------------------------------------------------------------------------------------------- listing
async def test_initial_list_is_paginated_and_delivered_as_initial_adds(
    api: RunningApiServer, spy: SpyClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(informer_mod, "PAGE_SIZE", 3)
    for i in range(7):
        put(api, f"c{i}")
    informer = Informer(spy, CONFIG_MAP, "default")
    recorder = Recorder()
    informer.add_handler(recorder)
    assert not informer.has_synced
    async with running(informer):
        assert informer.has_synced
        assert sorted(recorder.keys("add")) == [f"default/c{i}" for i in range(7)]
        assert all(initial is True for _, _, _, initial in recorder.of("add"))
        assert sorted(informer.store.list_keys()) == [f"default/c{i}" for i in range(7)]
        assert informer.last_sync_rv == str(api.cluster.rv)
        # Three pages of 3: the first at resourceVersion "0" (any), the rest pinned by the continue token.
        assert [p["limit"] for p in spy.asked] == [3, 3, 3]
        assert spy.asked[0]["resource_version"] == "0" and spy.asked[0]["continue_"] is None
        assert all(p["continue_"] and p["resource_version"] is None for p in spy.asked[1:])
        assert informer.relists == 1


class PageKeeper(SpyClient):
    """Keeps every page it hands out, to see what the informer left in it; after the first page, can let
    the list's continue token expire and write meanwhile (``on_first_page``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept: list[Obj] = []
        self.on_first_page: Any = None

    async def list(self, res: Resource, namespace: str | None = None, **kwargs: Any) -> Obj:
        page = await super().list(res, namespace, **kwargs)
        self.kept.append(page)
        if len(self.kept) == 1 and self.on_first_page is not None:
            self.on_first_page()
        return page


async def test_each_page_is_encoded_and_let_go_before_the_next(
    api: RunningApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list never holds every object decoded at once: each page's items are encoded into the cache's
    form and dropped from the page before the next page is asked for."""
    monkeypatch.setattr(informer_mod, "PAGE_SIZE", 2)
    for i in range(5):
        put(api, f"c{i}")
    async with fast_client(api.url, PageKeeper) as keeper:
        sizes: list[list[int]] = []
        original = keeper.list

        async def list_noting(res: Resource, namespace: str | None = None, **kwargs: Any) -> Obj:
            sizes.append([len(p["items"]) for p in keeper.kept])  # the earlier pages, as the next is asked
            return await original(res, namespace, **kwargs)

        keeper.list = list_noting  # type: ignore[method-assign]
        informer = Informer(keeper, CONFIG_MAP, "default")
        recorder = Recorder()
        informer.add_handler(recorder)
        async with running(informer):
            assert sizes == [[], [0], [0, 0]]
            assert [p["items"] for p in keeper.kept] == [[], [], []]
            assert sorted(recorder.keys("add")) == [f"default/c{i}" for i in range(5)]
            assert informer.store.get("default/c3") == {
                **cm("c3"),
                "metadata": recorder.of("add")[3][2]["metadata"],
            }


async def test_an_expired_continue_token_lists_everything_again_in_one_request(
    api: RunningApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As client-go's pager: a 410 mid-list means one unpaged list, and the cache is exactly that list
    (nothing of the pages before the 410 stays)."""
    monkeypatch.setattr(informer_mod, "PAGE_SIZE", 2)
    for i in range(5):
        put(api, f"c{i}")

    def expire_and_write() -> None:
        api.cluster.snapshots.clear()  # the continue token no longer resolves: 410 on the next page
        remove(api, "c0")  # on the first page
        put(api, "late")

    async with fast_client(api.url, PageKeeper) as keeper:
        keeper.on_first_page = expire_and_write
        informer = Informer(keeper, CONFIG_MAP, "default")
        recorder = Recorder()
        informer.add_handler(recorder)
        async with running(informer):
            pages = [(p.get("limit"), bool(p.get("continue_"))) for p in keeper.asked]
            assert pages == [(2, False), (2, True), (None, False)]
            expected = ["default/c1", "default/c2", "default/c3", "default/c4", "default/late"]
            assert sorted(informer.store.list_keys()) == expected
            assert sorted(recorder.keys("add")) == expected  # c0, gone before the list ended, never added
            assert recorder.of("delete") == []


async def test_handlers_and_readers_get_their_own_objects(api: RunningApiServer, client: KubeClient) -> None:
    """The cache holds encoded objects: what a handler or a lister reader changes stays theirs."""
    put(api, "a")

    def scribble(obj: Obj, initial: bool) -> None:
        obj["data"]["k"] = "changed by a handler"

    informer = Informer(client, CONFIG_MAP, "default")
    informer.add_handler(FuncHandler(add=scribble))
    async with running(informer):
        lister = Lister([informer])
        got = lister.get("default", "a")
        assert got is not None and got["data"] == {"k": "v"}
        got["data"]["k"] = "changed by a reader"
        assert [o["data"] for o in lister.list()] == [{"k": "v"}]
        assert [o["data"] for o in lister.iterate()] == [{"k": "v"}]
        assert [o["data"] for o in lister.by_index("namespace", "default")] == [{"k": "v"}]


async def test_lister_iterate_decodes_one_object_at_a_time(api: RunningApiServer, client: KubeClient) -> None:
    for ns in ("a", "b"):
        api.cluster.ensure_namespace(ns)
        put(api, "x", ns)
    factory = InformerFactory(client, namespaces=("a", "b"))
    lister = factory.lister(CONFIG_MAP)
    async with anyio.create_task_group() as tg:
        tg.start_soon(factory.run)
        await eventually(lambda: factory.has_synced)
        scan = lister.iterate()
        first = next(scan)
        put(
            api, "y", "b"
        )  # written after the scan began, before it reached b: not seen (a snapshot per store)
        rest = list(scan)
        assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in [first, *rest]] == [
            ("a", "x"),
            ("b", "x"),
        ]
        tg.cancel_scope.cancel()


async def test_lister_names_by_index_across_namespaces_and_scopes(
    api: RunningApiServer, client: KubeClient
) -> None:
    for ns in ("a", "b"):
        api.cluster.ensure_namespace(ns)
        put(api, "x", ns)
    put(api, "y", "b")
    factory = InformerFactory(client, namespaces=("a", "b"))
    lister = factory.lister(CONFIG_MAP)
    namespaces = factory.lister(NAMESPACE)
    async with anyio.create_task_group() as tg:
        tg.start_soon(factory.run)
        await eventually(lambda: factory.has_synced)
        assert lister.names_by_index("namespace", "b") == [
            (o["metadata"]["namespace"], o["metadata"]["name"]) for o in lister.by_index("namespace", "b")
        ]
        assert lister.names_by_index("namespace", "b") == [("b", "x"), ("b", "y")]
        assert lister.names_by_index("namespace", "c") == []
        # Cluster-scoped objects have no namespace in their keys.
        assert ("", "a") in namespaces.names_by_index("namespace", "")
        tg.cancel_scope.cancel()


async def test_watch_delivers_adds_updates_and_deletes(api: RunningApiServer, client: KubeClient) -> None:
    put(api, "pre")
    informer = Informer(client, CONFIG_MAP, "default")
    recorder = Recorder()
    informer.add_handler(recorder)
    async with running(informer):
        created = await client.create(CONFIG_MAP, cm("new"))
        _, _, added, initial = await recorder.wait_event("add", "default/new")
        assert initial is False and rv(added) == rv(created)
        assert informer.store.get("default/new") == added

        updated = await client.merge_patch(CONFIG_MAP, "new", {"data": {"k": "v2"}}, "default")
        _, _, old, new = await recorder.wait_event("update", "default/new")
        assert old == added  # the previously cached object
        assert new["data"] == {"k": "v2"} and rv(new) == rv(updated)
        assert informer.store.get("default/new") == new

        await client.delete(CONFIG_MAP, "new", "default")
        _, _, gone, state_unknown = await recorder.wait_event("delete", "default/new")
        assert state_unknown is False
        assert gone["data"] == {"k": "v2"}  # the last state of the object
        assert "default/new" not in informer.store
        assert "default/pre" in informer.store
        assert informer.last_sync_rv == rv(gone)
        assert informer.relists == 1


async def test_managed_fields_are_stripped_by_default(api: RunningApiServer, client: KubeClient) -> None:
    await client.create(CONFIG_MAP, cm("listed"))
    stripped = Informer(client, CONFIG_MAP, "default")
    raw = Informer(client, CONFIG_MAP, "default", transform=None)
    seen, seen_raw = Recorder(), Recorder()
    stripped.add_handler(seen)
    raw.add_handler(seen_raw)
    async with running(stripped, raw):
        await client.create(CONFIG_MAP, cm("watched"))
        await seen.wait_event("add", "default/watched")
        await seen_raw.wait_event("add", "default/watched")
    # The emulator does send managedFields (the untransformed informer keeps them) ...
    assert all("managedFields" in e[2]["metadata"] for e in seen_raw.of("add"))
    # ... and the default transform drops them from both the list and the watch.
    assert len(seen.of("add")) == 2
    assert all("managedFields" not in e[2]["metadata"] for e in seen.of("add"))
    assert all("managedFields" not in o["metadata"] for o in stripped.store.values())


async def test_has_synced_and_wait_synced(api: RunningApiServer) -> None:
    """Synced once the first list is in the cache; waiters are released then (the list is held back here)."""
    async with fast_client(api.url) as client:
        slow = api.faults.add(FaultRule(method="GET", path="/configmaps$", status=0, latency=0.3, count=1))
        informer = Informer(client, CONFIG_MAP, "default")
        waited = anyio.Event()

        async def waiter() -> None:
            await informer.wait_synced()
            waited.set()

        async with running(informer, sync=False) as tg:
            tg.start_soon(waiter)
            await eventually(lambda: slow.hits == 1)
            assert not informer.has_synced and not waited.is_set()
            with anyio.fail_after(DEADLINE):
                await waited.wait()
            assert informer.has_synced


# ---------------------------------------------------------------------------------------------- watching
async def test_resume_after_dropped_watch_without_relist_or_missed_events(
    api: RunningApiServer, client: KubeClient
) -> None:
    put(api, "a")
    put(api, "b")
    informer = Informer(client, CONFIG_MAP, "default")
    recorder = Recorder()
    informer.add_handler(recorder)
    async with running(informer):
        await mark(client, recorder, "marker")
        watches = informer.watches
        assert api.cluster.drop_watches() == 1
        # While the informer is away (nothing can run before the next await):
        put(api, "c")
        patch(api, "a", {"data": {"k": "changed"}})
        remove(api, "b")
        await recorder.wait_event("add", "default/c")
        _, _, _, new = await recorder.wait_event("update", "default/a")
        _, _, _, state_unknown = await recorder.wait_event("delete", "default/b")
        assert new["data"] == {"k": "changed"}
        assert state_unknown is False  # replayed from the watch history, not found missing by a relist
        assert informer.relists == 1
        assert informer.watches == watches + 1
        assert sorted(informer.store.list_keys()) == ["default/a", "default/c", "default/marker"]


async def test_bookmarks_advance_the_resume_point_in_quiet_periods(
    api: RunningApiServer, client: KubeClient
) -> None:
    informer = Informer(client, CONFIG_MAP, "default")
    recorder = Recorder()
    informer.add_handler(recorder)
    async with running(informer):
        await mark(client, recorder, "marker")
        before = informer.last_sync_rv
        secrets = api.cluster.lookup("", "v1", "secrets")
        for i in range(3):  # other kinds move the resourceVersion; nothing this informer watches changes
            api.cluster.create(secrets, "v1", "default", {"metadata": {"name": f"s{i}"}})
        target = str(api.cluster.rv)
        assert int(target) > int(before)
        await eventually(lambda: informer.last_sync_rv == target, what="a bookmark at the latest RV")
        assert len(recorder.events) == 1  # bookmarks are not delivered to handlers
        # Because of the bookmark the informer can resume after its history is compacted: no 410, no relist.
        api.cluster.compact()
        api.cluster.drop_watches()
        await mark(client, recorder, "after")
        assert informer.relists == 1


async def test_410_relists_and_reconciles_what_changed_while_away(
    api: RunningApiServer, spy: SpyClient, backoff: type[RecordingBackoff]
) -> None:
    for name in ("a", "b", "c"):
        put(api, name)
    informer = Informer(spy, CONFIG_MAP, "default")
    recorder = Recorder()
    informer.add_handler(recorder)
    async with running(informer):
        list_rv = informer.last_sync_rv
        await mark(spy, recorder, "marker")
        cached_a = informer.store.get("default/a")
        resume_rv = informer.last_sync_rv
        assert int(resume_rv) > int(list_rv)
        seen = len(recorder.events)
        # While away: a is deleted, b changed, d added; then the history is compacted past the resume point.
        api.cluster.drop_watches()
        remove(api, "a")
        patch(api, "b", {"data": {"k": "changed"}})
        put(api, "d")
        api.cluster.compact()

        await recorder.wait_for(lambda r: len(r.events) >= seen + 4)
        missed = recorder.events[seen:]
        assert [(e[0], e[1]) for e in missed] == [
            ("delete", "default/a"),  # deletions first, as client-go's atomic Replace delivers them
            ("update", "default/b"),
            ("update", "default/b"),  # and again as a resync: events were missed in between
            ("add", "default/d"),
        ]
        _, _, last_known, state_unknown = missed[0]
        assert state_unknown is True
        assert last_known == cached_a  # the last state the cache knew
        assert missed[1][2]["data"] != {"k": "changed"} and missed[1][3]["data"] == {"k": "changed"}
        assert missed[2][2] is missed[2][3] and missed[2][3]["data"] == {"k": "changed"}
        assert missed[3][3] is False  # not in the initial list
        assert informer.relists == 2
        assert len(backoff.delays) == 1  # the relist came after a backoff
        # The relist asked for "not older than" the last RV seen (from the watch), not the old list's RV,
        # and unpaginated: with a limit, kube-apiserver would read exactly that old version from etcd (found
        # against the real control plane: the next watch was 410 again, until etcd compacted).
        relist_page = spy.asked[-1]
        assert relist_page["resource_version"] == resume_rv
        assert not relist_page["limit"]  # no limit sent
        assert sorted(informer.store.list_keys()) == ["default/b", "default/c", "default/d", "default/marker"]
        await mark(spy, recorder, "after")  # and watching goes on
        assert not any(e[1] == "default/c" for e in recorder.events[seen:])  # unchanged: not redelivered


async def test_a_change_and_its_undoing_missed_while_away_still_reach_a_changed_filter(
    api: RunningApiServer, spy: SpyClient, backoff: type[RecordingBackoff]
) -> None:
    """A controller that filters updates by what it reads (``changed``) sees, after a relist, only the two
    ends of what it missed. A label added and removed again while the watch was broken leaves ends that
    look alike; without the resync the relist also delivers, the object would wait for the periodic resync
    (hours): the kpack Build controller's finalizer, removed by another while away, would stay off."""
    put(api, "a")
    informer = Informer(spy, CONFIG_MAP, "default")
    recorder = Recorder()
    informer.add_handler(recorder)

    async def noop(request: Request) -> None:
        return None

    controller = Controller("c", noop)
    controller.watch(informer, predicates=[changed(lambda o: o["metadata"].get("labels"))])
    async with running(informer):
        await mark(spy, recorder, "marker")
        while len(controller.queue):  # what the initial list and the marker enqueued
            controller.queue.done(await controller.queue.get())
        api.cluster.drop_watches()
        patch(api, "a", {"metadata": {"labels": {"finalizer": "added"}}})
        patch(api, "a", {"metadata": {"labels": {"finalizer": None}}})
        api.cluster.compact()
        await recorder.wait_for(lambda r: any(e[0] == "update" and e[2] is e[3] for e in r.events))
        with anyio.fail_after(DEADLINE):
            assert await controller.queue.get() == Request("default", "a")


async def test_an_expired_relist_falls_back_to_a_consistent_read(
    api: RunningApiServer, spy: SpyClient, backoff: type[RecordingBackoff]
) -> None:
    informer = Informer(spy, CONFIG_MAP, "default")
    recorder = Recorder()
    informer.add_handler(recorder)
    async with running(informer):
        await mark(spy, recorder, "marker")
        resume_rv = informer.last_sync_rv
        pages = len(spy.asked)
        # The re-watch fails with a 500 (-> relist); that relist is told its resourceVersion is too old.
        api.faults.add(FaultRule(method="GET", path="/configmaps$", status=500, count=1))
        api.faults.add(FaultRule(method="GET", path="/configmaps$", status=410, count=1))
        api.cluster.drop_watches()
        await eventually(lambda: informer.relists == 2)
        assert [p["resource_version"] for p in spy.asked[pages:]] == [resume_rv, ""]
        assert [p["limit"] or None for p in spy.asked[pages:]] == [None, 500]  # the consistent read is paged
        await mark(spy, recorder, "after")


async def test_a_very_short_empty_watch_means_relist(real_backoff: type[RecordingBackoff]) -> None:
    async with (
        running_apiserver(bookmark_interval=0) as api,  # no bookmarks: a fresh watch stays empty
        fast_client(api.url) as client,
    ):
        api.cluster.ensure_namespace("default")
        clock = FakeClock()  # frozen: any watch is "shorter than a second"
        informer = Informer(client, CONFIG_MAP, "default", clock=clock)
        async with running(informer):
            await eventually(lambda: len(list(api.cluster.open_watches())) == 1)
            api.cluster.drop_watches()  # closed with zero events
            await eventually(lambda: clock.sleepers == 1, what="the informer backing off")
            assert informer.relists == 1
            clock.advance(real_backoff.delays[-1])
            await eventually(lambda: informer.relists == 2)


# ---------------------------------------------------------------------------------------------- errors
async def test_list_errors_back_off_with_growing_delays(
    api: RunningApiServer, real_backoff: type[RecordingBackoff]
) -> None:
    async with fast_client(api.url, max_throttle_retries=0) as client:
        failed = api.faults.add(FaultRule(method="GET", path="/configmaps$", status=500, count=1))
        throttled = api.faults.add(FaultRule(method="GET", path="/configmaps$", status=429, count=1))
        clock = FakeClock()
        informer = Informer(client, CONFIG_MAP, "default", clock=clock)
        async with running(informer, sync=False):
            await eventually(lambda: clock.sleepers == 1 and failed.hits == 1)
            assert not informer.has_synced
            assert len(real_backoff.delays) == 1 and 0.8 <= real_backoff.delays[0] < 1.6
            clock.advance(real_backoff.delays[0] - 0.01)
            assert throttled.hits == 0  # still backing off
            clock.advance(0.02)
            await eventually(lambda: throttled.hits == 1 and clock.sleepers == 1)
            assert not informer.has_synced
            assert len(real_backoff.delays) == 2 and 1.6 <= real_backoff.delays[1] < 3.2
            clock.advance(real_backoff.delays[1])
            with anyio.fail_after(DEADLINE):
                await informer.wait_synced()
            assert informer.relists == 1


async def test_watch_429_rewatches_after_backoff_but_500_relists(
    api: RunningApiServer, real_backoff: type[RecordingBackoff]
) -> None:
    async with fast_client(api.url, max_throttle_retries=0) as client:
        clock = FakeClock()
        informer = Informer(client, CONFIG_MAP, "default", clock=clock)
        recorder = Recorder()
        informer.add_handler(recorder)
        async with running(informer):
            await mark(client, recorder, "marker")

            throttled = api.faults.add(FaultRule(method="GET", path="/configmaps$", status=429, count=1))
            api.cluster.drop_watches()
            await eventually(lambda: throttled.hits == 1 and clock.sleepers == 1)
            put(api, "while-throttled")
            clock.advance(real_backoff.delays[-1])
            await recorder.wait_event("add", "default/while-throttled")
            assert informer.relists == 1  # re-watched from the same resourceVersion

            failed = api.faults.add(FaultRule(method="GET", path="/configmaps$", status=500, count=1))
            api.cluster.drop_watches()
            await eventually(lambda: failed.hits == 1 and clock.sleepers == 1)
            assert informer.relists == 1
            clock.advance(real_backoff.delays[-1])
            await eventually(lambda: informer.relists == 2)
            await mark(client, recorder, "after")
            assert len(real_backoff.delays) == 2
            assert 1.6 <= real_backoff.delays[1] < 3.2  # the second failure in a row waits longer


async def test_a_failing_handler_does_not_stall_the_others(
    api: RunningApiServer, client: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    put(api, "a")
    calls: list[str] = []

    def boom(*args: Any) -> None:
        calls.append("call")
        raise RuntimeError("handler bug")

    informer = Informer(client, CONFIG_MAP, "default")
    informer.add_handler(FuncHandler(boom, boom, boom))
    recorder = Recorder()
    informer.add_handler(recorder)
    with caplog.at_level(logging.ERROR, logger="service.runtime.informer"):
        async with running(informer):
            await client.create(CONFIG_MAP, cm("b"))
            await client.merge_patch(CONFIG_MAP, "b", {"data": {"k": "2"}}, "default")
            await client.delete(CONFIG_MAP, "b", "default")
            await recorder.wait_event("delete", "default/b")
    assert [e[0] for e in recorder.events] == ["add", "add", "update", "delete"]
    assert len(calls) == 4  # the failing handler was still called for every event
    assert sum("event handler failed" in r.getMessage() for r in caplog.records) == 4


# ---------------------------------------------------------------------------------------------- resync, handlers
async def test_resync_redelivers_every_cached_object_as_an_update(
    api: RunningApiServer, client: KubeClient
) -> None:
    put(api, "a")
    put(api, "b")
    clock = FakeClock()
    informer = Informer(client, CONFIG_MAP, "default", resync_period=30.0, clock=clock)
    recorder = Recorder()
    informer.add_handler(recorder)
    async with running(informer):
        await eventually(lambda: clock.sleepers == 1, what="the resync timer")
        clock.advance(29.0)
        assert recorder.of("update") == []
        clock.advance(1.0)
        await recorder.wait_for(lambda r: len(r.of("update")) == 2)
        for _, key, old, new in recorder.of("update"):
            assert old is new and new == informer.store.get(key)  # the cached state, unchanged
        await eventually(lambda: clock.sleepers == 1)
        clock.advance(30.0)
        await recorder.wait_for(lambda r: len(r.of("update")) == 4)
        assert sorted(recorder.keys("update")) == ["default/a"] * 2 + ["default/b"] * 2
        assert informer.relists == 1  # resync is local: nothing was listed again


async def test_a_handler_added_after_sync_gets_synthetic_adds(
    api: RunningApiServer, client: KubeClient
) -> None:
    put(api, "a")
    put(api, "b")
    informer = Informer(client, CONFIG_MAP, "default")
    async with running(informer):
        late = Recorder()
        informer.add_handler(late)
        assert sorted((e[1], e[3]) for e in late.events) == [("default/a", True), ("default/b", True)]
        await client.create(CONFIG_MAP, cm("c"))
        _, _, _, initial = await late.wait_event("add", "default/c")
        assert initial is False


async def test_an_index_added_to_a_running_informer(api: RunningApiServer, client: KubeClient) -> None:
    put(api, "a", metadata={"labels": {"team": "red"}})
    informer = Informer(client, CONFIG_MAP, "default")
    recorder = Recorder()
    informer.add_handler(recorder)
    async with running(informer):
        informer.add_indexer("team", by_label("team"))
        informer.add_indexer("team", by_label("other"))  # already there: kept as it is
        assert informer.store.index_keys("team", "red") == ["default/a"]
        await client.create(CONFIG_MAP, cm("b", metadata={"labels": {"team": "red"}}))
        await recorder.wait_event("add", "default/b")
        assert informer.store.index_keys("team", "red") == ["default/a", "default/b"]


# ---------------------------------------------------------------------------------------------- factory
async def test_factory_shares_informers_by_resource_namespace_and_selector(client: KubeClient) -> None:
    clock = FakeClock()
    factory = InformerFactory(client, clock=clock, resync_period=60.0)
    shared = factory.get(CONFIG_MAP)
    assert factory.get(CONFIG_MAP) is shared
    assert factory.get(CONFIG_MAP, None, None) is shared
    assert factory.get(CONFIG_MAP, "ns1") is not shared
    assert factory.get(CONFIG_MAP, label_selector="app=x") is not shared
    assert factory.get(SECRET) is not shared
    assert factory.get(NAMESPACE, "ignored") is factory.get(NAMESPACE)  # cluster-scoped: no namespace
    assert factory.get(NAMESPACE).namespace is None
    assert len(factory.informers) == 5
    assert shared.clock is clock and shared.resync_period == 60.0
    assert factory.informers_for(CONFIG_MAP) == [shared]  # no namespaces: one informer for all
    assert not factory.has_synced
    assert "configmaps@*" in factory.unsynced()


async def test_factory_namespaces_scope_the_informers(api: RunningApiServer, client: KubeClient) -> None:
    for ns in ("a", "b", "c"):
        api.cluster.ensure_namespace(ns)
        put(api, f"in-{ns}", ns)
    factory = InformerFactory(client, namespaces=("a", "b"))
    scoped = factory.informers_for(CONFIG_MAP)
    assert [i.namespace for i in scoped] == ["a", "b"]
    assert factory.informers_for(CONFIG_MAP) == scoped
    namespaces = factory.informers_for(NAMESPACE)  # cluster-scoped: one, over everything
    assert [i.namespace for i in namespaces] == [None]
    async with anyio.create_task_group() as tg:
        tg.start_soon(factory.run)
        await eventually(lambda: factory.has_synced)
        assert factory.unsynced() == []
        assert scoped[0].store.list_keys() == ["a/in-a"]
        assert scoped[1].store.list_keys() == ["b/in-b"]
        assert {"a", "b", "c", "default"} <= set(namespaces[0].store.list_keys())
        with pytest.raises(RuntimeError, match="after the factory started"):
            factory.get(SECRET)
        assert factory.get(CONFIG_MAP, "a") is scoped[0]  # existing ones are still handed out
        tg.cancel_scope.cancel()


async def test_a_field_selector_caches_only_the_objects_it_names(
    api: RunningApiServer, client: KubeClient
) -> None:
    for ns in ("a", "b"):
        api.cluster.ensure_namespace(ns)
        put(api, "wanted", ns)
        put(api, f"other-{ns}", ns)
    factory = InformerFactory(client)
    [named] = factory.informers_for(CONFIG_MAP, field_selector="metadata.name=wanted")
    assert factory.get(CONFIG_MAP) is not named  # one informer per field selector too
    assert "[metadata.name=wanted]" in named.name
    async with anyio.create_task_group() as tg:
        tg.start_soon(factory.run)
        await eventually(lambda: factory.has_synced)
        assert sorted(named.store.list_keys()) == ["a/wanted", "b/wanted"]
        put(api, "wanted", "default")  # the watch follows the selector too
        put(api, "other-default", "default")
        await eventually(lambda: "default/wanted" in named.store.list_keys())
        assert "default/other-default" not in named.store.list_keys()
        tg.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------- backoff
def test_backoff_doubles_with_full_jitter_up_to_the_cap() -> None:
    clock = FakeClock()
    backoff = Backoff(clock, rng=random.Random(7))
    delays = [backoff.next() for _ in range(10)]
    for delay, base in zip(delays, [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30, 30, 30], strict=True):
        assert base <= delay < 2 * base


def test_backoff_without_jitter_and_its_reset_after_two_calm_minutes() -> None:
    clock = FakeClock()
    backoff = Backoff(clock, jitter=0.0)
    assert [backoff.next() for _ in range(8)] == pytest.approx([0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30])
    clock.advance(120.0)
    assert backoff.next() == 30  # exactly two minutes is not "more than"
    clock.advance(120.1)
    assert [backoff.next() for _ in range(2)] == pytest.approx([0.8, 1.6])
