"""The controllers with the kpack simulator playing kpack (webhooks, builders, builds that push): what a
cluster with kpack installed answers, including its refusals. On the emulator, and on another cluster
through ``TEST_KUBECONFIG`` (the real kube-apiserver, with the simulator's webhooks real ones there):
``kpack_cluster`` in the conftest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.reconcilers import korifi as k
from service.registry.client import RegistryClient
from service.registry.errors import NotFound as RegistryNotFound
from simcluster.demo import PULL_SECRET, SERVICE_ACCOUNT
from simcluster.kpack import KpackSimulator
from simcluster.registry import RunningRegistry
from tests.helpers import eventually
from tests.reconcilers.conftest import KpackCluster

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]
ACCOUNT = SERVICE_ACCOUNT


@dataclass
class Cluster:
    kc: KpackCluster

    @property
    def client(self) -> KubeClient:
        return self.kc.client

    @property
    def registry(self) -> RunningRegistry:
        return self.kc.registry

    @property
    def kpack(self) -> KpackSimulator:
        return self.kc.kpack

    @property
    def space(self) -> str:
        return self.kc.space

    async def workload(self, name: str, app: str = "app", source: str = "pkg:1", **spec: Any) -> Obj:
        body = {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {"name": name, "namespace": self.space, "labels": {k.APP_GUID_LABEL: app}},
            "spec": {
                "buildRef": {"name": name},
                "builderName": k.BUILDER_NAME,
                "source": {"registry": {"image": f"{self.registry.host}/packages/{source}"}},
                **spec,
            },
        }
        return await self.client.create(r.BUILD_WORKLOAD, body, self.space)

    async def outcome(self, name: str, within: float = 15.0) -> Obj:
        async def finished() -> Obj | None:
            obj = await self.client.get(r.BUILD_WORKLOAD, name, self.space)
            for condition in (obj.get("status") or {}).get("conditions") or ():
                if condition["type"] == k.SUCCEEDED and condition["status"] in ("True", "False"):
                    return obj
            return None

        return await eventually(finished, within, f"workload {name} finished")


def succeeded(obj: Obj) -> Obj:
    return next(c for c in obj["status"]["conditions"] if c["type"] == k.SUCCEEDED)


@pytest.fixture
async def cluster(kpack_cluster: KpackCluster) -> AsyncIterator[Cluster]:
    async with kpack_cluster.service(builder_readiness_timeout=10.0):
        yield Cluster(kpack_cluster)


async def test_kpack_builds_the_workload_and_the_image_settles(cluster: Cluster) -> None:
    await cluster.workload("wl-1")
    done = await cluster.outcome("wl-1")
    assert succeeded(done)["reason"] == k.BUILD_SUCCEEDED
    droplet = done["status"]["droplet"]
    assert droplet["registry"] == {
        "image": droplet["registry"]["image"],
        "imagePullSecrets": [{"name": PULL_SECRET}],
    }
    assert droplet["registry"]["image"].startswith(f"{cluster.registry.host}/cf/app-droplets@sha256:")
    assert droplet["stack"] == "io.buildpacks.stacks.jammy"
    image = await cluster.client.get(r.IMAGE, "app", cluster.space)
    # kpack's defaults stayed, and re-applying Korifi's spec did not move the generation (no rebuilds).
    assert image["spec"]["imageTaggingStrategy"] == "BuildNumber"
    assert image["metadata"]["generation"] == 1
    assert image["status"]["latestImage"] == droplet["registry"]["image"]
    build = await cluster.client.get(r.BUILD, "app-build-1", cluster.space)
    assert build["metadata"]["finalizers"] == [k.KPACK_BUILD_FINALIZER]


async def test_a_custom_builder_is_built_by_kpack_and_used(cluster: Cluster) -> None:
    await cluster.workload("wl-go", app="go-app", buildpacks=["paketo-buildpacks/go"])
    done = await cluster.outcome("wl-go")
    assert succeeded(done)["reason"] == k.BUILD_SUCCEEDED
    builder = await cluster.client.get(r.BUILDER, k.builder_name(["paketo-buildpacks/go"]), cluster.space)
    assert [entry["group"][0]["id"] for entry in builder["status"]["order"]] == ["paketo-buildpacks/go"]
    build = await cluster.client.get(r.BUILD, "go-app-build-1", cluster.space)
    assert build["metadata"]["annotations"]["image.kpack.io/builderKind"] == "Builder"


async def test_an_image_kpack_refuses_to_change_fails_the_workload_saying_why(cluster: Cluster) -> None:
    """Korifi's §6.7: a new containerRepositoryPrefix means a new spec.tag, which kpack refuses."""
    await cluster.client.create(
        r.IMAGE,
        {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "Image",
            "metadata": {"name": "app", "namespace": cluster.space},
            "spec": {
                "tag": f"{cluster.registry.host}/old-prefix/app-droplets",
                "builder": {"kind": "ClusterBuilder", "name": cluster.kc.cluster_builder},
                "serviceAccountName": ACCOUNT,
                "source": {"registry": {"image": f"{cluster.registry.host}/packages/old"}},
            },
        },
        cluster.space,
    )
    await cluster.workload("wl-1")
    failed = await cluster.outcome("wl-1")
    condition = succeeded(failed)
    assert condition["status"] == "False" and condition["reason"] == "ImageRejected"
    assert condition["message"].startswith(
        'admission webhook "validation.webhook.kpack.io" denied the request: validation failed: '
        "Immutable field changed: spec.tag"
    )
    ready = next(c for c in failed["status"]["conditions"] if c["type"] == k.READY)
    assert ready["status"] == "True"  # not retried: it cannot succeed until someone deletes the Image


async def test_a_build_kpack_skipped_is_requested_and_delivered(cluster: Cluster) -> None:
    """Korifi's skipped-build recovery against kpack: the newer generation gets its build."""
    await cluster.workload("wl-1")
    first = await cluster.outcome("wl-1")
    assert succeeded(first)["reason"] == k.BUILD_SUCCEEDED
    cluster.kpack.skip_next_build(cluster.space, "app")
    await cluster.workload("wl-2", source="pkg:2")
    second = await cluster.outcome("wl-2", within=20)
    assert succeeded(second)["reason"] == k.BUILD_SUCCEEDED
    assert second["metadata"]["labels"][k.IMAGE_GENERATION_LABEL] == "2"
    builds = (await cluster.client.list(r.BUILD, cluster.space))["items"]
    latest = max(builds, key=lambda b: int(b["metadata"]["labels"]["image.kpack.io/buildNumber"]))
    assert latest["metadata"]["annotations"]["image.kpack.io/reason"].split(",")[0] == "TRIGGER"
    assert latest["metadata"]["labels"]["image.kpack.io/imageGeneration"] == "2"
    first_build = await cluster.client.get(r.BUILD, "app-build-1", cluster.space)
    assert first_build["metadata"]["annotations"][k.BUILD_NEEDED_ANNOTATION] == "true"


async def test_deleting_a_workload_deletes_its_builds_and_their_images(cluster: Cluster) -> None:
    """The workload was the Image's only owner: the Image, its Builds and their droplet images all go
    (kpack may rebuild in between, its Build deleted and cleaned up the same way)."""
    await cluster.workload("wl-1")
    done = await cluster.outcome("wl-1")
    image = done["status"]["droplet"]["registry"]["image"]
    async with RegistryClient() as registry:
        assert await registry.get_manifest(image)
        await cluster.client.delete(r.BUILD_WORKLOAD, "wl-1", cluster.space)

        async def all_gone() -> bool:
            builds = (await cluster.client.list(r.BUILD, cluster.space))["items"]
            images = (await cluster.client.list(r.IMAGE, cluster.space))["items"]
            if builds or images:
                return False
            try:
                await registry.get_manifest(image)
            except RegistryNotFound:
                return True
            return False

        await eventually(all_gone, what="the Image, its Builds and the droplet image are gone")
    with pytest.raises(errors.NotFound):
        await cluster.client.get(r.BUILD_WORKLOAD, "wl-1", cluster.space)
