"""App-specific builders (issue 8 §3, ``service.reconcilers.custom_builders``) with the kpack simulator
building them: shared and recorded, collected after their last user and not before, made again when
collected under a workload, and waited for from their last change. On the emulator, and on the real
kube-apiserver (whose kube-controller-manager garbage-collects too) through ``TEST_KUBECONFIG``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.reconcilers import korifi as k
from service.reconcilers.custom_builders import APPS_ANNOTATION, CHANGED_ANNOTATION
from simcluster.demo import SERVICE_ACCOUNT
from simcluster.kpack.options import ANNOTATION_NEVER_READY
from tests.helpers import eventually
from tests.reconcilers.conftest import KpackCluster

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]
GO = ["paketo-buildpacks/go"]
BUILDER = k.builder_name(GO)


@dataclass
class Cluster:
    kc: KpackCluster

    @property
    def client(self) -> KubeClient:
        return self.kc.client

    @property
    def space(self) -> str:
        return self.kc.space

    async def workload(self, name: str, app: str, buildpacks: list[str] = GO) -> Obj:
        body = {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {
                "name": name,
                "namespace": self.space,
                "labels": {k.APP_GUID_LABEL: app, k.BUILD_GUID_LABEL: f"guid-{name}"},
            },
            "spec": {
                "buildRef": {"name": name},
                "builderName": k.BUILDER_NAME,
                "source": {"registry": {"image": f"{self.kc.registry.host}/packages/{app}:1"}},
                "buildpacks": buildpacks,
            },
        }
        return await self.client.create(r.BUILD_WORKLOAD, body, self.space)

    async def succeeded(self, name: str, within: float = 15.0) -> Obj:
        """The workload's final Succeeded condition; the test fails unless the build succeeded."""

        async def finished() -> Obj | None:
            obj = await self.client.get(r.BUILD_WORKLOAD, name, self.space)
            for condition in (obj.get("status") or {}).get("conditions") or ():
                if condition["type"] == k.SUCCEEDED and condition["status"] in ("True", "False"):
                    return dict(condition)
            return None

        condition: Obj = await eventually(finished, within, f"workload {name} finished")
        assert condition["reason"] == k.BUILD_SUCCEEDED, condition
        return condition

    async def builder(self) -> Obj | None:
        try:
            builder: Obj = await self.client.get(r.BUILDER, BUILDER, self.space)
            return builder
        except errors.NotFound:
            return None

    async def recorded(self, workloads: set[str], images: set[str]) -> Obj:
        """The Builder once its owner references name exactly these workloads and Images, and its apps."""

        async def check() -> Obj | None:
            builder = await self.builder()
            refs = {
                (o["kind"], o["name"])
                for o in (builder or {}).get("metadata", {}).get("ownerReferences") or ()
            }
            wanted = {("BuildWorkload", w) for w in workloads} | {("Image", i) for i in images}
            # An Image is named after its app: the apps are those of the Images here.
            apps = ((builder or {}).get("metadata", {}).get("annotations") or {}).get(APPS_ANNOTATION)
            return builder if refs == wanted and apps == ",".join(sorted(images)) else None

        found: Obj = await eventually(check, 15, f"the Builder recording {workloads} and {images}")
        return found

    async def records(self, workload: str) -> Obj:
        """The Builder once it records the workload (whatever else it records)."""

        async def check() -> Obj | None:
            builder = await self.builder()
            refs = (builder or {}).get("metadata", {}).get("ownerReferences") or ()
            return builder if any(o["name"] == workload for o in refs) else None

        found: Obj = await eventually(check, 15, f"the Builder recording {workload}")
        return found

    async def delete_workload(self, name: str) -> None:
        await self.client.delete(r.BUILD_WORKLOAD, name, self.space)

    async def gone(self, name: str) -> bool:
        try:
            await self.client.get(r.BUILD_WORKLOAD, name, self.space)
            return False
        except errors.NotFound:
            return True


@pytest.fixture
async def cluster(kpack_cluster: KpackCluster) -> AsyncIterator[Cluster]:
    yield Cluster(kpack_cluster)


async def test_apps_asking_for_the_same_buildpacks_share_one_builder_that_records_them(
    cluster: Cluster,
) -> None:
    async with cluster.kc.service(builder_readiness_timeout=10.0):
        await cluster.workload("wl-a", "app-a")
        await cluster.succeeded("wl-a")
        alone = await cluster.recorded({"wl-a"}, {"app-a"})
        # One app, one build: the ADR's labels.
        assert alone["metadata"]["labels"][k.APP_GUID_LABEL] == "app-a"
        assert alone["metadata"]["labels"][k.BUILD_GUID_LABEL] == "guid-wl-a"
        assert alone["metadata"]["annotations"][APPS_ANNOTATION] == "app-a"
        await cluster.workload("wl-b", "app-b")
        await cluster.succeeded("wl-b")
        shared = await cluster.recorded({"wl-a", "wl-b"}, {"app-a", "app-b"})
    assert shared["metadata"]["uid"] == alone["metadata"]["uid"]  # reused, not made again
    # Two apps: no single value fits the labels; the annotation lists both.
    assert k.APP_GUID_LABEL not in (shared["metadata"].get("labels") or {})
    assert k.BUILD_GUID_LABEL not in (shared["metadata"].get("labels") or {})
    assert shared["metadata"]["annotations"][APPS_ANNOTATION] == "app-a,app-b"
    for app in ("app-a", "app-b"):
        image = await cluster.client.get(r.IMAGE, app, cluster.space)
        assert image["spec"]["builder"]["name"] == BUILDER


async def test_the_builder_goes_with_its_last_user_and_not_before(cluster: Cluster) -> None:
    async with cluster.kc.service(builder_readiness_timeout=10.0):
        await cluster.workload("wl-a", "app-a")
        await cluster.workload("wl-b", "app-b")
        await cluster.succeeded("wl-a")
        await cluster.succeeded("wl-b")
        await cluster.recorded({"wl-a", "wl-b"}, {"app-a", "app-b"})
        await cluster.delete_workload("wl-a")
        # app-a's Image goes with its only workload; app-b still uses the Builder.
        remaining = await cluster.recorded({"wl-b"}, {"app-b"})
        assert remaining["metadata"]["labels"][k.APP_GUID_LABEL] == "app-b"
        await cluster.delete_workload("wl-b")
        await eventually(lambda: cluster.gone("wl-b"), 15, "wl-b gone")
        await eventually(lambda: _none(cluster.builder()), 15, "the Builder collected")


async def test_a_builder_an_image_still_uses_stays(cluster: Cluster) -> None:
    """The app's newest workload (the one whose buildpacks the Image builds with) is deleted, an older one
    stays: kpack keeps rebuilding the Image with the Builder, so it is kept, recorded by the Image."""
    async with cluster.kc.service(builder_readiness_timeout=10.0):
        await cluster.workload("wl-old", "app-a", ["paketo-buildpacks/nodejs"])
        await cluster.succeeded("wl-old")
        await cluster.workload("wl-new", "app-a")
        await cluster.succeeded("wl-new")
        await cluster.delete_workload("wl-new")
        await eventually(lambda: cluster.gone("wl-new"), 15, "wl-new gone")
        kept = await cluster.recorded(set(), {"app-a"})
        assert kept["metadata"]["labels"][k.APP_GUID_LABEL] == "app-a"


async def test_a_new_user_while_the_last_one_goes_keeps_or_remakes_the_builder(cluster: Cluster) -> None:
    """Deleting the last user and asking for the same buildpacks at once: whichever wins, the new workload
    builds, and the Builder records it."""
    async with cluster.kc.service(builder_readiness_timeout=10.0):
        await cluster.workload("wl-a", "app-a")
        await cluster.succeeded("wl-a")
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster.delete_workload, "wl-a")
            tg.start_soon(cluster.workload, "wl-b", "app-b")
        await cluster.succeeded("wl-b")
        await cluster.recorded({"wl-b"}, {"app-b"})


async def test_a_builder_collected_under_a_waiting_workload_is_made_again(cluster: Cluster) -> None:
    """The garbage collector checks a Builder's owners, then deletes it with only a uid precondition: a
    workload that added itself in between loses the Builder it is about to use. Played here by deleting
    the Builder (as the collector does) while the workload waits for it to become ready."""
    await _stale_unready_builder(cluster)
    async with cluster.kc.service(builder_readiness_timeout=10.0):
        await cluster.workload("wl-a", "app-a")
        waited_for = await cluster.records("wl-a")
        image: Obj = await eventually(lambda: _image_using_builder(cluster, "app-a"), 15, "the Image")
        assert image["spec"]["builder"]["name"] == BUILDER
        await cluster.client.delete(
            r.BUILDER, BUILDER, cluster.space, preconditions={"uid": waited_for["metadata"]["uid"]}
        )
        await cluster.succeeded("wl-a")
        remade = await cluster.recorded({"wl-a"}, {"app-a"})
    assert remade["metadata"]["uid"] != waited_for["metadata"]["uid"]


async def test_the_readiness_timeout_counts_from_the_builders_last_change(cluster: Cluster) -> None:
    """A workload made long before (more than the timeout) the service rewrites its Builder's spec waits for
    the rebuilt Builder: a timeout counted from the workload's creation, as Korifi counts it, would fail
    it at once."""
    timeout = 2.0
    await _stale_unready_builder(cluster)
    await cluster.workload("wl-a", "app-a")  # while the service is down
    # The time itself is what is tested: the workload (and the Builder) must be older than the timeout,
    # plus the second the service allows for whole-second timestamps.
    await anyio.sleep(timeout + 1.2)
    async with cluster.kc.service(builder_readiness_timeout=timeout):
        rewritten = await cluster.records("wl-a")
        assert CHANGED_ANNOTATION in rewritten["metadata"]["annotations"]
        await eventually(lambda: _image_using_builder(cluster, "app-a"), 15, "the Image")
        # kpack finishes building the Builder now, within the timeout of the service's change.
        await cluster.client.merge_patch(
            r.BUILDER,
            BUILDER,
            {"metadata": {"annotations": {ANNOTATION_NEVER_READY: None}}},
            cluster.space,
        )
        await cluster.succeeded("wl-a")


# ------------------------------------------------------------------------------------ helpers
async def _none(value: Any) -> bool:
    return (await value) is None


async def _image_using_builder(cluster: Cluster, app: str) -> Obj | None:
    with contextlib.suppress(errors.NotFound):
        image: Obj = await cluster.client.get(r.IMAGE, app, cluster.space)
        if image["spec"]["builder"].get("kind") == k.BUILDER_KIND:
            return image
    return None


async def _stale_unready_builder(cluster: Cluster) -> None:
    """The workload's Builder, made earlier with another tag (so the service rewrites its spec), which kpack
    does not get ready until the test lets it (the simulator's never-ready annotation)."""
    cb = await cluster.client.get(r.CLUSTER_BUILDER, cluster.kc.cluster_builder)
    prefix = f"{cluster.kc.registry.host}/cf/"
    await cluster.client.create(
        r.BUILDER,
        {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "Builder",
            "metadata": {
                "name": BUILDER,
                "namespace": cluster.space,
                "annotations": {ANNOTATION_NEVER_READY: "true"},
            },
            "spec": {
                "tag": f"{prefix}builders-old-{BUILDER}",
                "stack": cb["spec"]["stack"],
                "store": cb["spec"]["store"],
                "serviceAccountName": SERVICE_ACCOUNT,
                "order": [{"group": [{"id": bp}]} for bp in GO],
            },
        },
        cluster.space,
    )
