"""Fixtures for the kpack simulator's tests: an emulator with kpack's webhooks, or with the whole simulator
(webhooks, controllers, the default ClusterBuilder and an in-process registry), a fast client, and waits
with deadlines for the things that happen in the background."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from simcluster.kpack import KpackOptions, KpackSimulator, KpackWebhooks, install_webhooks, running_kpack
from simcluster.registry import RunningRegistry, running_registry
from simcluster.server import RunningApiServer
from tests.helpers import eventually

Obj = dict[str, Any]
T = TypeVar("T")

DEADLINE = 10.0
BUILD_SECONDS = 0.05
NS = "cf"
CLUSTER_BUILDER = "cf-kpack-cluster-builder"
PACKAGE = "registry.example.com/cf/app-packages@sha256:" + "1" * 64


async def get_or_none(
    client: KubeClient, res: r.Resource, name: str, namespace: str | None = None
) -> Obj | None:
    try:
        return await client.get(res, name, namespace)
    except errors.NotFound:
        return None


@pytest.fixture
def webhooks(api: RunningApiServer) -> KpackWebhooks:
    """kpack's webhooks alone (no controllers), with the ``cf`` namespace and a default StorageClass."""
    api.cluster.ensure_namespace(NS)
    storage_class(api, "standard", default=True, expandable=True)
    return install_webhooks(api.cluster)


def storage_class(api: RunningApiServer, name: str, *, default: bool, expandable: bool = False) -> None:
    kind = api.cluster.kind_for(r.STORAGE_CLASS.group, r.STORAGE_CLASS.plural)
    meta: Obj = {"name": name}
    if default:
        meta["annotations"] = {"storageclass.kubernetes.io/is-default-class": "true"}
    api.cluster.create(
        kind,
        "v1",
        None,
        {"metadata": meta, "provisioner": "example.com/p", "allowVolumeExpansion": expandable},
    )


@pytest.fixture
async def registry() -> AsyncIterator[RunningRegistry]:
    async with running_registry() as reg:
        yield reg


def options(**overrides: Any) -> KpackOptions:
    return KpackOptions(build_seconds=BUILD_SECONDS, **overrides)


@pytest.fixture
async def kpack(api: RunningApiServer, client: KubeClient) -> AsyncIterator[KpackSimulator]:
    """The whole simulator, seeded as Korifi's chart would, with the default ClusterBuilder ready."""
    async with running_kpack(api, options(), seed=True) as sim:
        await builder_ready(client)
        yield sim


async def builder_ready(client: KubeClient, name: str = CLUSTER_BUILDER) -> Obj:
    found = await eventually(
        lambda: get_or_none(client, r.CLUSTER_BUILDER, name),
        until=lambda b: (
            b is not None
            and condition(b, "Ready").get("status") == "True"
            and b["metadata"]["generation"] == b["status"].get("observedGeneration")
        ),
        what=f"ClusterBuilder {name} ready",
    )
    assert found is not None
    return found


def condition(obj: Obj, type_: str) -> Obj:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def image(
    name: str = "app", namespace: str = NS, *, labels: dict[str, str] | None = None, **spec: Any
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": "kpack.io/v1alpha2",
        "kind": "Image",
        "metadata": meta,
        "spec": {
            "tag": f"registry.example.com/cf/{name}-droplets",
            "builder": {"kind": "ClusterBuilder", "name": CLUSTER_BUILDER},
            "serviceAccountName": "kpack-service-account",
            "source": {"registry": {"image": PACKAGE}},
            **spec,
        },
    }
