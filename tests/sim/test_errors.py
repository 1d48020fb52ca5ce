"""Errors are Status objects with kube-apiserver's reason, code, message and details."""

from __future__ import annotations

import pytest

from tests.sim.conftest import BW, CM, Kube, assert_status, build_workload, configmap, path

pytestmark = pytest.mark.anyio


async def test_not_found_custom_resource(kube: Kube) -> None:
    status = assert_status(
        await kube.get(path(BW, name="x")),
        404,
        "NotFound",
        'buildworkloads.korifi.cloudfoundry.org "x" not found',
    )
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'buildworkloads.korifi.cloudfoundry.org "x" not found',
        "reason": "NotFound",
        "details": {"name": "x", "group": "korifi.cloudfoundry.org", "kind": "buildworkloads"},
        "code": 404,
    }
    for reply in (
        await kube.patch(path(BW, name="x"), {"spec": {}}),
        await kube.delete(path(BW, name="x")),
        await kube.patch(path(BW, name="x", sub="status"), {"status": {}}),
    ):
        assert_status(reply, 404, "NotFound", 'buildworkloads.korifi.cloudfoundry.org "x" not found')


async def test_not_found_core_resource_has_no_group(kube: Kube) -> None:
    status = assert_status(await kube.get(path(CM, name="x")), 404, "NotFound", 'configmaps "x" not found')
    assert status["details"] == {"name": "x", "kind": "configmaps"}
    ns = assert_status(await kube.get("/api/v1/namespaces/x"), 404, "NotFound", 'namespaces "x" not found')
    assert ns["details"] == {"name": "x", "kind": "namespaces"}


async def test_conflict_message(kube: Kube) -> None:
    created = await kube.create(BW, build_workload("b1"))
    await kube.patch(path(BW, name="b1"), {"spec": {"builderName": "other"}})
    status = assert_status(await kube.put(path(BW, name="b1"), created), 409, "Conflict")
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Operation cannot be fulfilled on buildworkloads.korifi.cloudfoundry.org "b1": the object has '
        "been modified; please apply your changes to the latest version and try again",
        "reason": "Conflict",
        "details": {"name": "b1", "group": "korifi.cloudfoundry.org", "kind": "buildworkloads"},
        "code": 409,
    }


async def test_invalid_core_object_has_no_group(kube: Kube) -> None:
    status = assert_status(await kube.post(path(CM), configmap("Bad")), 422, "Invalid")
    assert status["details"]["name"] == "Bad"
    assert status["details"]["kind"] == "ConfigMap"
    assert "group" not in status["details"]


async def test_unknown_resource_path(kube: Kube) -> None:
    for url in (
        "/apis/korifi.cloudfoundry.org/v1alpha1/namespaces/default/nothings",
        "/apis/korifi.cloudfoundry.org/v9/namespaces/default/buildworkloads",
        "/api/v1/namespaces/default/configmaps/x/nosuchsub",
        "/nonsense",
    ):
        status = assert_status(
            await kube.get(url), 404, "NotFound", "the server could not find the requested resource"
        )
        assert status["details"] == {}, url


async def test_namespaced_resource_by_name_needs_a_namespace(kube: Kube) -> None:
    await kube.create(CM, configmap("c1"))
    assert_status(await kube.get("/api/v1/configmaps/c1"), 404, "NotFound")


async def test_method_not_allowed(kube: Kube) -> None:
    await kube.create(CM, configmap("c1"))
    put_collection = await kube.put(path(CM), configmap("c1"))
    assert_status(put_collection, 405, "MethodNotAllowed")
    assert_status(await kube.post(path(CM, name="c1"), configmap("c1")), 405, "MethodNotAllowed")
    # The cluster-wide path of a namespaced resource only lists and watches.
    assert_status(await kube.post("/api/v1/configmaps", configmap("c2")), 405, "MethodNotAllowed")
    assert_status(
        await kube.delete("/apis/korifi.cloudfoundry.org/v1alpha1/buildworkloads"), 405, "MethodNotAllowed"
    )
    assert_status(await kube.delete("/api/v1/namespaces"), 405, "MethodNotAllowed")


async def test_undecodable_bodies(kube: Kube) -> None:
    assert_status(await kube.request("POST", path(CM), raw=b"{nope"), 400, "BadRequest")
    assert_status(await kube.post(path(CM), ["a", "list"]), 400, "BadRequest")
    kindless = build_workload("b1")
    del kindless["kind"]
    status = assert_status(await kube.post(path(BW), kindless), 400, "BadRequest")
    assert status["message"].startswith("Object 'Kind' is missing in ")
    wrong_kind = {**build_workload("b1"), "kind": "Image"}
    assert_status(await kube.post(path(BW), wrong_kind), 400, "BadRequest")
    wrong_group = {**build_workload("b1"), "apiVersion": "kpack.io/v1alpha2"}
    assert_status(await kube.post(path(BW), wrong_group), 400, "BadRequest")


async def test_core_objects_may_omit_kind_and_api_version(kube: Kube) -> None:
    reply = await kube.post(path(CM), {"metadata": {"name": "c1"}, "data": {}})
    assert reply.status == 201
    assert (reply.body["kind"], reply.body["apiVersion"]) == ("ConfigMap", "v1")
