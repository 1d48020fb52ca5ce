"""The real control plane works, shown with the project's own client: kube-apiserver answers /readyz with
RBAC on; ``KubeClient`` (from ``load_kubeconfig`` on the written admin kubeconfig) creates namespaces, the
project's CRDs and a BuildWorkload; kube-controller-manager's controllers do what the controller's tests
rely on — garbage collection, namespace deletion, the ``default`` ServiceAccount and ``kube-root-ca.crt``
in new namespaces, ClusterRole aggregation.

Skipped, saying why, where ``go`` is missing and nothing is built — an error under ``CI=true``."""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from simcluster.crds import read_documents
from tests.controlplane.build import binaries
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.controlplane.conftest import skip_unless_available
from tests.helpers import eventually

skip_unless_available(module_level=True)  # one line for the whole module; an error under CI=true

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_ROLE = r.Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, False)

# The first test pays for the session's control plane: a build when nothing is cached (8 minutes
# measured on two cores with empty Go caches), else a start of about 3 seconds.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(3600 if binaries().missing() else 120)]

Obj = dict[str, Any]


@pytest.fixture
async def kube(real_control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    async with KubeClient(await load_kubeconfig(str(real_control_plane.kubeconfig)), timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
async def project_crds(real_control_plane: ControlPlane) -> list[str]:
    """manifests/crds, created on the real server as the emulator's loader creates them, Established."""
    async with KubeClient(await load_kubeconfig(str(real_control_plane.kubeconfig))) as client:
        return await apply_crds(client, read_documents([ROOT / "manifests" / "crds"]))


@pytest.fixture
async def namespace(kube: KubeClient) -> AsyncIterator[str]:
    name = f"cp-{uuid.uuid4().hex[:8]}"
    await kube.create(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    with contextlib.suppress(errors.NotFound):
        await kube.delete(r.NAMESPACE, name)


async def gone(kube: KubeClient, res: r.Resource, name: str, namespace: str | None = None) -> bool:
    try:
        await kube.get(res, name, namespace)
    except errors.NotFound:
        return True
    return False


def config_map(name: str, namespace: str, owner: Obj | None = None) -> Obj:
    metadata: Obj = {"name": name, "namespace": namespace}
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
            }
        ]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"k": "v"}}


def build_workload(name: str, namespace: str) -> Obj:
    return {
        "apiVersion": r.BUILD_WORKLOAD.api_version,
        "kind": "BuildWorkload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "buildRef": {"name": name},
            "builderName": "kpack-image-builder",
            "source": {"registry": {"image": "registry.example/app@sha256:" + "0" * 64}},
        },
    }


async def test_readyz_answers_with_the_pinned_release_and_rbac_on(real_control_plane: ControlPlane) -> None:
    cp = real_control_plane
    async with aiohttp.ClientSession(trust_env=False) as http:
        async with http.get(f"{cp.url}/readyz", params={"verbose": "1"}, ssl=cp.ssl_context()) as resp:
            body = await resp.text()
            assert resp.status == 200, body
            assert "[+]etcd ok" in body and "readyz check passed" in body, body
        async with http.get(f"{cp.url}/version", ssl=cp.ssl_context()) as resp:
            assert (await resp.json())["gitVersion"] == cp.version
    # No client certificate: system:anonymous, whom RBAC lets read /readyz and nothing of the API.
    anonymous = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(cp.pki.ca_cert)))
    async with aiohttp.ClientSession(connector=anonymous, trust_env=False) as http:
        async with http.get(f"{cp.url}/readyz") as resp:
            assert resp.status == 200
        async with http.get(f"{cp.url}/api/v1/namespaces") as resp:
            assert resp.status == 403, await resp.text()
            assert (
                'User "system:anonymous" cannot list resource "namespaces"' in (await resp.json())["message"]
            )


async def test_the_project_client_creates_the_crds_and_a_buildworkload(
    kube: KubeClient, project_crds: list[str], namespace: str
) -> None:
    assert sorted(project_crds) == [
        "builderinfos.korifi.cloudfoundry.org",
        "buildworkloads.korifi.cloudfoundry.org",
    ]
    created = await kube.create(r.BUILD_WORKLOAD, build_workload("wl", namespace), namespace)
    assert created["metadata"]["generation"] == 1
    got = await kube.get(r.BUILD_WORKLOAD, "wl", namespace)
    assert got["spec"]["buildRef"] == {"name": "wl"}
    # The status subresource: a status write leaves the spec (and the generation) alone.
    condition = {
        "type": "Succeeded",
        "status": "Unknown",
        "reason": "BuildRunning",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    patched = await kube.patch_status(
        r.BUILD_WORKLOAD, "wl", {"status": {"conditions": [condition]}}, namespace
    )
    assert patched["status"]["conditions"][0]["reason"] == "BuildRunning"
    assert patched["metadata"]["generation"] == 1
    # The CRD's schema is enforced by the real server.
    bad = build_workload("bad", namespace)
    bad["spec"]["buildRef"] = {}
    with pytest.raises(errors.Invalid, match=r"spec\.buildRef\.name: Required value"):
        await kube.create(r.BUILD_WORKLOAD, bad, namespace)


async def test_garbage_collection_deletes_what_a_deleted_owner_owned(
    kube: KubeClient, namespace: str
) -> None:
    owner = await kube.create(r.CONFIG_MAP, config_map("owner", namespace), namespace)
    await kube.create(r.CONFIG_MAP, config_map("owned", namespace, owner), namespace)
    await kube.delete(r.CONFIG_MAP, "owner", namespace)
    await eventually(lambda: gone(kube, r.CONFIG_MAP, "owned", namespace), 30, "the owned ConfigMap deleted")


async def test_garbage_collection_follows_a_custom_resource_owner(
    kube: KubeClient, project_crds: list[str], namespace: str
) -> None:
    """The collector learns of new resource types from discovery every 30 s (hard-coded in v1.37's
    kube-controller-manager), so the dependents of an owner whose kind's CRD was created moments ago
    may wait that long and more (41 s measured) before they go."""
    owner = await kube.create(r.BUILD_WORKLOAD, build_workload("owner", namespace), namespace)
    await kube.create(r.CONFIG_MAP, config_map("owned", namespace, owner), namespace)
    await kube.delete(r.BUILD_WORKLOAD, "owner", namespace)
    await eventually(lambda: gone(kube, r.CONFIG_MAP, "owned", namespace), 90, "the owned ConfigMap deleted")


async def test_a_deleted_namespace_goes_with_its_content(kube: KubeClient, project_crds: list[str]) -> None:
    name = f"cp-gone-{uuid.uuid4().hex[:8]}"
    await kube.create(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    await kube.create(r.CONFIG_MAP, config_map("content", name), name)
    await kube.create(r.BUILD_WORKLOAD, build_workload("wl", name), name)
    deleted = await kube.delete(r.NAMESPACE, name)
    assert deleted["status"]["phase"] == "Terminating"
    await eventually(lambda: gone(kube, r.NAMESPACE, name), 60, f"namespace {name} deleted")


async def test_a_new_namespace_gets_its_default_service_account_and_the_root_ca(
    real_control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    async def present(res: r.Resource, name: str) -> Obj | None:
        try:
            return await kube.get(res, name, namespace)
        except errors.NotFound:
            return None

    await eventually(lambda: present(r.SERVICE_ACCOUNT, "default"), 30, "ServiceAccount default")
    root_ca = await eventually(
        lambda: present(r.CONFIG_MAP, "kube-root-ca.crt"), 30, "ConfigMap kube-root-ca.crt"
    )
    assert root_ca["data"]["ca.crt"] == real_control_plane.pki.ca_cert.read_text()


async def test_cluster_role_aggregation_fills_an_aggregated_role(kube: KubeClient) -> None:
    label = f"test.kpack-image-builder/aggregate-{uuid.uuid4().hex[:8]}"
    aggregate = label.rsplit("/", 1)[1]
    part = f"{aggregate}-part"
    await kube.create(
        CLUSTER_ROLE,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": aggregate},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]},
        },
    )
    rule = {"apiGroups": ["korifi.cloudfoundry.org"], "resources": ["buildworkloads"], "verbs": ["get"]}
    await kube.create(
        CLUSTER_ROLE,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": part, "labels": {label: "true"}},
            "rules": [rule],
        },
    )
    try:

        async def rules() -> list[Obj]:
            return list((await kube.get(CLUSTER_ROLE, aggregate)).get("rules") or ())

        assert await eventually(rules, 30, f"ClusterRole {aggregate} aggregated") == [rule]
    finally:
        for name in (aggregate, part):
            await kube.delete(CLUSTER_ROLE, name)
