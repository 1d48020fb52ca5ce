"""The BuilderInfo mirrors the default ClusterBuilder (korifi.md §4.3 I, behaviours 44-55)."""

from __future__ import annotations

from typing import Any

import pytest

from service.kube import resources as r
from service.reconcilers import korifi as k
from tests.helpers import consistently, eventually
from tests.reconcilers.conftest import Env

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]

ORDER = [("golang", "1.2.3"), ("python", "2.3.4"), ("java", "3.4")]


async def cluster_builder_status(
    env: Env, order: list[tuple[str, str]], stack: str, ready: str, message: str = ""
) -> None:
    await env.set_status(
        r.CLUSTER_BUILDER,
        env.settings.cluster_builder_name,
        {
            "order": [{"group": [{"id": bp, "version": v}]} for bp, v in order],
            "stack": {"id": stack},
            "conditions": [{"type": "Ready", "status": ready, "message": message}],
        },
    )


async def builder_info(env: Env, name: str = k.BUILDER_INFO_NAME, namespace: str = "", **meta: Any) -> Obj:
    namespace = namespace or env.settings.cf_root_namespace
    if await env.get(r.NAMESPACE, namespace) is None:
        await env.create(
            r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
    return await env.create(
        r.BUILDER_INFO,
        {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuilderInfo",
            "metadata": {"name": name, "namespace": namespace, **meta},
            "spec": {},
        },
    )


async def status_of(env: Env, name: str = k.BUILDER_INFO_NAME, namespace: str = "") -> Obj:
    obj = await env.get(r.BUILDER_INFO, name, namespace or env.settings.cf_root_namespace)
    status: Obj = (obj or {}).get("status") or {}
    return status


def ready_of(status: Obj) -> Obj | None:
    return next((c for c in status.get("conditions") or () if c["type"] == k.READY), None)


async def reconciled(env: Env, ready: str) -> Obj:
    async def check() -> Obj | None:
        status = await status_of(env)
        condition = ready_of(status)
        return status if condition and condition["status"] == ready else None

    return await eventually(check, what=f"the BuilderInfo Ready={ready}")


async def test_mirrors_a_ready_cluster_builder(env: Env) -> None:
    """Behaviours 44-47."""
    await cluster_builder_status(env, ORDER, "ubuntu-kreepy-koala", "True")
    info = await builder_info(env)
    status = await reconciled(env, "True")
    assert [(b["name"], b["version"], b["stack"]) for b in status["buildpacks"]] == [
        (bp, v, "ubuntu-kreepy-koala") for bp, v in ORDER
    ]
    assert [s["name"] for s in status["stacks"]] == ["ubuntu-kreepy-koala"]
    cluster_builder = await env.get(r.CLUSTER_BUILDER, env.settings.cluster_builder_name)
    assert cluster_builder is not None
    created = cluster_builder["metadata"]["creationTimestamp"]
    assert status["stacks"][0]["creationTimestamp"] == created
    assert status["stacks"][0]["updatedTimestamp"] >= created
    ready = ready_of(status)
    assert ready is not None and (ready["reason"], ready["message"]) == ("Ready", "Ready")
    current = await env.get(r.BUILDER_INFO, k.BUILDER_INFO_NAME, env.settings.cf_root_namespace)
    assert current is not None
    assert ready["observedGeneration"] == current["metadata"]["generation"] == status["observedGeneration"]
    assert info["metadata"]["generation"] == current["metadata"]["generation"]


async def test_a_builder_info_being_deleted_is_not_reconciled(env: Env) -> None:
    """Behaviour 48."""
    await cluster_builder_status(env, ORDER, "ubuntu-kreepy-koala", "True")
    await builder_info(env, finalizers=["do-not-delete-yet"])
    await env.client.delete(r.BUILDER_INFO, k.BUILDER_INFO_NAME, env.settings.cf_root_namespace)

    async def unobserved() -> bool:
        obj = await env.get(r.BUILDER_INFO, k.BUILDER_INFO_NAME, env.settings.cf_root_namespace)
        assert obj is not None
        return (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]

    await consistently(unobserved, 1.0, "observedGeneration never catches up with the deletion")


@pytest.mark.parametrize("message", ["something happened", ""])
async def test_an_unready_cluster_builder_makes_it_unready(env: Env, message: str) -> None:
    """Behaviours 49-50."""
    await cluster_builder_status(env, ORDER, "ubuntu-kreepy-koala", "False", message)
    await builder_info(env)
    status = await reconciled(env, "False")
    ready = ready_of(status)
    assert ready is not None and ready["reason"] == k.CLUSTER_BUILDER_NOT_READY
    assert f'ClusterBuilder "{env.settings.cluster_builder_name}" is not ready: {message}' in ready["message"]
    current = await env.get(r.BUILDER_INFO, k.BUILDER_INFO_NAME, env.settings.cf_root_namespace)
    assert current is not None and ready["observedGeneration"] == current["metadata"]["generation"]
    assert len(status["buildpacks"]) == 3  # the lists are written all the same


async def test_follows_changes_of_the_cluster_builder(env: Env) -> None:
    """Behaviours 51-52."""
    await cluster_builder_status(env, ORDER, "ubuntu-kreepy-koala", "True")
    await builder_info(env)
    await reconciled(env, "True")
    new_order = [("java", "3.4"), ("golang", "1.2.3"), ("python", "2.3.4"), ("rust", "42.0")]
    await cluster_builder_status(env, new_order, "ubuntu-lucky-leopard", "False")
    status = await reconciled(env, "False")
    assert [(b["name"], b["version"], b["stack"]) for b in status["buildpacks"]] == [
        (bp, v, "ubuntu-lucky-leopard") for bp, v in new_order
    ]
    assert [s["name"] for s in status["stacks"]] == ["ubuntu-lucky-leopard"]


@pytest.mark.parametrize(
    ("name", "namespace"), [("some-other-build-reconciler", "root"), (k.BUILDER_INFO_NAME, "elsewhere")]
)
async def test_other_builder_infos_are_left_alone(env: Env, name: str, namespace: str) -> None:
    """Behaviours 53-54."""
    await cluster_builder_status(env, ORDER, "ubuntu-kreepy-koala", "True")
    # "root": the CF root namespace; "elsewhere": the test's own namespace, which is not the root
    namespace = env.settings.cf_root_namespace if namespace == "root" else env.namespace
    await builder_info(env, name, namespace)
    await consistently(lambda: _empty(status_of(env, name, namespace)), 1.0, "untouched")


async def _empty(value: Any) -> bool:
    return not await value


async def test_a_missing_cluster_builder_empties_the_lists(env: Env) -> None:
    """Behaviour 55, and recovery once the ClusterBuilder is back (a mid-2024 test Korifi dropped)."""
    await env.client.delete(r.CLUSTER_BUILDER, env.settings.cluster_builder_name)
    await builder_info(env)
    status = await reconciled(env, "False")
    ready = ready_of(status)
    assert ready is not None and ready["reason"] == k.CLUSTER_BUILDER_MISSING
    name = env.settings.cluster_builder_name
    assert ready["message"] == (
        f'resource not ready: ClusterBuilderMissing: Error fetching ClusterBuilder "{name}": '
        f'ClusterBuilder.kpack.io "{name}" not found'
    )
    assert status["buildpacks"] == [] and status["stacks"] == []
    await env.cluster_builder()
    status = await reconciled(env, "True")
    assert [b["name"] for b in status["buildpacks"]] == ["repo/my-buildpack", "repo/another-buildpack"]
