"""BuildWorkload initialization (korifi.md §4.3 B, behaviours 4-21, and the untested path U1)."""

from __future__ import annotations

from typing import Any

import pytest

from service.kube import resources as r
from service.reconcilers import korifi as k
from tests.helpers import consistently, eventually
from tests.reconcilers.conftest import APP_GUID, PREFIX, PULL_SECRET, SERVICE_ACCOUNT, Env

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]


async def image_of(env: Env) -> Obj:
    async def check() -> Obj | None:
        return await env.get(r.IMAGE, APP_GUID)

    return await eventually(check, what="the kpack Image exists")


async def assert_initial_reconciliation(env: Env, workload: Obj, image: Obj) -> None:
    """Korifi's ItDoesInitialReconciliationWithDefaultBuilder: (a), (b), (c)."""
    spec = image["spec"]
    assert spec["source"]["registry"]["image"] == "PACKAGE_IMAGE"
    assert spec["source"]["registry"]["imagePullSecrets"] == [{"name": PULL_SECRET}]
    assert spec["build"]["env"] == workload["spec"]["env"]
    assert spec["build"]["services"] == workload["spec"]["services"]
    assert spec["build"]["resources"] == {"requests": {"ephemeral-storage": "2048M", "memory": "1234M"}}
    assert spec["builder"]["kind"] == "ClusterBuilder"
    assert spec["builder"]["name"] == env.settings.cluster_builder_name
    assert spec["cache"]["volume"] == {"size": "1024Mi"}
    assert spec["tag"] == f"{PREFIX}{APP_GUID}-droplets"
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT
    assert image["metadata"]["labels"] == {k.BUILD_WORKLOAD_LABEL: workload["metadata"]["name"]}
    owners = image["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"], o.get("controller")) for o in owners] == [
        ("BuildWorkload", workload["metadata"]["name"], None)
    ]
    succeeded = await env.wait_succeeded(workload["metadata"]["name"], "Unknown")
    assert (succeeded["reason"], succeeded["message"]) == (k.BUILD_RUNNING, k.BUILD_RUNNING_MESSAGE)
    current = await env.workload(workload["metadata"]["name"])
    assert current["status"]["observedGeneration"] == current["metadata"]["generation"]
    assert succeeded["observedGeneration"] == current["metadata"]["generation"]
    assert current["metadata"]["labels"][k.IMAGE_GENERATION_LABEL] == str(image["metadata"]["generation"])
    assert env.repositories.created[0] == f"{PREFIX}{APP_GUID}-droplets"


async def test_without_an_image_it_creates_one_and_starts_the_build(env: Env) -> None:
    """Behaviours 4-6."""
    workload = await env.create_workload(env.workload_body())
    image = await image_of(env)
    await assert_initial_reconciliation(env, workload, image)
    ready = await env.condition(workload["metadata"]["name"], k.READY)
    assert ready is not None and (ready["status"], ready["reason"]) == ("True", k.READY_REASON)
    current = await env.workload(workload["metadata"]["name"])
    assert current["metadata"]["finalizers"] == [k.BUILD_WORKLOAD_FINALIZER]


async def test_an_existing_image_is_overwritten(env: Env) -> None:
    """Behaviours 7-9."""
    workload_body = env.workload_body()
    await env.create(
        r.IMAGE,
        {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "Image",
            "metadata": {
                "name": APP_GUID,
                "namespace": env.namespace,
                "labels": {k.BUILD_WORKLOAD_LABEL: workload_body["metadata"]["name"], "other": "dropped"},
            },
            "spec": {
                "tag": "my-tag-string",
                "builder": {"name": "my-builder"},
                "serviceAccountName": "my-service-account",
                "source": {"registry": {"image": "not-an-image"}},
            },
        },
    )
    workload = await env.create_workload(workload_body)
    await env.wait_succeeded(workload["metadata"]["name"], "Unknown")
    image = await image_of(env)
    await assert_initial_reconciliation(env, workload, image)


async def image_with_cache(env: Env, storage_class: str, *, expandable: bool) -> Obj:
    """An app Image made before, with a 512Mi cache volume of a new StorageClass (of this test's own)."""
    env.cluster_scoped.append((r.STORAGE_CLASS, storage_class))
    await env.create(
        r.STORAGE_CLASS,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": storage_class},
            "provisioner": "example.com/none",
            "allowVolumeExpansion": expandable,
        },
    )
    return await env.create(
        r.IMAGE,
        {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "Image",
            "metadata": {"name": APP_GUID, "namespace": env.namespace},
            "spec": {
                "tag": f"{PREFIX}{APP_GUID}-droplets",
                "builder": {"kind": "ClusterBuilder", "name": "x"},
                "source": {"registry": {"image": "old"}},
                "cache": {"volume": {"size": "512Mi", "storageClassName": storage_class}},
            },
        },
    )


async def test_a_cache_on_a_non_expandable_class_gets_a_new_volume_on_the_same_image(env: Env) -> None:
    """Behaviours 10-13, better than Korifi: Korifi recreates the Image, and the garbage collector takes
    its Builds and their droplets along (korifi.md §6.6); here the volume is dropped (``cache: {}``) and
    the new one set, on the same Image (``service.reconcilers.build_cache``)."""
    storage_class = f"non-resizable-{env.namespace}"
    old = await image_with_cache(env, storage_class, expandable=False)
    workload = await env.create_workload(env.workload_body())
    await env.wait_succeeded(workload["metadata"]["name"], "Unknown")
    image = await image_of(env)
    assert image["metadata"]["uid"] == old["metadata"]["uid"]
    assert image["spec"]["cache"] == {"volume": {"size": "1024Mi", "storageClassName": storage_class}}
    assert image["metadata"]["generation"] == old["metadata"]["generation"] + 2  # dropped, then set


async def test_an_expandable_class_is_resized_in_place_keeping_the_class(env: Env) -> None:
    """U7, and better than Korifi: the storage class stays (kpack refuses to change it)."""
    storage_class = f"resizable-{env.namespace}"
    old = await image_with_cache(env, storage_class, expandable=True)
    workload = await env.create_workload(env.workload_body())
    await env.wait_succeeded(workload["metadata"]["name"], "Unknown")
    image = await image_of(env)
    assert image["metadata"]["uid"] == old["metadata"]["uid"]
    assert image["spec"]["cache"]["volume"] == {"size": "1024Mi", "storageClassName": storage_class}


async def test_a_missing_source_pull_secret_blocks_the_image(env: Env) -> None:
    """Behaviour 14."""
    body = env.workload_body()
    body["spec"]["source"]["registry"]["imagePullSecrets"] = [{"name": "no-such-secret"}]
    workload = await env.create_workload(body)
    name = workload["metadata"]["name"]

    async def not_ready() -> Obj | None:
        ready = await env.condition(name, k.READY)
        return ready if ready and ready["status"] == "False" else None

    ready = await eventually(not_ready, what="Ready=False")
    assert ready["message"] == 'Secret "no-such-secret" not found'
    assert ready["reason"] == k.UNKNOWN_REASON
    await consistently(lambda: _absent(env, r.IMAGE, APP_GUID), 1.0, "no Image is created")
    assert await env.succeeded(name) is None
    # Retried with backoff: once the secret exists, the build starts.
    secret = await env.get(r.SECRET, PULL_SECRET)
    assert secret is not None
    await env.create(
        r.SECRET,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": secret["type"],
            "metadata": {"name": "no-such-secret", "namespace": env.namespace},
            "data": secret["data"],
        },
    )
    await env.wait_succeeded(name, "Unknown")
    assert await env.get(r.IMAGE, APP_GUID) is not None


async def _absent(env: Env, resource: r.Resource, name: str) -> bool:
    return await env.get(resource, name) is None


async def test_buildpacks_make_a_custom_builder(env: Env) -> None:
    """Behaviours 15-17."""
    workload = await env.create_workload(env.workload_body(buildpacks=["repo/my-buildpack"]))
    builder_name = k.builder_name(["repo/my-buildpack"])
    assert builder_name == "6ca56fe9-868d-5cb9-9d4f-6c99cf1d1329"  # Korifi's name for the same list

    async def builder() -> Obj | None:
        return await env.get(r.BUILDER, builder_name)

    created = await eventually(builder, what="the custom Builder")
    assert env.repositories.created[0] == f"{PREFIX}builders-{builder_name}"
    # The workload, and (added by custom_builders once it exists) its Image: none a controller.
    assert [
        (o["name"], o.get("controller"))
        for o in created["metadata"]["ownerReferences"]
        if o["kind"] == "BuildWorkload"
    ] == [(workload["metadata"]["name"], None)]
    assert all(not o.get("controller") for o in created["metadata"]["ownerReferences"])
    cluster_builder = await env.get(r.CLUSTER_BUILDER, env.settings.cluster_builder_name)
    assert cluster_builder is not None
    spec = created["spec"]
    assert spec["tag"] == f"{PREFIX}builders-{builder_name}"
    assert spec["stack"] == cluster_builder["spec"]["stack"]
    assert spec["store"] == cluster_builder["spec"]["store"]
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT
    assert spec["order"] == [{"group": [{"id": "repo/my-buildpack"}]}]
    image = await image_of(env)
    assert image["spec"]["builder"] == {
        "kind": "Builder",
        "name": builder_name,
        "namespace": env.namespace,
        "apiVersion": k.KPACK_API_VERSION,
    }


async def test_workloads_with_the_same_buildpacks_share_one_builder(env: Env) -> None:
    """Behaviour 18."""
    first = await env.create_workload(env.workload_body(buildpacks=["repo/my-buildpack"]))
    builder_name = k.builder_name(["repo/my-buildpack"])

    async def owners() -> list[str]:
        builder = await env.get(r.BUILDER, builder_name)
        refs = ((builder or {}).get("metadata") or {}).get("ownerReferences") or ()
        return sorted(o["name"] for o in refs if o["kind"] == "BuildWorkload")  # Images record it too

    await eventually(owners, what="the first workload's Builder")
    second = await env.create_workload(env.workload_body(buildpacks=["repo/my-buildpack"]))
    expected = sorted([first["metadata"]["name"], second["metadata"]["name"]])
    await eventually(lambda: _equals(owners(), expected), what="both workloads own the Builder")


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_an_unknown_buildpack_fails_the_workload(env: Env) -> None:
    """Behaviour 19."""
    workload = await env.create_workload(
        env.workload_body(buildpacks=["repo/my-buildpack", "not/in-the-store"])
    )
    failed = await env.wait_succeeded(workload["metadata"]["name"], "False")
    assert failed["reason"] == k.INVALID_BUILDPACKS
    assert (
        failed["message"]
        == 'buildpack "not/in-the-store" not present in default ClusterStore. See `cf buildpacks`'
    )
    assert failed["observedGeneration"] == workload["metadata"]["generation"]
    ready = await env.condition(workload["metadata"]["name"], k.READY)
    assert ready is not None and ready["status"] == "True"  # nothing to retry
    assert await env.get(r.IMAGE, APP_GUID) is None


async def test_buildpacks_without_the_default_cluster_builder_fail_the_workload(env: Env) -> None:
    """U1."""
    await env.client.delete(r.CLUSTER_BUILDER, env.settings.cluster_builder_name)
    workload = await env.create_workload(env.workload_body(buildpacks=["repo/my-buildpack"]))
    failed = await env.wait_succeeded(workload["metadata"]["name"], "False")
    assert (failed["reason"], failed["message"]) == (k.BUILDER_NOT_READY, k.DEFAULT_CLUSTER_BUILDER_NOT_FOUND)
    ready = await env.condition(workload["metadata"]["name"], k.READY)
    assert ready is not None and ready["status"] == "True"


async def test_a_workload_for_another_builder_is_left_alone(env: Env) -> None:
    """Behaviours 20-21."""
    body = env.workload_body(builderName="notkpackreconciler")
    workload = await env.create_workload(body)
    name = workload["metadata"]["name"]
    await env.create(
        r.IMAGE,
        {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "Image",
            "metadata": {"name": "another-app", "namespace": env.namespace},
            "spec": {"tag": "x", "builder": {"kind": "ClusterBuilder", "name": "x"}, "source": {}},
        },
    )
    await env.set_status(
        r.BUILD_WORKLOAD,
        name,
        {
            "conditions": [
                {
                    "type": k.SUCCEEDED,
                    "status": "Unknown",
                    "reason": "thinking",
                    "message": "thunking",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ]
        },
    )

    async def untouched() -> bool:
        current = await env.workload(name)
        succeeded = await env.succeeded(name)
        return (
            await env.get(r.IMAGE, APP_GUID) is None
            and not current["metadata"].get("finalizers")
            and succeeded is not None
            and succeeded["reason"] == "thinking"
            and [c["type"] for c in current["status"]["conditions"]] == [k.SUCCEEDED]
        )

    await consistently(untouched, 1.0, "a foreign workload is never touched")
