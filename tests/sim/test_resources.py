"""Resources: built-in kinds and their scopes, CRD registration, versions, subresources, schemas."""

from __future__ import annotations

import copy

import pytest

from tests.helpers import eventually
from tests.sim.conftest import (
    BW,
    CM,
    CRDS,
    DEADLINE,
    GROUP,
    WIDGETS,
    Kube,
    Obj,
    assert_page_not_found,
    assert_status,
    build_workload,
    install_crd,
    widget,
    widget_crd,
)

pytestmark = pytest.mark.anyio

BUILT_IN = [
    # (collection path, kind, namespaced, body extras)
    ("/api/v1", "namespaces", "Namespace", False, {}),
    ("/api/v1", "serviceaccounts", "ServiceAccount", True, {}),
    ("/api/v1", "secrets", "Secret", True, {"stringData": {}, "data": {"k": "dg=="}}),
    ("/api/v1", "configmaps", "ConfigMap", True, {"data": {"k": "v"}}),
    (
        "/api/v1",
        "events",
        "Event",
        True,
        {"involvedObject": {"kind": "ConfigMap", "name": "x"}, "reason": "Test", "message": "m"},
    ),
    ("/apis/storage.k8s.io/v1", "storageclasses", "StorageClass", False, {"provisioner": "example.com/p"}),
    ("/apis/coordination.k8s.io/v1", "leases", "Lease", True, {"spec": {"holderIdentity": "me"}}),
    ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False, {}),
]


@pytest.mark.parametrize(("prefix", "plural", "kind", "namespaced", "extra"), BUILT_IN)
async def test_built_in_kind_has_its_real_scope(
    kube: Kube, prefix: str, plural: str, kind: str, namespaced: bool, extra: Obj
) -> None:
    discovery = await kube.get(prefix)
    assert discovery.status == 200
    entry = next(r for r in discovery.body["resources"] if r["name"] == plural)
    assert (entry["kind"], entry["namespaced"]) == (kind, namespaced)

    api_version = prefix.removeprefix("/api/").removeprefix("/apis/")
    if kind == "CustomResourceDefinition":
        body = widget_crd(group=kube.group)
        name = body["metadata"]["name"]
    else:
        name = f"{kube.ns}-{plural}"  # cluster-scoped names are the session's on the real server
        body = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **copy.deepcopy(extra)}
        if kind == "Event":  # an Event outside `default` names its object's namespace
            body["involvedObject"]["namespace"] = kube.ns
    namespaced_url = f"{prefix}/namespaces/{kube.ns}/{plural}"
    cluster_url = f"{prefix}/{plural}"
    if namespaced:
        created = await kube.post(namespaced_url, body)
        assert created.status == 201, created.body
        assert created.body["metadata"]["namespace"] == kube.ns
        assert (await kube.get(f"{namespaced_url}/{name}")).status == 200
        # The cluster-wide path of a namespaced resource lists across namespaces.
        listed = await kube.get(cluster_url)
        assert name in kube.names(listed.body)
    else:
        created = await kube.post(cluster_url, body)
        assert created.status == 201, created.body
        assert "namespace" not in created.body["metadata"]
        assert (await kube.get(f"{cluster_url}/{name}")).status == 200
        # A cluster-scoped resource has no namespaced path.
        assert_status(await kube.get(f"{namespaced_url}/{name}"), 404, "NotFound")
    assert created.body["kind"] == kind
    assert created.body["apiVersion"] == api_version


async def test_posting_a_crd_serves_its_custom_resource(kube: Kube) -> None:
    group = kube.group
    widgets = f"/apis/{group}/v1/namespaces/{{ns}}/widgets"
    assert_page_not_found(await kube.get(kube.path(widgets)))
    crd = await install_crd(kube, widget_crd(group=group))
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert crd["status"]["acceptedNames"]["kind"] == "Widget"
    assert crd["status"]["storedVersions"] == ["v1"]

    created = await kube.create(widgets, widget("w1", group=group))
    assert created["apiVersion"] == f"{group}/v1"
    assert created["kind"] == "Widget"
    assert created["metadata"]["namespace"] == kube.ns
    listed = await kube.get(kube.path(widgets))
    assert listed.body["kind"] == "WidgetList"
    assert [o["metadata"]["name"] for o in listed.body["items"]] == ["w1"]

    resources = (await kube.get(f"/apis/{group}/v1")).body["resources"]
    by_name = {r["name"]: r for r in resources}
    assert by_name["widgets"]["namespaced"] is True
    assert by_name["widgets"]["shortNames"] == ["wid"]
    assert "widgets/status" in by_name


async def test_a_default_added_to_a_crd_fills_the_next_write_of_an_older_object(kube: Kube) -> None:
    """An object stored before its CRD's schema gained a default gets it on its next write, even one that
    leaves its spec as it was (a metadata patch): the emulator walks again only what changed since a
    write through the same schema."""
    group = kube.group
    widgets = f"/apis/{group}/v1/namespaces/{{ns}}/widgets"
    crd = await install_crd(kube, widget_crd(group=group))
    created = await kube.create(widgets, widget("w1", group=group))
    assert "enabled" not in created["spec"]
    for version in crd["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["enabled"]["default"] = True
    reply = await kube.put(f"{CRDS}/{crd['metadata']['name']}", crd)
    assert reply.status == 200, reply.body
    # Served once a new object is defaulted by it: at once here, after a moment on kube-apiserver.
    await eventually(
        lambda: kube.post(kube.path(widgets), widget("probe", group=group), dryRun="All"),
        DEADLINE,
        "the new default served",
        until=lambda r: r.status == 201 and r.body["spec"].get("enabled") is True,
    )
    patched = await kube.patch(kube.path(widgets, name="w1"), {"metadata": {"labels": {"touched": "yes"}}})
    assert patched.status == 200, patched.body
    assert patched.body["spec"] == {**created["spec"], "enabled": True}
    # Written through the new schema now: a later write keeps it, and a status write validates status.
    status = await kube.patch(kube.path(widgets, name="w1", sub="status"), {"status": {"phase": "Ready"}})
    assert status.status == 200, status.body
    assert status.body["spec"]["enabled"] is True
    bad = await kube.patch(kube.path(widgets, name="w1", sub="status"), {"status": {"phase": 3}})
    assert_status(bad, 422, "Invalid")


async def test_cluster_scoped_crd(kube: Kube) -> None:
    group = kube.group
    await install_crd(kube, widget_crd(group=group, scope="Cluster", plural="gadgets", kind="Gadget"))
    body = {"apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": "g1"}, "spec": {"size": 2}}
    created = await kube.post(f"/apis/{group}/v1/gadgets", body)
    assert created.status == 201, created.body
    assert "namespace" not in created.body["metadata"]
    assert (await kube.get(f"/apis/{group}/v1/gadgets/g1")).status == 200
    assert_page_not_found(await kube.get(f"/apis/{group}/v1/namespaces/{kube.ns}/gadgets/g1"))


async def test_crd_without_status_subresource_treats_status_as_data(kube: Kube) -> None:
    group = kube.group
    await install_crd(kube, widget_crd(group=group, plural="plainwidgets", kind="PlainWidget", status=False))
    url = f"/apis/{group}/v1/namespaces/{kube.ns}/plainwidgets"
    body = {
        "apiVersion": f"{group}/v1",
        "kind": "PlainWidget",
        "metadata": {"name": "p"},
        "spec": {"size": 1},
        "status": {"phase": "Set"},
    }
    created = await kube.post(url, body)
    assert created.status == 201
    assert created.body["status"] == {"phase": "Set"}  # kept: there is no status subresource
    assert_status(await kube.get(f"{url}/p/status"), 404, "NotFound")
    patched = await kube.patch(f"{url}/p", {"status": {"phase": "Other"}})
    assert patched.body["status"] == {"phase": "Other"}
    assert patched.body["metadata"]["generation"] == 2  # status is ordinary content here


async def test_second_served_version_returns_objects_with_its_api_version(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    assert created["apiVersion"] == f"{GROUP}/v1"
    v2 = f"/apis/{GROUP}/v2/namespaces/{kube.ns}/widgets"
    got = await kube.get(f"{v2}/w1")
    assert got.status == 200
    assert got.body["apiVersion"] == f"{GROUP}/v2"
    assert got.body["metadata"]["uid"] == created["metadata"]["uid"]
    listed = await kube.get(v2)
    assert listed.body["apiVersion"] == f"{GROUP}/v2"
    assert [o["apiVersion"] for o in listed.body["items"]] == [f"{GROUP}/v2"]
    # Writes through v2 answer as v2 and are stored once (v1 sees them too).
    made = await kube.post(v2, widget("w2", version="v2"))
    assert made.status == 201
    assert made.body["apiVersion"] == f"{GROUP}/v2"
    assert (await kube.must_get(WIDGETS, "w2"))["apiVersion"] == f"{GROUP}/v1"
    # A v1 body sent to the v2 path is refused.
    assert_status(await kube.post(v2, widget("w3", version="v1")), 400, "BadRequest")


async def test_watch_through_second_version_sends_its_api_version(kube: Kube, widgets: Obj) -> None:
    await kube.create(WIDGETS, widget("w1"))
    async with kube.watching(f"/apis/{GROUP}/v2/namespaces/{kube.ns}/widgets") as w:
        ev = await w.event()
        assert ev["type"] == "ADDED"
        assert ev["object"]["apiVersion"] == f"{GROUP}/v2"
        await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"size": 5}})
        ev = await w.event()
        assert ev["type"] == "MODIFIED"
        assert ev["object"]["apiVersion"] == f"{GROUP}/v2"


async def test_unserved_version_is_not_found(kube: Kube) -> None:
    crd = widget_crd(group=kube.group, plural="oldwidgets", kind="OldWidget")
    crd["spec"]["versions"][1]["served"] = False
    await install_crd(kube, crd)
    assert (await kube.get(f"/apis/{kube.group}/v1/namespaces/{kube.ns}/oldwidgets")).status == 200
    assert_page_not_found(await kube.get(f"/apis/{kube.group}/v2/namespaces/{kube.ns}/oldwidgets"))


async def test_preloaded_kpack_image_is_served_in_both_versions(kube: Kube) -> None:
    body = {
        "apiVersion": "kpack.io/v1alpha2",
        "kind": "Image",
        "metadata": {"name": "img"},
        "spec": {"tag": "registry.example.com/app", "anything": {"goes": True}},
    }
    created = await kube.post(f"/apis/kpack.io/v1alpha2/namespaces/{kube.ns}/images", body)
    assert created.status == 201, created.body
    assert created.body["spec"]["anything"] == {"goes": True}  # x-kubernetes-preserve-unknown-fields
    old = await kube.get(f"/apis/kpack.io/v1alpha1/namespaces/{kube.ns}/images/img")
    assert old.status == 200
    assert old.body["apiVersion"] == "kpack.io/v1alpha1"


async def test_invalid_crd_is_rejected(kube: Kube) -> None:
    crd = widget_crd()
    crd["metadata"]["name"] = "wrong.example.com"
    crd["spec"]["scope"] = "Galactic"
    body = assert_status(await kube.post(CRDS, crd), 422, "Invalid")
    fields = {c["field"] for c in body["details"]["causes"]}
    assert {"metadata.name", "spec.scope"} <= fields


# ------------------------------------------------------------------ schema: pruning


async def test_unknown_fields_are_pruned(kube: Kube, widgets: Obj) -> None:
    body = widget("w1")
    body["topLevelJunk"] = 1
    body["spec"]["junk"] = "x"
    body["spec"]["tags"] = [{"name": "a", "value": "b", "junk": True}]
    body["spec"]["limits"] = {"cpu": {"max": 4, "junk": 1}, "mem": {"max": 8}}
    body["spec"]["free"] = {"anything": {"nested": [1, 2]}, "goes": "here"}
    created = await kube.create(WIDGETS, body)
    assert "topLevelJunk" not in created
    spec = created["spec"]
    assert "junk" not in spec
    assert spec["tags"] == [{"name": "a", "value": "b"}]  # items schema prunes each element
    assert spec["limits"] == {"cpu": {"max": 4}, "mem": {"max": 8}}  # additionalProperties schema
    assert spec["free"] == {"anything": {"nested": [1, 2]}, "goes": "here"}  # preserved
    stored = await kube.must_get(WIDGETS, "w1")
    assert stored["spec"] == spec

    # Updates prune the same way.
    stored["spec"]["junk"] = "again"
    updated = await kube.put(kube.path(WIDGETS, name="w1"), stored)
    assert updated.status == 200
    assert "junk" not in updated.body["spec"]
    patched = await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"junk": 1, "tags": [{"junk": 2}]}})
    assert patched.status == 200
    assert "junk" not in patched.body["spec"]
    assert patched.body["spec"]["tags"] == [{}]


async def test_pruning_alone_does_not_count_as_a_change(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    patched = await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"junk": 1}})
    assert patched.status == 200
    assert patched.rv == created["metadata"]["resourceVersion"]
    assert patched.body["metadata"]["generation"] == 1


# ------------------------------------------------------------------ schema: validation


async def test_wrong_type_is_invalid(kube: Kube, widgets: Obj) -> None:
    body = assert_status(await kube.post(kube.path(WIDGETS), widget("w1", size="big")), 422, "Invalid")
    assert body["message"] == (
        'Widget.example.com "w1" is invalid: spec.size: Invalid value: "string": '
        'spec.size in body must be of type integer: "string"'
    )
    assert body["details"] == {
        "name": "w1",
        "group": GROUP,
        "kind": "Widget",
        "causes": [
            {
                "reason": "FieldValueTypeInvalid",
                "message": 'Invalid value: "string": spec.size in body must be of type integer: "string"',
                "field": "spec.size",
            }
        ],
    }
    bad_bool = assert_status(await kube.post(kube.path(WIDGETS), widget("w2", enabled="yes")), 422, "Invalid")
    assert [c["field"] for c in bad_bool["details"]["causes"]] == ["spec.enabled"]
    bad_map = widget("w3")
    bad_map["spec"]["limits"] = {"cpu": {"max": "lots"}}
    causes = assert_status(await kube.post(kube.path(WIDGETS), bad_map), 422, "Invalid")["details"]["causes"]
    assert [c["field"] for c in causes] == ["spec.limits.cpu.max"]
    bad_items = widget("w4", tags=[{"name": 3}])
    causes = assert_status(await kube.post(kube.path(WIDGETS), bad_items), 422, "Invalid")["details"][
        "causes"
    ]
    assert [c["field"] for c in causes] == ["spec.tags[0].name"]


async def test_missing_required_is_invalid(kube: Kube, widgets: Obj) -> None:
    body = widget("w1")
    del body["spec"]["size"]
    status = assert_status(await kube.post(kube.path(WIDGETS), body), 422, "Invalid")
    assert status["message"] == 'Widget.example.com "w1" is invalid: spec.size: Required value'
    assert status["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.size"}
    ]
    assert (await kube.gone(WIDGETS, "w1")) is True


async def test_bad_enum_is_invalid(kube: Kube, widgets: Obj) -> None:
    status = assert_status(await kube.post(kube.path(WIDGETS), widget("w1", color="purple")), 422, "Invalid")
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: "purple": supported values: "red", "green", "blue"',
            "field": "spec.color",
        }
    ]


async def test_every_violation_is_reported(kube: Kube, widgets: Obj) -> None:
    body = widget("w1", color="purple", enabled=3)
    del body["spec"]["size"]
    status = assert_status(await kube.post(kube.path(WIDGETS), body), 422, "Invalid")
    fields = sorted(c["field"] for c in status["details"]["causes"])
    assert fields == ["spec.color", "spec.enabled", "spec.size"]
    assert status["message"].startswith('Widget.example.com "w1" is invalid: [')


async def test_updates_are_validated_too(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    assert_status(
        await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"color": "pink"}}), 422, "Invalid"
    )
    created["spec"]["size"] = "huge"
    assert_status(await kube.put(kube.path(WIDGETS, name="w1"), created), 422, "Invalid")
    assert (await kube.must_get(WIDGETS, "w1"))["spec"]["size"] == 1


# ------------------------------------------------------------------ the real Korifi BuildWorkload CRD


async def test_build_workload_crd_prunes_undeclared_fields(kube: Kube) -> None:
    body = build_workload("bw1", undeclared="dropped", buildpacks=["paketo-buildpacks/python"])
    body["spec"]["buildRef"]["alsoUndeclared"] = True
    created = await kube.create(BW, body)
    assert "undeclared" not in created["spec"]
    assert created["spec"]["buildRef"] == {"name": "bw1-build"}
    assert created["spec"]["buildpacks"] == ["paketo-buildpacks/python"]
    assert created["metadata"]["generation"] == 1


async def test_build_workload_crd_requires_builder_name(kube: Kube) -> None:
    body = build_workload("bw1")
    del body["spec"]["builderName"]
    status = assert_status(await kube.post(kube.path(BW), body), 422, "Invalid")
    assert status["message"] == (
        'BuildWorkload.korifi.cloudfoundry.org "bw1" is invalid: spec.builderName: Required value'
    )
    assert status["details"]["group"] == "korifi.cloudfoundry.org"
    assert status["details"]["kind"] == "BuildWorkload"
    assert status["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.builderName"}
    ]


async def test_build_workload_status_is_a_subresource(kube: Kube) -> None:
    body = build_workload("bw1")
    body["status"] = {"observedGeneration": 7}
    created = await kube.create(BW, body)
    assert "status" not in created
    assert (await kube.get(kube.path(BW, name="bw1", sub="status"))).status == 200
    # ConfigMaps have no status subresource.
    await kube.create(CM, {"metadata": {"name": "c"}})
    assert_status(await kube.get(kube.path(CM, name="c", sub="status")), 404, "NotFound")
