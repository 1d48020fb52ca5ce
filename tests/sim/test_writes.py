"""Writes: create, update (optimistic concurrency), merge and JSON patches, the status subresource."""

from __future__ import annotations

import pytest

from tests.sim.conftest import (
    BW,
    CM,
    GROUP,
    JSON_PATCH,
    STRATEGIC,
    WIDGETS,
    Kube,
    Obj,
    assert_status,
    build_workload,
    configmap,
    widget,
)

pytestmark = pytest.mark.anyio

CONFLICT = "the object has been modified; please apply your changes to the latest version and try again"


async def test_create_then_duplicate(kube: Kube) -> None:
    created = await kube.post(kube.path(CM), configmap("c1"))
    assert created.status == 201
    dup = assert_status(
        await kube.post(kube.path(CM), configmap("c1")),
        409,
        "AlreadyExists",
        'configmaps "c1" already exists',
    )
    assert dup["details"] == {"name": "c1", "kind": "configmaps"}
    await kube.create(BW, build_workload("b1"))
    dup = assert_status(
        await kube.post(kube.path(BW), build_workload("b1")),
        409,
        "AlreadyExists",
        'buildworkloads.korifi.cloudfoundry.org "b1" already exists',
    )
    assert dup["details"] == {"name": "b1", "group": "korifi.cloudfoundry.org", "kind": "buildworkloads"}
    # The same name in another namespace is another object.
    other = await kube.namespace("other")
    assert (await kube.post(kube.path(CM, other), configmap("c1"))).status == 201


async def test_custom_resource_put_needs_a_resource_version(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    body = {**created, "metadata": {k: v for k, v in created["metadata"].items() if k != "resourceVersion"}}
    body["spec"] = {**body["spec"], "size": 2}
    status = assert_status(await kube.put(kube.path(WIDGETS, name="w1"), body), 422, "Invalid")
    # Named by its resource (the update strategy's check), not by its kind as schema validation does.
    assert status["message"] == (
        'widgets.example.com "w1" is invalid: metadata.resourceVersion: Invalid value: 0: '
        "must be specified for an update"
    )
    assert status["details"] == {
        "name": "w1",
        "group": GROUP,
        "kind": "widgets",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: 0: must be specified for an update",
                "field": "metadata.resourceVersion",
            }
        ],
    }
    # A uid in the body is a precondition that storage checks.
    stranger = {**created, "metadata": {**created["metadata"], "uid": "not-the-uid"}}
    assert_status(
        await kube.put(kube.path(WIDGETS, name="w1"), stranger),
        409,
        "Conflict",
        f'Operation cannot be fulfilled on widgets.example.com "w1": StorageError: invalid object, Code: 4, '
        f"Key: /registry/{GROUP}/widgets/{kube.ns}/w1, ResourceVersion: 0, AdditionalErrorMsg: "
        f"Precondition failed: UID in precondition: not-the-uid, UID in object meta: "
        f"{created['metadata']['uid']}",
    )
    ok = await kube.put(kube.path(WIDGETS, name="w1"), {**body, "metadata": created["metadata"]})
    assert ok.status == 200
    assert ok.body["spec"]["size"] == 2
    assert int(ok.rv) > int(created["metadata"]["resourceVersion"])


async def test_config_map_put_may_be_unconditional(kube: Kube) -> None:
    await kube.create(CM, configmap("c1"))
    reply = await kube.put(kube.path(CM, name="c1"), configmap("c1", data={"k": "new"}))
    assert reply.status == 200, reply.body
    assert reply.body["data"] == {"k": "new"}


async def test_secret_string_data_is_merged_into_data_on_every_write(kube: Kube) -> None:
    secrets = "/api/v1/namespaces/{ns}/secrets"
    body = {"metadata": {"name": "s1"}, "data": {"a": "YQ==", "b": "Yg=="}, "stringData": {"b": "bee"}}
    created = await kube.create(secrets, body)
    assert created["data"] == {"a": "YQ==", "b": "YmVl"}  # stringData wins over data, base64-encoded
    assert "stringData" not in created and created["type"] == "Opaque"
    reply = await kube.patch(kube.path(secrets, name="s1"), {"stringData": {"c": "sea"}})
    assert reply.status == 200, reply.body
    assert reply.body["data"] == {"a": "YQ==", "b": "YmVl", "c": "c2Vh"}
    assert "stringData" not in reply.body
    assert await kube.must_get(secrets, "s1") == reply.body


async def test_stale_put_conflicts(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    first = await kube.put(kube.path(WIDGETS, name="w1"), {**created, "spec": {"size": 2}})
    assert first.status == 200
    stale = assert_status(
        await kube.put(kube.path(WIDGETS, name="w1"), {**created, "spec": {"size": 3}}),
        409,
        "Conflict",
        f'Operation cannot be fulfilled on widgets.example.com "w1": {CONFLICT}',
    )
    assert stale["details"] == {"name": "w1", "group": GROUP, "kind": "widgets"}
    assert (await kube.must_get(WIDGETS, "w1"))["spec"]["size"] == 2
    # Built-in kinds conflict the same way when a resourceVersion is given.
    cm = await kube.create(CM, configmap("c1"))
    await kube.put(kube.path(CM, name="c1"), configmap("c1", data={"k": "2"}))
    assert_status(
        await kube.put(kube.path(CM, name="c1"), cm),
        409,
        "Conflict",
        f'Operation cannot be fulfilled on configmaps "c1": {CONFLICT}',
    )


async def test_put_of_a_missing_object_is_not_found(kube: Kube, widgets: Obj) -> None:
    body = widget("nope")
    body["metadata"]["resourceVersion"] = "1"
    assert_status(
        await kube.put(kube.path(WIDGETS, name="nope"), body),
        404,
        "NotFound",
        'widgets.example.com "nope" not found',
    )


async def test_merge_patch(kube: Kube, widgets: Obj) -> None:
    body = widget("w1", tags=[{"name": "a"}, {"name": "b"}], free={"keep": 1, "drop": 2, "deep": {"x": 1}})
    await kube.create(WIDGETS, body)
    patch = {
        "metadata": {"labels": {"new": "label"}},
        "spec": {"color": None, "tags": [{"name": "c"}], "free": {"drop": None, "deep": {"y": 2}}},
    }
    reply = await kube.patch(kube.path(WIDGETS, name="w1"), patch)
    assert reply.status == 200, reply.body
    spec = reply.body["spec"]
    assert "color" not in spec  # null deletes
    assert spec["tags"] == [{"name": "c"}]  # lists are replaced whole
    assert spec["free"] == {"keep": 1, "deep": {"x": 1, "y": 2}}  # objects merge recursively
    assert spec["size"] == 1
    assert reply.body["metadata"]["labels"] == {"new": "label"}
    assert await kube.must_get(WIDGETS, "w1") == reply.body


async def test_json_patch(kube: Kube, widgets: Obj) -> None:
    await kube.create(WIDGETS, widget("w1", tags=[{"name": "a"}]))
    ops = [
        {"op": "test", "path": "/spec/size", "value": 1},
        {"op": "replace", "path": "/spec/size", "value": 7},
        {"op": "add", "path": "/spec/tags/-", "value": {"name": "b"}},
        {"op": "remove", "path": "/spec/color"},
        {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
    ]
    reply = await kube.patch(kube.path(WIDGETS, name="w1"), ops, JSON_PATCH)
    assert reply.status == 200, reply.body
    assert reply.body["spec"] == {"size": 7, "tags": [{"name": "a"}, {"name": "b"}]}
    assert reply.body["metadata"]["labels"] == {"a": "b"}


async def test_json_patch_failing_test_op_is_invalid(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    ops = [
        {"op": "replace", "path": "/spec/size", "value": 9},
        {"op": "test", "path": "/spec/size", "value": 1},
    ]
    status = assert_status(await kube.patch(kube.path(WIDGETS, name="w1"), ops, JSON_PATCH), 422, "Invalid")
    assert status["message"] == "the server rejected our request due to an error in our request"
    after = await kube.must_get(WIDGETS, "w1")
    assert after == created  # nothing of the patch applied
    missing = [{"op": "remove", "path": "/spec/nothing"}]
    assert_status(await kube.patch(kube.path(WIDGETS, name="w1"), missing, JSON_PATCH), 422, "Invalid")


async def test_json_patch_test_of_null_passes_for_a_missing_path(kube: Kube, widgets: Obj) -> None:
    """kube-apiserver's patch library (not RFC 6902): how a finalizer is added with no resourceVersion."""
    await kube.create(WIDGETS, widget("w1"))
    add = [
        {"op": "test", "path": "/metadata/finalizers", "value": None},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/a"]},
    ]
    reply = await kube.patch(kube.path(WIDGETS, name="w1"), add, JSON_PATCH)
    assert reply.status == 200, reply.body
    assert reply.body["metadata"]["finalizers"] == ["example.com/a"]
    # Now the path exists: the same test fails, and nothing is replaced.
    again = [{**add[0]}, {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/b"]}]
    assert_status(await kube.patch(kube.path(WIDGETS, name="w1"), again, JSON_PATCH), 422, "Invalid")
    remove = [
        {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/a"]},
        {"op": "remove", "path": "/metadata/finalizers"},
    ]
    reply = await kube.patch(kube.path(WIDGETS, name="w1"), remove, JSON_PATCH)
    assert reply.status == 200, reply.body
    assert "finalizers" not in reply.body["metadata"]


async def test_malformed_patches_are_bad_requests(kube: Kube, widgets: Obj) -> None:
    await kube.create(WIDGETS, widget("w1"))
    url = kube.path(WIDGETS, name="w1")
    assert_status(await kube.patch(url, {"not": "a list"}, JSON_PATCH), 400, "BadRequest")
    assert_status(
        await kube.request("PATCH", url, raw=b"[{not json", content_type=JSON_PATCH), 400, "BadRequest"
    )


async def test_patch_with_resource_version_is_a_precondition(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    old_rv = created["metadata"]["resourceVersion"]
    first = await kube.patch(
        kube.path(WIDGETS, name="w1"), {"metadata": {"resourceVersion": old_rv}, "spec": {"size": 2}}
    )
    assert first.status == 200
    assert_status(
        await kube.patch(
            kube.path(WIDGETS, name="w1"), {"metadata": {"resourceVersion": old_rv}, "spec": {"size": 3}}
        ),
        409,
        "Conflict",
        f'Operation cannot be fulfilled on widgets.example.com "w1": {CONFLICT}',
    )
    # Without a resourceVersion a patch applies to whatever is current.
    last = await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"size": 4}})
    assert last.status == 200
    assert last.body["spec"]["size"] == 4
    # A JSON patch that replaces the resourceVersion is a precondition too.
    ops = [{"op": "replace", "path": "/metadata/resourceVersion", "value": old_rv}]
    assert_status(await kube.patch(kube.path(WIDGETS, name="w1"), ops, JSON_PATCH), 409, "Conflict")


async def test_strategic_merge_patch(kube: Kube, widgets: Obj) -> None:
    await kube.create(WIDGETS, widget("w1"))
    status = assert_status(
        await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"size": 2}}, STRATEGIC),
        415,
        "UnsupportedMediaType",
    )
    assert status["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    )
    # Built-in kinds accept it.
    await kube.create(CM, configmap("c1"))
    reply = await kube.patch(kube.path(CM, name="c1"), {"data": {"k2": "v2"}}, STRATEGIC)
    assert reply.status == 200, reply.body
    assert reply.body["data"] == {"k": "v", "k2": "v2"}


async def test_unknown_patch_type_is_unsupported(kube: Kube) -> None:
    await kube.create(CM, configmap("c1"))
    assert_status(
        await kube.patch(kube.path(CM, name="c1"), {"data": {}}, "application/json"),
        415,
        "UnsupportedMediaType",
    )


# ------------------------------------------------------------------ status subresource


async def test_create_drops_status(kube: Kube, widgets: Obj) -> None:
    body = widget("w1")
    body["status"] = {"phase": "Forged"}
    created = await kube.create(WIDGETS, body)
    assert "status" not in created


async def test_main_resource_writes_ignore_status(kube: Kube, widgets: Obj) -> None:
    await kube.create(WIDGETS, widget("w1"))
    set_status = await kube.patch(kube.path(WIDGETS, name="w1", sub="status"), {"status": {"phase": "Ready"}})
    assert set_status.body["status"] == {"phase": "Ready"}

    patched = await kube.patch(
        kube.path(WIDGETS, name="w1"), {"spec": {"size": 2}, "status": {"phase": "Forged"}}
    )
    assert patched.status == 200
    assert patched.body["status"] == {"phase": "Ready"}
    assert patched.body["spec"]["size"] == 2
    current = patched.body
    put = await kube.put(kube.path(WIDGETS, name="w1"), {**current, "status": {"phase": "Forged"}})
    assert put.status == 200
    assert put.body["status"] == {"phase": "Ready"}
    dropped = {k: v for k, v in put.body.items() if k != "status"}
    put = await kube.put(kube.path(WIDGETS, name="w1"), dropped)
    assert put.status == 200
    assert put.body["status"] == {"phase": "Ready"}  # omitting status does not clear it either
    only_status = await kube.patch(kube.path(WIDGETS, name="w1"), {"status": {"phase": "Forged"}})
    assert only_status.rv == put.rv  # a main-resource write of only status changes nothing


async def test_status_writes_change_only_status(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    body = {
        **created,
        "metadata": {**created["metadata"], "labels": {"sneaky": "label"}},
        "spec": {"size": 99},
        "status": {"phase": "Ready", "observedGeneration": 1},
    }
    reply = await kube.put(kube.path(WIDGETS, name="w1", sub="status"), body)
    assert reply.status == 200, reply.body
    assert reply.body["status"] == {"phase": "Ready", "observedGeneration": 1}
    assert reply.body["spec"] == created["spec"]
    assert "labels" not in reply.body["metadata"]
    assert reply.body["metadata"]["generation"] == 1
    # /status takes the usual optimistic lock.
    assert_status(await kube.put(kube.path(WIDGETS, name="w1", sub="status"), body), 409, "Conflict")
    # and is validated against the schema.
    bad = await kube.patch(
        kube.path(WIDGETS, name="w1", sub="status"), {"status": {"observedGeneration": "x"}}
    )
    assert_status(bad, 422, "Invalid")
    # A status patch of a field outside status changes nothing.
    noop = await kube.patch(kube.path(WIDGETS, name="w1", sub="status"), {"spec": {"size": 5}})
    assert noop.status == 200
    assert noop.rv == reply.rv


async def test_no_op_writes_keep_the_resource_version_and_emit_nothing(kube: Kube, widgets: Obj) -> None:
    created = await kube.create(WIDGETS, widget("w1"))
    rv = created["metadata"]["resourceVersion"]
    cm = await kube.create(CM, configmap("c1"))
    async with kube.watching(kube.path(WIDGETS), resourceVersion=cm["metadata"]["resourceVersion"]) as w:
        same_put = await kube.put(kube.path(WIDGETS, name="w1"), created)
        assert same_put.status == 200 and same_put.rv == rv
        same_patch = await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"size": 1}})
        assert same_patch.status == 200 and same_patch.rv == rv
        empty = await kube.patch(kube.path(WIDGETS, name="w1"), {})
        assert empty.rv == rv
        same_json = await kube.patch(
            kube.path(WIDGETS, name="w1"), [{"op": "replace", "path": "/spec/size", "value": 1}], JSON_PATCH
        )
        assert same_json.rv == rv
        changed = await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"size": 2}})
        assert int(changed.rv) > int(rv)
        ev = await w.event()
        assert ev["type"] == "MODIFIED"
        assert ev["object"]["metadata"]["resourceVersion"] == changed.rv  # the first event is the change
    cm_again = await kube.put(kube.path(CM, name="c1"), cm)
    assert cm_again.rv == cm["metadata"]["resourceVersion"]


async def test_dry_run_does_not_persist(kube: Kube) -> None:
    reply = await kube.post(kube.path(CM), configmap("c1"), dryRun="All")
    assert reply.status == 201
    assert reply.body["metadata"]["name"] == "c1"
    assert "resourceVersion" not in reply.body["metadata"]
    assert await kube.gone(CM, "c1")
