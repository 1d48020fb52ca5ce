"""The build cache kinds (issue 8 §1, ``service.reconcilers.build_cache``) with the kpack simulator playing
kpack: its webhooks judge every Image write, its builds write and read registry caches. The service is
started again with another configuration where an operator would change it, over the same cluster. On the
emulator, and on the real kube-apiserver through ``TEST_KUBECONFIG`` (``kpack_cluster``)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from service.reconcilers import korifi as k
from service.reconcilers.kpack_objects import quantity_value
from service.registry.client import RegistryClient
from service.runtime import Manager
from simcluster.registry import RunningRegistry
from tests.helpers import eventually
from tests.reconcilers.conftest import KpackCluster

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]
APP = "app"


@dataclass
class Cluster:
    kc: KpackCluster
    images: RegistryClient

    @property
    def client(self) -> KubeClient:
        return self.kc.client

    @property
    def registry(self) -> RunningRegistry:
        return self.kc.registry

    @property
    def space(self) -> str:
        return self.kc.space

    @property
    def prefix(self) -> str:
        return f"{self.registry.host}/cf/"

    def service(self, **settings: Any) -> AbstractAsyncContextManager[Manager]:
        """The service, configured with ``settings`` (``Config`` field names), for the block."""
        return self.kc.service(**{"build_cache_mb": 1024, **settings})

    async def build(self, name: str, source: str = "pkg:1") -> Obj:
        """A workload of the app, built to the end; it must succeed."""
        body = {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {"name": name, "namespace": self.space, "labels": {k.APP_GUID_LABEL: APP}},
            "spec": {
                "buildRef": {"name": name},
                "builderName": k.BUILDER_NAME,
                "source": {"registry": {"image": f"{self.registry.host}/packages/{source}"}},
            },
        }
        await self.client.create(r.BUILD_WORKLOAD, body, self.space)

        async def finished() -> Obj | None:
            obj = await self.client.get(r.BUILD_WORKLOAD, name, self.space)
            done = [
                c
                for c in (obj.get("status") or {}).get("conditions") or ()
                if c["type"] == k.SUCCEEDED and c["status"] != "Unknown"
            ]
            return obj if done else None

        workload: Obj = await eventually(finished, 15, f"workload {name} finished")
        condition = next(c for c in workload["status"]["conditions"] if c["type"] == k.SUCCEEDED)
        assert condition["reason"] == k.BUILD_SUCCEEDED, condition
        return workload

    async def image(self) -> Obj:
        image: Obj = await self.client.get(r.IMAGE, APP, self.space)
        return image

    async def build_of(self, workload: Obj) -> Obj:
        """The kpack Build that made a workload's droplet."""
        droplet = workload["status"]["droplet"]["registry"]["image"]
        builds = (await self.client.list(r.BUILD, self.space))["items"]
        return next(b for b in builds if (b.get("status") or {}).get("latestImage") == droplet)

    async def events(self, workload: str, reason: str) -> list[Obj]:
        items = (await self.client.list(r.EVENT, self.space))["items"]
        return [e for e in items if e["involvedObject"]["name"] == workload and e["reason"] == reason]


@pytest.fixture
async def cluster(kpack_cluster: KpackCluster) -> AsyncIterator[Cluster]:
    async with RegistryClient(timeout=5.0) as images:
        yield Cluster(kpack_cluster, images)


async def test_a_registry_cache_is_written_by_each_build_and_read_by_the_next(cluster: Cluster) -> None:
    async with cluster.service(build_cache="registry"):
        first = await cluster.build("wl-1")
        second = await cluster.build("wl-2", source="pkg:2")
    image = await cluster.image()
    tag = f"{cluster.prefix}{APP}-cache"
    assert image["spec"]["cache"] == {"registry": {"tag": tag}}
    cache_1, cache_2 = first["status"]["droplet"]["cacheImage"], second["status"]["droplet"]["cacheImage"]
    assert cache_1.startswith(f"{tag}@sha256:") and cache_2.startswith(f"{tag}@sha256:")
    assert cache_1 != cache_2
    # kpack hands each build the cache its predecessor wrote, by digest.
    build_2 = await cluster.build_of(second)
    assert build_2["spec"]["cache"] == {"registry": {"tag": tag}}
    assert build_2["spec"]["lastBuild"]["cache"]["image"] == cache_1


async def test_no_cache_is_an_empty_cache_never_kpacks_default_volume(cluster: Cluster) -> None:
    """The cluster has a default StorageClass, so an omitted cache would become a 2G volume."""
    async with cluster.service(build_cache="none"):
        workload = await cluster.build("wl-1")
    image = await cluster.image()
    assert image["spec"]["cache"] == {}
    assert "cacheImage" not in workload["status"]["droplet"]
    assert (await cluster.build_of(workload))["spec"].get("cache") in (None, {})


async def test_switching_kinds_keeps_the_image_and_every_droplet(cluster: Cluster) -> None:
    """volume → registry → none → volume, one operator change at a time, each new workload of the app
    building; the Image, its earlier Builds and their droplet images stay."""
    workloads: list[Obj] = []
    volume = {"volume": {"size": mib(1024)}}
    registry = {"registry": {"tag": f"{cluster.prefix}{APP}-cache"}}
    for i, (kind, expected) in enumerate(
        (("volume", volume), ("registry", registry), ("none", {}), ("volume", volume))
    ):
        async with cluster.service(build_cache=kind):
            workloads.append(await cluster.build(f"wl-{i}", source=f"pkg:{i}"))
        assert cache_of(await cluster.image()) == expected, kind
    await assert_kept(cluster, workloads)


async def test_a_smaller_volume_or_another_class_replaces_the_volume_not_the_image(cluster: Cluster) -> None:
    """kpack refuses both changes; Korifi would recreate the Image, and the garbage collector would take its
    Builds and their droplets along (korifi.md §6.6)."""
    fast = f"fast-{cluster.space}"  # cluster-scoped: a name of this test's, on a shared cluster
    await cluster.client.create(
        r.STORAGE_CLASS,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": fast},
            "provisioner": "example.com/fast",
        },
    )
    try:
        workloads = []
        async with cluster.service():
            workloads.append(await cluster.build("wl-0"))
        async with cluster.service(build_cache_mb=512):
            workloads.append(await cluster.build("wl-1", source="pkg:1b"))
        assert cache_of(await cluster.image()) == {"volume": {"size": mib(512)}}
        async with cluster.service(build_cache_mb=512, build_cache_storage_class=fast):
            workloads.append(await cluster.build("wl-2", source="pkg:2"))
        assert cache_of(await cluster.image()) == {"volume": {"size": mib(512), "storageClassName": fast}}
        for name, change in (("wl-1", "shrink"), ("wl-2", "class")):
            events = await cluster.events(name, k.BUILD_CACHE_REPLACED)
            assert [e["message"] for e in events] == [
                f'the build cache volume of kpack Image "{APP}" is replaced ({change})'
            ]
        # Back to the default class: the configured class empty keeps the one the Image has.
        async with cluster.service(build_cache_mb=512):
            workloads.append(await cluster.build("wl-3", source="pkg:3"))
        assert (await cluster.image())["spec"]["cache"]["volume"]["storageClassName"] == fast
        await assert_kept(cluster, workloads)
    finally:
        await cluster.client.delete(r.STORAGE_CLASS, fast)


def mib(n: int) -> Decimal:
    return Decimal(n * 2**20)


def cache_of(image: Obj) -> Obj:
    """The Image's ``spec.cache``, a volume's size as bytes (kpack writes quantities back canonically:
    1024Mi comes back as 1Gi)."""
    cache: Obj = copy.deepcopy(image["spec"]["cache"])
    if "volume" in cache:
        cache["volume"]["size"] = quantity_value(cache["volume"]["size"])
    return cache


async def assert_kept(cluster: Cluster, workloads: list[Obj]) -> None:
    """One Image all along (generations counted on from 1), every workload's Build still there, and every
    droplet still in the registry."""
    image = await cluster.image()
    generations = [int(w["metadata"]["labels"][k.IMAGE_GENERATION_LABEL]) for w in workloads]
    assert generations == sorted(set(generations)) and generations[0] == 1, generations
    uids = set()
    for workload in workloads:
        build = await cluster.build_of(workload)
        assert build["metadata"].get("deletionTimestamp") is None
        uids.update(o["uid"] for o in build["metadata"]["ownerReferences"] if o["kind"] == "Image")
        assert await cluster.images.get_manifest(workload["status"]["droplet"]["registry"]["image"])
    assert uids == {image["metadata"]["uid"]}
