"""Garbage collection: dangling owner references, and namespace deletion."""

from __future__ import annotations

import uuid

import pytest

from simcluster.cluster import Cluster
from tests.sim.conftest import (
    BW,
    CM,
    GROUP,
    NAMESPACES,
    Kube,
    Obj,
    assert_status,
    build_workload,
    configmap,
    dead_ref,
    eventually,
    owner_ref,
    widget,
    widget_crd,
)

pytestmark = pytest.mark.anyio


async def test_object_whose_every_owner_is_gone_is_collected(kube: Kube) -> None:
    await kube.create(CM, configmap("orphan", metadata={"ownerReferences": [dead_ref("a"), dead_ref("b")]}))
    await kube.create(CM, configmap("unowned"))

    async def collected() -> bool:
        return await kube.gone(CM, "orphan")

    await eventually(collected)
    assert not await kube.gone(CM, "unowned")


async def test_dead_owner_reference_is_dropped_when_another_owner_lives(kube: Kube) -> None:
    live = await kube.create(CM, configmap("live"))
    dead = dead_ref("dead")
    await kube.create(CM, configmap("dep", metadata={"ownerReferences": [dead, owner_ref(live)]}))

    async def cleaned() -> bool:
        refs = (await kube.must_get(CM, "dep"))["metadata"].get("ownerReferences")
        return refs == [owner_ref(live)]

    await eventually(cleaned)
    assert not await kube.gone(CM, "dep")


async def test_owner_reference_must_match_name_and_namespace(kube: Kube) -> None:
    """The collector looks an owner up by kind, name and the dependent's namespace, then checks its uid."""
    elsewhere = await kube.namespace("elsewhere")
    far = await kube.create(CM, configmap("far-owner"), ns=elsewhere)
    await kube.create(CM, configmap("cross-ns", metadata={"ownerReferences": [owner_ref(far)]}))
    near = await kube.create(CM, configmap("near-owner"))
    renamed = {**owner_ref(near), "name": "not-its-name"}
    await kube.create(CM, configmap("misnamed", metadata={"ownerReferences": [renamed]}))
    await kube.create(CM, configmap("fine", metadata={"ownerReferences": [owner_ref(near)]}))

    async def collected() -> bool:
        return await kube.gone(CM, "cross-ns") and await kube.gone(CM, "misnamed")

    await eventually(collected)
    assert not await kube.gone(CM, "fine")
    assert not await kube.gone(CM, "far-owner", ns=elsewhere)


async def test_cluster_scoped_owner_of_namespaced_dependent(kube: Kube) -> None:
    owner = await kube.must_get(NAMESPACES, await kube.namespace("owner"))
    await kube.create(CM, configmap("dep", metadata={"ownerReferences": [owner_ref(owner)]}))
    deleted = await kube.delete(f"{NAMESPACES}/{owner['metadata']['name']}")
    assert deleted.status == 200

    async def collected() -> bool:
        return await kube.gone(CM, "dep")

    await eventually(collected)


async def test_deleting_a_namespace_deletes_everything_in_it(kube: Kube) -> None:
    doomed = await kube.namespace("doomed")
    created = await kube.must_get(NAMESPACES, doomed)
    assert created["status"]["phase"] == "Active"
    assert created["spec"]["finalizers"] == ["kubernetes"]
    await kube.create(CM, configmap("c1"), ns=doomed)
    held = build_workload("held")
    held["metadata"]["finalizers"] = ["example.com/hold"]  # keeps the namespace terminating until removed
    await kube.create(BW, held, ns=doomed)
    await kube.create(CM, configmap("safe"))

    reply = await kube.delete(f"{NAMESPACES}/{doomed}")
    assert reply.status == 200
    assert reply.body["kind"] == "Namespace"
    assert reply.body["status"]["phase"] == "Terminating"
    assert reply.body["metadata"]["deletionTimestamp"]

    status = assert_status(
        await kube.post(kube.path(CM, doomed), configmap("late")),
        403,
        "Forbidden",
        'configmaps "late" is forbidden: unable to create new content in namespace '
        f"{doomed} because it is being terminated",
    )
    assert status["details"]["causes"] == [
        {
            "reason": "NamespaceTerminating",
            "message": f"namespace {doomed} is being terminated",
            "field": "metadata.namespace",
        }
    ]

    async def contents_going() -> bool:
        bw = await kube.get(kube.path(BW, doomed, "held"))
        return await kube.gone(CM, "c1", ns=doomed) and bool(bw.body["metadata"].get("deletionTimestamp"))

    await eventually(contents_going)
    ns: Obj = await kube.must_get(NAMESPACES, doomed)
    assert ns["status"]["phase"] == "Terminating"
    # Updates of what is left are still allowed; only creates are refused.
    assert (
        await kube.patch(kube.path(BW, doomed, "held"), {"metadata": {"labels": {"a": "b"}}})
    ).status == 200

    await kube.patch(kube.path(BW, doomed, "held"), {"metadata": {"finalizers": None}})

    async def namespace_gone() -> bool:
        return (await kube.get(f"{NAMESPACES}/{doomed}")).status == 404

    await eventually(namespace_gone)
    assert not await kube.gone(CM, "safe")
    assert_status(await kube.post(kube.path(CM, doomed), configmap("late")), 404, "NotFound")


def test_owner_kinds_are_found_as_crds_come_and_go() -> None:
    """Owner kinds are looked up by group and kind, in a table kept up to date as kinds are (re)registered
    and unregistered: an owner kind that is not served leaves the dependent alone."""
    cluster = Cluster()
    cluster.ensure_namespace("default")
    crds = cluster.kind_for("apiextensions.k8s.io", "customresourcedefinitions")
    cms = cluster.kind_for("", "configmaps")

    def settle() -> None:
        while cluster.run_controllers_once():
            pass

    def exists(name: str) -> bool:
        return cluster.find(cms, "default", name) is not None

    crd = cluster.create(crds, "v1", None, widget_crd(extra_versions=()))
    widgets = cluster.kind_for(GROUP, "widgets")
    owner = cluster.create(widgets, "v1", "default", widget("w"))
    cluster.create(cms, "v1", "default", configmap("owned", metadata={"ownerReferences": [owner_ref(owner)]}))
    ghost = {**owner_ref(owner), "name": "ghost", "uid": str(uuid.uuid4())}
    unknown = {**ghost, "kind": "Gizmo"}
    cluster.create(cms, "v1", "default", configmap("unknown-kind", metadata={"ownerReferences": [unknown]}))
    settle()
    assert exists("owned") and exists("unknown-kind")  # a live owner; an owner kind nobody serves

    # Re-registering the kind (a CRD update) keeps it findable: the dangling reference is collected.
    crd["metadata"]["labels"] = {"updated": "yes"}
    cluster.update(crds, "v1", None, crd["metadata"]["name"], crd)
    cluster.create(cms, "v1", "default", configmap("ghost-owned", metadata={"ownerReferences": [ghost]}))
    settle()
    assert exists("owned") and not exists("ghost-owned")

    # Not served any more: its dependents are left alone; served again (the owner gone): collected.
    cluster.unregister(GROUP, "widgets")
    cluster.create(cms, "v1", "default", configmap("later", metadata={"ownerReferences": [ghost]}))
    settle()
    assert exists("owned") and exists("later")
    cluster.register(widgets)
    cluster.gc_pending.update(
        {("", "configmaps", "default", "owned"), ("", "configmaps", "default", "later")}
    )
    settle()
    assert not exists("owned") and not exists("later") and exists("unknown-kind")
