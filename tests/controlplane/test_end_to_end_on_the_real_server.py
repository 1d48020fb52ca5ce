"""The end-to-end scenario (``tests/e2e/scenario.py``: a hundred workloads, default and custom builders,
failing builds) on the real control plane: kube-apiserver and kube-controller-manager, the kpack
simulator as a process of its own with real admission webhooks (``python -m simcluster kpack``), and
``kpack-image-builder run`` as a process speaking as the Helm chart's ServiceAccount (a TokenRequest token,
bound only to the RBAC the chart renders) — the service as it is deployed, every behaviour of the scenario
with the chart's least privilege.

The control plane is shared by the session, so everything here has names of its own: the spaces, the root
namespace with the BuilderInfo, the default ClusterBuilder and what it is built from, and a default
StorageClass; all are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from service.kube.resources import Resource
from simcluster.crds import bundled_crd_dirs, read_documents
from simcluster.kpack import simulator as kpack
from simcluster.kpack.apis import CLUSTER_LIFECYCLE_RESOURCE
from simcluster.registry import RunningRegistry, running_registry
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.controlplane.identity import (
    install_identity,
    permissions,
    release_name,
    remove_identity,
    render_chart,
    wait_authorized,
)
from tests.controlplane.kpack_process import kpack_process
from tests.e2e.scenario import Scenario

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

Obj = dict[str, Any]


def isolated_defaults(registry_host: str, suffix: str) -> tuple[Scenario, list[tuple[Resource, Obj]]]:
    """The simulator's defaults (what Korifi's chart and kpack's release create) under names of this
    test's; the ClusterLifecycle keeps kpack's name, which every builder defaults to."""
    root = f"cf-{suffix}"
    named = {
        kpack.CLUSTER_BUILDER: f"{kpack.CLUSTER_BUILDER}-{suffix}",
        kpack.CLUSTER_STACK: f"{kpack.CLUSTER_STACK}-{suffix}",
        kpack.CLUSTER_STORE: f"{kpack.CLUSTER_STORE}-{suffix}",
    }
    objects = []
    for resource, original in kpack.default_objects(registry_host):
        obj = copy.deepcopy(original)
        meta = obj["metadata"]
        if resource == r.NAMESPACE:
            meta["name"] = root
        elif meta.get("namespace") == kpack.ROOT_NAMESPACE:
            meta["namespace"] = root
        elif resource == r.STORAGE_CLASS:
            meta["name"] = f"{meta['name']}-{suffix}"
        elif resource != CLUSTER_LIFECYCLE_RESOURCE:
            meta["name"] = named.get(meta["name"], meta["name"])
        if resource == r.CLUSTER_BUILDER:
            spec = obj["spec"]
            spec["serviceAccountRef"]["namespace"] = root
            spec["stack"]["name"] = named[kpack.CLUSTER_STACK]
            spec["store"]["name"] = named[kpack.CLUSTER_STORE]
        objects.append((resource, obj))
    spaces = tuple(f"space-{i}-{suffix}" for i in range(1, 5))
    return Scenario(spaces, registry_host, root, named[kpack.CLUSTER_BUILDER]), objects


@pytest.fixture
async def admin(real_control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    async with KubeClient(await load_kubeconfig(str(real_control_plane.kubeconfig)), timeout=10) as client:
        await apply_crds(client, read_documents(bundled_crd_dirs()))
        yield client


@pytest.fixture
async def registry() -> AsyncIterator[RunningRegistry]:
    async with running_registry() as reg:
        yield reg


async def test_a_hundred_workloads_as_deployed(
    real_control_plane: ControlPlane, admin: KubeClient, registry: RunningRegistry, tmp_path: Path
) -> None:
    scenario, defaults = isolated_defaults(registry.host, uuid.uuid4().hex[:6])
    documents = render_chart(release_name(), f"e2e-release-{uuid.uuid4().hex[:6]}")
    identity = await install_identity(admin, real_control_plane, documents)
    created: list[tuple[Resource, Obj]] = []
    try:
        await wait_authorized(admin, identity, permissions(documents))
        service_kubeconfig = tmp_path / "service.kubeconfig"
        service_kubeconfig.write_bytes(orjson.dumps(identity.kubeconfig))  # JSON is YAML
        for resource, obj in defaults:
            with contextlib.suppress(errors.AlreadyExists):  # kpack's ClusterLifecycle may be there
                await admin.create(resource, obj, obj["metadata"].get("namespace"))
                created.append((resource, obj))
        async with kpack_process(real_control_plane.kubeconfig, registry.url, build_seconds=0.3):
            await scenario.play(admin, service_kubeconfig)
    finally:
        await remove_identity(admin, identity, documents)
        await clean_up(admin, scenario, created)


async def clean_up(admin: KubeClient, scenario: Scenario, created: list[tuple[Resource, Obj]]) -> None:
    """Leave the shared cluster as it was: the service is gone, so its finalizers are taken off by hand
    (else the namespaces would stay Terminating), then the namespaces and cluster-scoped objects go."""
    for space in scenario.spaces:
        for resource in (r.BUILD_WORKLOAD, r.BUILD):
            with contextlib.suppress(errors.NotFound):
                for obj in (await admin.list(resource, space))["items"]:
                    if obj["metadata"].get("finalizers"):
                        with contextlib.suppress(errors.NotFound):
                            await admin.merge_patch(
                                resource, obj["metadata"]["name"], {"metadata": {"finalizers": None}}, space
                            )
    for name in (*scenario.spaces, scenario.root):
        with contextlib.suppress(errors.NotFound):
            await admin.delete(r.NAMESPACE, name)
    for resource, obj in created:
        if not resource.namespaced and resource != r.NAMESPACE:
            with contextlib.suppress(errors.NotFound):
                await admin.delete(resource, obj["metadata"]["name"])
