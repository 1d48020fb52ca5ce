"""Errors are Status objects with kube-apiserver's reason, code, message and details."""

from __future__ import annotations

import orjson
import pytest

from tests.sim.conftest import (
    BW,
    CM,
    MERGE,
    Kube,
    assert_page_not_found,
    assert_status,
    build_workload,
    configmap,
)

pytestmark = pytest.mark.anyio


async def test_not_found_custom_resource(kube: Kube) -> None:
    status = assert_status(
        await kube.get(kube.path(BW, name="x")),
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
        await kube.patch(kube.path(BW, name="x"), {"spec": {}}),
        await kube.delete(kube.path(BW, name="x")),
        await kube.patch(kube.path(BW, name="x", sub="status"), {"status": {}}),
    ):
        assert_status(reply, 404, "NotFound", 'buildworkloads.korifi.cloudfoundry.org "x" not found')


async def test_not_found_core_resource_has_no_group(kube: Kube) -> None:
    status = assert_status(
        await kube.get(kube.path(CM, name="x")), 404, "NotFound", 'configmaps "x" not found'
    )
    assert status["details"] == {"name": "x", "kind": "configmaps"}
    ns = assert_status(await kube.get("/api/v1/namespaces/x"), 404, "NotFound", 'namespaces "x" not found')
    assert ns["details"] == {"name": "x", "kind": "namespaces"}


async def test_conflict_message(kube: Kube) -> None:
    created = await kube.create(BW, build_workload("b1"))
    await kube.patch(kube.path(BW, name="b1"), {"spec": {"builderName": "other"}})
    status = assert_status(await kube.put(kube.path(BW, name="b1"), created), 409, "Conflict")
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
    status = assert_status(await kube.post(kube.path(CM), configmap("Bad")), 422, "Invalid")
    assert status["details"]["name"] == "Bad"
    assert status["details"]["kind"] == "ConfigMap"
    assert "group" not in status["details"]


async def test_unknown_resource_path(kube: Kube) -> None:
    # Within the built-in API (the core group and built-in groups): a Status.
    for url in (
        f"/api/v1/namespaces/{kube.ns}/configmaps/x/nosuchsub",
        f"/api/v1/namespaces/{kube.ns}/nothings",
        "/api/v1/nothings",
        "/apis/storage.k8s.io/v9/storageclasses",
        "/apis/storage.k8s.io/v1/nothings",
    ):
        status = assert_status(
            await kube.get(url), 404, "NotFound", "the server could not find the requested resource"
        )
        assert status["details"] == {}, url
    # What no handler serves (an unknown group, or a version or resource a CRD does not define) falls
    # through to kube-apiserver's last handler: plain text, not a Status.
    for url in (
        f"/apis/korifi.cloudfoundry.org/v1alpha1/namespaces/{kube.ns}/nothings",
        f"/apis/korifi.cloudfoundry.org/v9/namespaces/{kube.ns}/buildworkloads",
        "/apis/nothing.example.com/v1/things",
        "/nonsense",
    ):
        assert_page_not_found(await kube.get(url))


async def test_unknown_subresource_of_a_custom_resource(kube: Kube) -> None:
    """The CRD handler answers an unknown subresource as if the object were missing."""
    await kube.create(BW, build_workload("b1"))
    for name in ("b1", "nope"):
        status = assert_status(
            await kube.get(kube.path(BW, name=name, sub="nosuchsub")),
            404,
            "NotFound",
            f'buildworkloads.korifi.cloudfoundry.org "{name}" not found',
        )
        assert status["details"] == {
            "name": name,
            "group": "korifi.cloudfoundry.org",
            "kind": "buildworkloads",
        }


async def test_namespaced_resource_by_name_needs_a_namespace(kube: Kube) -> None:
    await kube.create(CM, configmap("c1"))
    assert_status(await kube.get("/api/v1/configmaps/c1"), 404, "NotFound")
    await kube.create(BW, build_workload("b1"))
    assert_page_not_found(await kube.get("/apis/korifi.cloudfoundry.org/v1alpha1/buildworkloads/b1"))


async def test_method_not_allowed(kube: Kube) -> None:
    await kube.create(CM, configmap("c1"))
    put_collection = await kube.put(kube.path(CM), configmap("c1"))
    assert_status(put_collection, 405, "MethodNotAllowed")
    assert_status(await kube.post(kube.path(CM, name="c1"), configmap("c1")), 405, "MethodNotAllowed")
    # The cluster-wide path of a namespaced resource only lists and watches.
    assert_status(await kube.post("/api/v1/configmaps", configmap("c2")), 405, "MethodNotAllowed")
    assert_status(await kube.delete("/api/v1/namespaces"), 405, "MethodNotAllowed")
    # The CRD handler serves only lists and watches at a namespaced resource's cluster-wide path, and
    # takes a write to a collection for a write to an object without a name.
    await kube.create(BW, build_workload("b1"))
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        cluster_wide = await kube.request(method, "/apis/korifi.cloudfoundry.org/v1alpha1/buildworkloads", {})
        assert_page_not_found(cluster_wide)
    for method, content_type in (("PUT", "application/json"), ("PATCH", MERGE)):
        reply = await kube.request(method, kube.path(BW), build_workload("b1"), content_type=content_type)
        assert_status(reply, 400, "BadRequest", "name must be provided")


async def test_undecodable_bodies(kube: Kube) -> None:
    assert_status(await kube.request("POST", kube.path(CM), raw=b"{nope"), 400, "BadRequest")
    assert_status(await kube.post(kube.path(CM), ["a", "list"]), 400, "BadRequest")
    kindless = build_workload("b1")
    del kindless["kind"]
    data = orjson.dumps(kindless).decode()
    assert_status(
        await kube.post(kube.path(BW), kindless),
        400,
        "BadRequest",
        "the object provided is unrecognized (must be of type BuildWorkload): "
        f"Object 'Kind' is missing in '{data}' ({data[:30]} ...)",
    )
    versionless = build_workload("b1")
    del versionless["apiVersion"]
    assert_status(
        await kube.post(kube.path(BW), versionless),
        400,
        "BadRequest",
        "the API version in the data () does not match the expected API version "
        "(korifi.cloudfoundry.org/v1alpha1)",
    )
    # The CRD handler decodes another kind, which its validation refuses (named as the data names it).
    wrong_kind = {**build_workload("b1"), "kind": "Image"}
    status = assert_status(
        await kube.post(kube.path(BW), wrong_kind),
        422,
        "Invalid",
        'Image.korifi.cloudfoundry.org "b1" is invalid: kind: Invalid value: "Image": must be BuildWorkload',
    )
    assert (status["details"]["kind"], status["details"]["group"]) == ("Image", "korifi.cloudfoundry.org")
    wrong_group = {**build_workload("b1"), "apiVersion": "kpack.io/v1alpha2"}
    assert_status(
        await kube.post(kube.path(BW), wrong_group),
        400,
        "BadRequest",
        "the API version in the data (kpack.io/v1alpha2) does not match the expected API version "
        "(korifi.cloudfoundry.org/v1alpha1)",
    )
    # A built-in kind's decoder: a kind it knows does not convert, one it does not know is not registered.
    for data, why in (
        (
            {"apiVersion": "v1", "kind": "Secret"},
            "converting (v1.Secret) to (core.ConfigMap): unknown conversion",
        ),
        (
            {"apiVersion": "apps/v1", "kind": "ConfigMap"},
            'no kind "ConfigMap" is registered for version "apps/v1" in scheme "pkg/runtime/scheme.go:111"',
        ),
    ):
        assert_status(
            await kube.post(kube.path(CM), {**data, "metadata": {"name": "c1"}}),
            400,
            "BadRequest",
            f'{data["kind"]} in version "v1" cannot be handled as a ConfigMap: {why}',
        )


async def test_core_objects_may_omit_kind_and_api_version(kube: Kube) -> None:
    reply = await kube.post(kube.path(CM), {"metadata": {"name": "c1"}, "data": {}})
    assert reply.status == 201
    assert (reply.body["kind"], reply.body["apiVersion"]) == ("ConfigMap", "v1")
