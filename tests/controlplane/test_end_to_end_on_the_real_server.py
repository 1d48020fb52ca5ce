"""The end-to-end scenario (``tests/e2e/scenario.py``: a hundred workloads, default and custom builders,
failing builds) on the real control plane: kube-apiserver and kube-controller-manager, the kpack
simulator as a process of its own with real admission webhooks (``python -m simcluster kpack``), and
``kpack-image-builder run`` as a process speaking as the Helm chart's ServiceAccount (a TokenRequest token,
bound only to the RBAC the chart renders) — the service as it is deployed, every behaviour of the scenario
with the chart's least privilege.

The control plane is shared by the session, so everything here has names of its own
(``tests/kpack_world.py``), deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from simcluster.crds import bundled_crd_dirs, read_documents
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
from tests.kpack_world import isolated

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

Obj = dict[str, Any]


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
    world = isolated(registry.host, uuid.uuid4().hex[:6], spaces=4)
    scenario = Scenario(world.spaces, registry.host, world.root, world.cluster_builder)
    documents = render_chart(release_name(), f"e2e-release-{uuid.uuid4().hex[:6]}")
    identity = await install_identity(admin, real_control_plane, documents)
    try:
        await wait_authorized(admin, identity, permissions(documents))
        service_kubeconfig = tmp_path / "service.kubeconfig"
        service_kubeconfig.write_bytes(orjson.dumps(identity.kubeconfig))  # JSON is YAML
        await world.create(admin)
        async with kpack_process(real_control_plane.kubeconfig, registry.url, build_seconds=0.3):
            await scenario.play(admin, service_kubeconfig)
    finally:
        await remove_identity(admin, identity, documents)
        await world.remove(admin)
