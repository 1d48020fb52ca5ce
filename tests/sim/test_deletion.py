"""Deletion: finalizers, preconditions, delete-collection, and the three propagation policies."""

from __future__ import annotations

import re

import pytest

from tests.sim.conftest import (
    CM,
    GROUP,
    WIDGETS,
    Kube,
    Obj,
    assert_status,
    configmap,
    eventually,
    owner_ref,
    widget,
)

pytestmark = pytest.mark.anyio

HOLD = "example.com/hold"


async def test_delete_without_finalizers_removes_at_once(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    reply = await kube.delete(kube.path(WIDGETS, name="w1"))
    assert reply.status == 200
    # Custom resources (like ConfigMaps) answer with a Success Status naming what went.
    assert reply.body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": "w1", "group": GROUP, "kind": "widgets", "uid": created["metadata"]["uid"]},
    }
    assert await kube.gone(WIDGETS, "w1")
    assert_status(
        await kube.delete(kube.path(WIDGETS, name="w1")),
        404,
        "NotFound",
        'widgets.example.com "w1" not found',
    )


async def test_some_kinds_answer_a_delete_with_the_object(kube: Kube) -> None:
    await kube.create("/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "sa"}})
    reply = await kube.delete(f"/api/v1/namespaces/{kube.ns}/serviceaccounts/sa")
    assert reply.status == 200
    assert reply.body["kind"] == "ServiceAccount"
    assert reply.body["metadata"]["name"] == "sa"


async def test_finalizers_hold_the_object_until_removed(kube: Kube, widgets: Obj) -> None:
    body = widget("w1")
    body["metadata"]["finalizers"] = [HOLD, "example.com/other"]
    created = await kube.create(WIDGETS, body)
    url = kube.path(WIDGETS, name="w1")
    async with kube.watching(kube.path(WIDGETS), resourceVersion=created["metadata"]["resourceVersion"]) as w:
        reply = await kube.delete(url)
        assert reply.status == 200
        meta = reply.body["metadata"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["deletionTimestamp"])
        assert meta["deletionGracePeriodSeconds"] == 0
        assert meta["finalizers"] == [HOLD, "example.com/other"]
        modified = await w.expect("MODIFIED", "w1")
        assert modified["metadata"]["deletionTimestamp"] == meta["deletionTimestamp"]

        # Still there; a second delete changes nothing.
        got = await kube.must_get(WIDGETS, "w1")
        assert got["metadata"]["deletionTimestamp"] == meta["deletionTimestamp"]
        again = await kube.delete(url)
        assert again.status == 200
        assert again.rv == reply.rv

        # Other changes are still allowed, but no new finalizers.
        status = assert_status(
            await kube.patch(
                url, {"metadata": {"finalizers": [HOLD, "example.com/other", "example.com/new"]}}
            ),
            422,
            "Invalid",
        )
        assert status["details"]["causes"][0]["field"] == "metadata.finalizers"
        assert "no new finalizers can be added if the object is being deleted" in status["message"]
        labelled = await kube.patch(url, {"metadata": {"labels": {"a": "b"}}})
        assert labelled.status == 200
        await w.expect("MODIFIED", "w1")

        one = await kube.patch(url, {"metadata": {"finalizers": ["example.com/other"]}})
        assert one.status == 200
        await w.expect("MODIFIED", "w1")
        assert not await kube.gone(WIDGETS, "w1")

        last = await kube.patch(url, {"metadata": {"finalizers": []}})
        assert last.status == 200
        assert not last.body["metadata"].get("finalizers")  # the writer gets its object back, never stored
        assert last.rv == one.rv
        deleted = await w.expect("DELETED", "w1")
        # Watchers see the last stored state go, at the deletion's resourceVersion.
        assert deleted["metadata"]["finalizers"] == ["example.com/other"]
        assert int(deleted["metadata"]["resourceVersion"]) > int(one.rv)
        assert await kube.gone(WIDGETS, "w1")


async def test_delete_preconditions(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    url = kube.path(WIDGETS, name="w1")
    uid, rv = created["metadata"]["uid"], created["metadata"]["resourceVersion"]
    status = assert_status(
        await kube.delete(url, {"preconditions": {"uid": "not-the-uid"}}),
        409,
        "Conflict",
        f'Operation cannot be fulfilled on Widget.example.com "w1": the UID in the precondition '
        f"(not-the-uid) does not match the UID in record ({uid}). The object might have been deleted "
        "and then recreated",
    )
    assert status["details"] == {"name": "w1", "group": GROUP, "kind": "Widget"}
    patched = await kube.patch(url, {"spec": {"size": 2}})
    assert_status(
        await kube.delete(url, {"preconditions": {"resourceVersion": rv}}),
        409,
        "Conflict",
        f'Operation cannot be fulfilled on Widget.example.com "w1": the ResourceVersion in the '
        f"precondition ({rv}) does not match the ResourceVersion in record ({patched.rv}). The object "
        "might have been modified",
    )
    assert not await kube.gone(WIDGETS, "w1")
    current = await kube.must_get(WIDGETS, "w1")
    ok = await kube.delete(
        url,
        {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": uid, "resourceVersion": current["metadata"]["resourceVersion"]},
        },
    )
    assert ok.status == 200
    assert await kube.gone(WIDGETS, "w1")


async def test_delete_collection_by_label_selector(kube: Kube) -> None:
    for name, tier in (("a", "web"), ("b", "web"), ("c", "db")):
        await kube.create(CM, configmap(name, {"tier": tier}))
    other = await kube.namespace("other")
    await kube.create(CM, configmap("d", {"tier": "web"}), ns=other)
    reply = await kube.delete(kube.path(CM), labelSelector="tier=web")
    assert reply.status == 200
    assert reply.body["kind"] == "ConfigMapList"
    assert sorted(kube.names(reply.body)) == ["a", "b"]
    remaining = await kube.get(kube.path(CM))
    assert kube.names(remaining.body) == ["c"]
    assert not await kube.gone(CM, "d", ns=other)  # other namespaces are untouched


async def test_background_propagation_removes_dependents_after_the_owner(kube: Kube) -> None:
    owner = await kube.create(CM, configmap("owner"))
    for name in ("dep1", "dep2"):
        await kube.create(CM, configmap(name, metadata={"ownerReferences": [owner_ref(owner)]}))
    bystander = await kube.create(CM, configmap("bystander"))
    reply = await kube.delete(kube.path(CM, name="owner"))  # Background is the default
    assert reply.status == 200
    assert await kube.gone(CM, "owner")  # the owner goes at once

    async def dependents_gone() -> bool:
        return await kube.gone(CM, "dep1") and await kube.gone(CM, "dep2")

    await eventually(dependents_gone)
    assert (await kube.must_get(CM, "bystander"))["metadata"]["uid"] == bystander["metadata"]["uid"]


async def test_explicit_background_propagation(kube: Kube) -> None:
    owner = await kube.create(CM, configmap("owner"))
    await kube.create(CM, configmap("dep", metadata={"ownerReferences": [owner_ref(owner)]}))
    reply = await kube.delete(kube.path(CM, name="owner"), {"propagationPolicy": "Background"})
    assert reply.status == 200
    assert await kube.gone(CM, "owner")

    async def gone() -> bool:
        return await kube.gone(CM, "dep")

    await eventually(gone)


async def test_foreground_propagation_waits_for_blocking_dependents(kube: Kube) -> None:
    # ConfigMaps, not a CRD's kind: kube-controller-manager's collector learns of new kinds only every 30 s.
    owner = await kube.create(CM, configmap("owner"))
    blocking = configmap(
        "blocking",
        # the finalizer keeps the dependent (and so the owner) around
        metadata={"ownerReferences": [owner_ref(owner, blockOwnerDeletion=True)], "finalizers": [HOLD]},
    )
    await kube.create(CM, blocking)
    await kube.create(CM, configmap("plain", metadata={"ownerReferences": [owner_ref(owner)]}))

    reply = await kube.delete(kube.path(CM, name="owner"), propagationPolicy="Foreground")
    assert reply.status == 200
    assert "foregroundDeletion" in reply.body["metadata"]["finalizers"]
    assert reply.body["metadata"]["deletionTimestamp"]

    async def dependents_deleting() -> bool:
        dep = await kube.must_get(CM, "blocking")
        return bool(dep["metadata"].get("deletionTimestamp")) and await kube.gone(CM, "plain")

    await eventually(dependents_deleting)
    held = await kube.must_get(CM, "owner")
    assert held["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert held["metadata"]["deletionTimestamp"]

    await kube.patch(kube.path(CM, name="blocking"), {"metadata": {"finalizers": None}})

    async def all_gone() -> bool:
        return await kube.gone(CM, "blocking") and await kube.gone(CM, "owner")

    await eventually(all_gone)


async def test_foreground_without_blocking_dependents_finishes(kube: Kube) -> None:
    owner = await kube.create(CM, configmap("owner"))
    await kube.create(CM, configmap("dep", metadata={"ownerReferences": [owner_ref(owner)]}))
    reply = await kube.delete(kube.path(CM, name="owner"), {"propagationPolicy": "Foreground"})
    assert reply.status == 200
    assert reply.body["metadata"]["finalizers"] == ["foregroundDeletion"]

    async def gone() -> bool:
        return await kube.gone(CM, "owner") and await kube.gone(CM, "dep")

    await eventually(gone)


async def test_orphan_propagation_keeps_dependents(kube: Kube) -> None:
    owner = await kube.create(CM, configmap("owner"))
    other = await kube.create(CM, configmap("other-owner"))
    await kube.create(
        CM, configmap("dep", metadata={"ownerReferences": [owner_ref(owner), owner_ref(other)]})
    )
    await kube.create(CM, configmap("dep2", metadata={"ownerReferences": [owner_ref(owner)]}))
    reply = await kube.delete(kube.path(CM, name="owner"), propagationPolicy="Orphan")
    assert reply.status == 200
    assert "orphan" in reply.body["metadata"]["finalizers"]

    async def owner_gone() -> bool:
        return await kube.gone(CM, "owner")

    await eventually(owner_gone)
    dep = await kube.must_get(CM, "dep")
    assert dep["metadata"]["ownerReferences"] == [owner_ref(other)]
    dep2 = await kube.must_get(CM, "dep2")
    assert not dep2["metadata"].get("ownerReferences")


async def test_orphan_dependents_option(kube: Kube) -> None:
    owner = await kube.create(CM, configmap("owner"))
    await kube.create(CM, configmap("dep", metadata={"ownerReferences": [owner_ref(owner)]}))
    reply = await kube.delete(kube.path(CM, name="owner"), {"orphanDependents": True})
    assert reply.status == 200

    async def owner_gone() -> bool:
        return await kube.gone(CM, "owner")

    await eventually(owner_gone)
    assert not (await kube.must_get(CM, "dep"))["metadata"].get("ownerReferences")


async def test_bad_propagation_policy(kube: Kube) -> None:
    await kube.create(CM, configmap("c1"))
    status = assert_status(
        await kube.delete(kube.path(CM, name="c1"), propagationPolicy="Sideways"),
        422,
        "Invalid",
        'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "Sideways": '
        'supported values: "Foreground", "Background", "Orphan", "nil"',
    )
    assert status["details"]["causes"][0]["field"] == "propagationPolicy"
    both = {"orphanDependents": True, "propagationPolicy": "Orphan"}
    assert_status(await kube.delete(kube.path(CM, name="c1"), both), 422, "Invalid")
    assert not await kube.gone(CM, "c1")


async def test_existing_gc_finalizer_decides_without_a_policy(kube: Kube) -> None:
    owner = await kube.create(CM, configmap("owner", metadata={"finalizers": ["orphan"]}))
    await kube.create(CM, configmap("dep", metadata={"ownerReferences": [owner_ref(owner)]}))
    reply = await kube.delete(kube.path(CM, name="owner"))
    assert reply.status == 200
    assert reply.body["metadata"]["finalizers"] == ["orphan"]

    async def owner_gone() -> bool:
        return await kube.gone(CM, "owner")

    await eventually(owner_gone)
    assert not (await kube.must_get(CM, "dep"))["metadata"].get("ownerReferences")


async def test_explicit_policy_replaces_a_gc_finalizer(kube: Kube) -> None:
    owner = await kube.create(CM, configmap("owner", metadata={"finalizers": ["orphan"]}))
    await kube.create(CM, configmap("dep", metadata={"ownerReferences": [owner_ref(owner)]}))
    reply = await kube.delete(kube.path(CM, name="owner"), propagationPolicy="Background")
    assert reply.status == 200
    assert reply.body["kind"] == "Status"  # no finalizer left: deleted at once
    assert await kube.gone(CM, "owner")

    async def dep_gone() -> bool:
        return await kube.gone(CM, "dep")

    await eventually(dep_gone)


async def test_pending_delete_with_orphan_dependents_false_is_accepted(kube: Kube) -> None:
    await kube.create(CM, configmap("held", metadata={"finalizers": [HOLD]}))
    reply = await kube.delete(kube.path(CM, name="held"), {"orphanDependents": False})
    assert reply.status == 202
    assert reply.body["metadata"]["deletionTimestamp"]
