"""Stack updates produce new droplets, buildpack updates do not (issue 8 §4, Korifi's ADR "Managing
Builders"; ``service.reconcilers.buildworkload.stack_updates``), with the kpack simulator playing kpack: a
new run image on the ClusterStack makes kpack rebuild (rebase) every app whose last build succeeded, and a
buildpack leaving the ClusterBuilder makes it rebuild with reason ``BUILDPACK``. On the emulator, and on
the real kube-apiserver through ``TEST_KUBECONFIG`` (``kpack_cluster``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload.stack_updates import newer_stack_build
from service.registry.client import RegistryClient
from service.registry.errors import NotFound as RegistryNotFound
from simcluster.kpack.refs import digest_of
from tests.helpers import consistently, eventually
from tests.reconcilers.conftest import KpackCluster

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]
APP = "app"
QUIET = 1.0  # seconds a droplet must stay put after the rebuild that must not move it has succeeded


@dataclass
class Cluster:
    kc: KpackCluster

    @property
    def client(self) -> KubeClient:
        return self.kc.client

    @property
    def space(self) -> str:
        return self.kc.space

    async def build(self, name: str, source: str = "pkg:1") -> Obj:
        """A workload of the app, built to the end; it must succeed."""
        body = {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {"name": name, "namespace": self.space, "labels": {k.APP_GUID_LABEL: APP}},
            "spec": {
                "buildRef": {"name": name},
                "builderName": k.BUILDER_NAME,
                "source": {"registry": {"image": f"{self.kc.registry.host}/packages/{source}"}},
            },
        }
        await self.client.create(r.BUILD_WORKLOAD, body, self.space)

        async def finished() -> Obj | None:
            obj = await self.workload(name)
            done = [c for c in conditions(obj) if c["type"] == k.SUCCEEDED and c["status"] != "Unknown"]
            return obj if done else None

        workload: Obj = await eventually(finished, 15, f"workload {name} finished")
        assert succeeded(workload)["reason"] == k.BUILD_SUCCEEDED
        return workload

    async def workload(self, name: str) -> Obj:
        obj: Obj = await self.client.get(r.BUILD_WORKLOAD, name, self.space)
        return obj

    async def droplet_moves(self, name: str, old: Obj) -> Obj:
        """The workload once its droplet is no longer ``old``."""

        async def moved() -> Obj | None:
            obj = await self.workload(name)
            return obj if obj["status"]["droplet"] != old["status"]["droplet"] else None

        workload: Obj = await eventually(moved, 15, f"the droplet of {name} replaced")
        return workload

    async def builds(self) -> list[Obj]:
        items = (await self.client.list(r.BUILD, self.space))["items"]
        return sorted(items, key=lambda b: int(b["metadata"]["labels"][k.KPACK_BUILD_NUMBER_LABEL]))

    async def rebuilt(self, reason: str, number: int) -> Obj:
        """kpack's Build ``number`` of the app, once it has succeeded; it must have been made for ``reason``."""

        async def done() -> Obj | None:
            for build in await self.builds():
                if build["metadata"]["labels"][k.KPACK_BUILD_NUMBER_LABEL] == str(number):
                    ok = any(c["type"] == k.SUCCEEDED and c["status"] == "True" for c in conditions(build))
                    return build if ok else None
            return None

        build: Obj = await eventually(done, 15, f"kpack build {number} ({reason}) succeeded")
        assert build["metadata"]["annotations"][k.KPACK_REASON_ANNOTATION] == reason
        return build

    async def update_stack(self) -> str:
        """A new run image for the stack under the app's ClusterBuilder (the test's own on a shared
        cluster); returns it."""
        builder = await self.client.get(r.CLUSTER_BUILDER, self.kc.cluster_builder)
        run_image = f"paketobuildpacks/run-jammy-full:{uuid.uuid4().hex[:8]}"
        await self.kc.kpack.update_stack(builder["spec"]["stack"]["name"], run_image)
        return run_image

    async def remove_buildpack(self, buildpack: str) -> None:
        """A buildpack update as kpack sees one: a buildpack the builds used leaves the ClusterBuilder."""
        builder = await self.client.get(r.CLUSTER_BUILDER, self.kc.cluster_builder)
        order = [g for g in builder["spec"]["order"] if g["group"][0]["id"] != buildpack]
        assert len(order) < len(builder["spec"]["order"])
        await self.client.merge_patch(r.CLUSTER_BUILDER, self.kc.cluster_builder, {"spec": {"order": order}})

    async def events(self, workload: str, reason: str) -> list[Obj]:
        items = (await self.client.list(r.EVENT, self.space))["items"]
        return [e for e in items if e["involvedObject"]["name"] == workload and e["reason"] == reason]


def conditions(obj: Obj) -> list[Obj]:
    return list((obj.get("status") or {}).get("conditions") or ())


def succeeded(obj: Obj) -> Obj:
    return next(c for c in conditions(obj) if c["type"] == k.SUCCEEDED)


def image_of(obj: Obj) -> str:
    return str(obj["status"]["droplet"]["registry"]["image"])


@pytest.fixture
async def cluster(kpack_cluster: KpackCluster) -> AsyncIterator[Cluster]:
    async with kpack_cluster.service():
        yield Cluster(kpack_cluster)


async def test_a_stack_update_refreshes_the_droplet_of_a_succeeded_workload(cluster: Cluster) -> None:
    first = await cluster.build("wl-1")
    run_image = await cluster.update_stack()
    rebuild = await cluster.rebuilt("STACK", 2)
    assert (
        rebuild["metadata"]["labels"][k.KPACK_IMAGE_GENERATION_LABEL]
        == first["metadata"]["labels"][k.IMAGE_GENERATION_LABEL]
    )
    updated = await cluster.droplet_moves("wl-1", first)
    droplet, before = updated["status"]["droplet"], first["status"]["droplet"]
    assert droplet["registry"]["image"] == rebuild["status"]["latestImage"] != before["registry"]["image"]
    # A rebase: the app's layers, metadata and pull secrets as they were, on the new run image.
    assert {key: v for key, v in droplet.items() if key != "registry"} == {
        key: v for key, v in before.items() if key != "registry"
    }
    assert droplet["registry"]["imagePullSecrets"] == before["registry"]["imagePullSecrets"]
    assert succeeded(updated) == succeeded(first)  # still the build that succeeded, as Korifi reported it
    [event] = await eventually(lambda: cluster.events("wl-1", k.STACK_UPDATED), what="a StackUpdated Event")
    assert event["type"] == "Normal"
    assert event["message"] == (
        f"droplet {droplet['registry']['image']} from kpack Build {rebuild['metadata']['name']} "
        f"(stack update, run image {rebuild['status']['stack']['runImage']}); was {image_of(first)}"
    )
    assert rebuild["status"]["stack"]["runImage"].endswith(digest_of(run_image))

    # A second stack update moves it on again, never back.
    await cluster.update_stack()
    again = await cluster.rebuilt("STACK", 3)
    latest = await cluster.droplet_moves("wl-1", updated)
    assert image_of(latest) == again["status"]["latestImage"]
    await eventually(
        lambda: cluster.events("wl-1", k.STACK_UPDATED), until=lambda e: len(e) == 2, what="two Events"
    )


async def test_a_buildpack_update_does_not_change_the_droplet(cluster: Cluster) -> None:
    """Not even through a later stack update: kpack rebases that on the image the buildpack update built."""
    first = await cluster.build("wl-1")
    await cluster.remove_buildpack("paketo-buildpacks/java")  # what the app's builds detected
    await cluster.rebuilt("BUILDPACK", 2)
    await _droplet_stays(cluster, "wl-1", first)
    await cluster.update_stack()
    stack = await cluster.rebuilt("STACK", 3)
    await _droplet_stays(cluster, "wl-1", first)
    assert await cluster.events("wl-1", k.STACK_UPDATED) == []
    # A new staging of the same app brings both updates: it shares the generation and takes its newest Build.
    again = await cluster.build("wl-2")
    assert (
        again["metadata"]["labels"][k.IMAGE_GENERATION_LABEL]
        == first["metadata"]["labels"][k.IMAGE_GENERATION_LABEL]
    )
    assert image_of(again) == stack["status"]["latestImage"]


async def _droplet_stays(cluster: Cluster, name: str, was: Obj) -> None:
    async def same() -> bool:
        return bool((await cluster.workload(name))["status"]["droplet"] == was["status"]["droplet"])

    await consistently(same, QUIET, f"the droplet of {name} unchanged")


async def test_only_the_workloads_of_the_rebuilt_generation_follow(cluster: Cluster) -> None:
    """kpack rebuilds the Image's latest generation: its workloads (two with equal specs share it) get the
    new droplet; a workload of an older generation keeps its own."""
    old = await cluster.build("wl-1", source="pkg:1")
    current = await cluster.build("wl-2", source="pkg:2")
    twin = await cluster.build("wl-3", source="pkg:2")
    generation = current["metadata"]["labels"][k.IMAGE_GENERATION_LABEL]
    assert twin["metadata"]["labels"][k.IMAGE_GENERATION_LABEL] == generation
    assert old["metadata"]["labels"][k.IMAGE_GENERATION_LABEL] != generation
    assert image_of(twin) == image_of(current)
    await cluster.update_stack()
    rebuild = await cluster.rebuilt("STACK", 3)
    assert rebuild["metadata"]["labels"][k.KPACK_IMAGE_GENERATION_LABEL] == generation
    for name, was in (("wl-2", current), ("wl-3", twin)):
        assert image_of(await cluster.droplet_moves(name, was)) == rebuild["status"]["latestImage"]
    await _droplet_stays(cluster, "wl-1", old)
    assert await cluster.events("wl-1", k.STACK_UPDATED) == []


async def test_deleting_the_workload_deletes_its_rebuilds_and_their_droplets(cluster: Cluster) -> None:
    first = await cluster.build("wl-1")
    await cluster.update_stack()
    updated = await cluster.droplet_moves("wl-1", first)
    images = [image_of(first), image_of(updated)]
    async with RegistryClient() as registry:
        for image in images:
            assert await registry.get_manifest(image)
        await cluster.client.delete(r.BUILD_WORKLOAD, "wl-1", cluster.space)

        async def all_gone() -> bool:
            if await cluster.builds() or (await cluster.client.list(r.IMAGE, cluster.space))["items"]:
                return False
            for image in images:
                try:
                    await registry.get_manifest(image)
                    return False
                except RegistryNotFound:
                    continue
            return True

        await eventually(all_gone, 15, "the Image, both Builds and both droplet images are gone")


# ---------------------------------------------------------------------------------------- the rule itself
def build(number: int, reason: str, image: str, outcome: str = "True") -> Obj:
    return {
        "metadata": {
            "name": f"app-build-{number}",
            "labels": {k.KPACK_BUILD_NUMBER_LABEL: str(number)},
            "annotations": {k.KPACK_REASON_ANNOTATION: reason},
        },
        "status": {
            "latestImage": image if outcome == "True" else "",
            "conditions": [{"type": k.SUCCEEDED, "status": outcome}] if outcome else [],
        },
    }


@pytest.mark.parametrize(
    ("builds", "current", "expected"),
    [
        pytest.param([build(1, "CONFIG", "a"), build(2, "STACK", "b")], "a", 2, id="a stack update"),
        pytest.param(
            [build(1, "CONFIG", "a"), build(2, "STACK", "b"), build(3, "STACK", "c")], "a", 3, id="the newest"
        ),
        pytest.param(
            [build(3, "STACK", "c"), build(1, "CONFIG", "a"), build(2, "STACK", "b")],
            "c",
            None,
            id="not back",
        ),
        pytest.param(
            [build(1, "CONFIG", "a"), build(2, "STACK", "b"), build(3, "STACK", "", "False")],
            "a",
            2,
            id="failed rebuilds do not count",
        ),
        pytest.param(
            [build(1, "CONFIG", "a"), build(2, "STACK", "b"), build(3, "STACK", "", "")],
            "a",
            2,
            id="running rebuilds do not count yet",
        ),
        pytest.param([build(1, "CONFIG", "a"), build(2, "BUILDPACK", "b")], "a", None, id="buildpack"),
        pytest.param([build(1, "CONFIG", "a"), build(2, "LIFECYCLE", "b")], "a", None, id="lifecycle"),
        pytest.param([build(1, "CONFIG", "a"), build(2, "BUILDPACK,STACK", "b")], "a", None, id="mixed"),
        pytest.param(
            [build(1, "CONFIG", "a"), build(2, "BUILDPACK", "b"), build(3, "STACK", "c")],
            "a",
            None,
            id="a stack update on top of a buildpack update",
        ),
        pytest.param(
            [build(1, "CONFIG", "a"), build(2, "BUILDPACK", "b"), build(3, "STACK", "c")],
            "b",
            3,
            id="a stack update after a droplet that has the buildpack update",
        ),
        pytest.param([build(2, "STACK", "b"), build(3, "STACK", "c")], "a", None, id="its build is gone"),
    ],
)
def test_which_rebuild_replaces_a_droplet(builds: list[Obj], current: str, expected: int | None) -> None:
    found = newer_stack_build(builds, current)
    assert (
        None if found is None else int(found["metadata"]["labels"][k.KPACK_BUILD_NUMBER_LABEL])
    ) == expected
