"""Buildpack resolution (issue 8 §2, ``service.reconcilers.buildpacks``) with the kpack simulator playing
kpack: requested ids and ``id@version`` resolved over the namespace's Buildpacks, the ClusterBuildpacks and
the default ClusterBuilder as kpack resolves a Builder's order, the custom Builder naming the source, and
kpack building with it. On the emulator, and on the real kube-apiserver through ``TEST_KUBECONFIG``
(``kpack_cluster``). Buildpack ids carry a suffix of the test's own, so that ClusterBuildpacks other tests
leave on a shared cluster cannot answer for them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.reconcilers import korifi as k
from simcluster.kpack import CatalogBuildpack
from tests.helpers import eventually
from tests.reconcilers.conftest import Env, KpackCluster

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]


@dataclass
class Cluster:
    kc: KpackCluster
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    cluster_buildpacks: list[str] = field(default_factory=list)

    @property
    def client(self) -> KubeClient:
        return self.kc.client

    @property
    def space(self) -> str:
        return self.kc.space

    def id(self, name: str) -> str:
        """A buildpack id of this test's own."""
        return f"test-{self.suffix}/{name}"

    def package(self, name: str, bp_id: str, version: str) -> str:
        """A buildpackage holding one buildpack, pushed to the simulated registry; its image."""
        image = f"{self.kc.registry.host}/buildpacks/{self.suffix}/{name}:latest"
        self.kc.kpack.publish_buildpackage(image, [CatalogBuildpack(bp_id, version)])
        return image

    async def buildpack(self, name: str, bp_id: str, version: str) -> None:
        """A namespace Buildpack of the space, offering ``bp_id`` at ``version``."""
        image = self.package(f"ns-{name}", bp_id, version)
        body = {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "Buildpack",
            "metadata": {"name": name, "namespace": self.space},
            "spec": {"image": image},
        }
        await self.client.create(r.BUILDPACK, body, self.space)

    async def cluster_buildpack(self, name: str, bp_id: str, version: str) -> str:
        """A ClusterBuildpack (named after this test) offering ``bp_id`` at ``version``; its name."""
        full = f"{name}-{self.suffix}"
        body = {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "ClusterBuildpack",
            "metadata": {"name": full},
            "spec": {"image": self.package(f"cluster-{name}", bp_id, version)},
        }
        self.cluster_buildpacks.append(full)
        await self.client.create(r.CLUSTER_BUILDPACK, body)
        return full

    async def read_by_kpack(self, resource: r.Resource, name: str) -> None:
        """Wait until kpack has read the object's image (its buildpacks in its status)."""

        async def read() -> bool:
            obj = await self.client.get(resource, name, self.space if resource.namespaced else None)
            return bool((obj.get("status") or {}).get("buildpacks"))

        await eventually(read, what=f"{resource.kind} {name} read by kpack")

    async def workload(self, name: str, buildpacks: list[str]) -> None:
        body = {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {"name": name, "namespace": self.space, "labels": {k.APP_GUID_LABEL: name}},
            "spec": {
                "buildRef": {"name": name},
                "builderName": k.BUILDER_NAME,
                "source": {"registry": {"image": f"{self.kc.registry.host}/packages/pkg:1"}},
                "buildpacks": buildpacks,
            },
        }
        await self.client.create(r.BUILD_WORKLOAD, body, self.space)

    async def outcome(self, name: str, within: float = 20.0) -> Obj:
        """The workload's final Succeeded condition."""

        async def finished() -> Obj | None:
            obj = await self.client.get(r.BUILD_WORKLOAD, name, self.space)
            for condition in (obj.get("status") or {}).get("conditions") or ():
                if condition["type"] == k.SUCCEEDED and condition["status"] in ("True", "False"):
                    return dict(condition)
            return None

        return await eventually(finished, within, f"workload {name} finished")

    async def builder(self, buildpacks: list[str]) -> Obj:
        builder: Obj = await self.client.get(r.BUILDER, k.builder_name(buildpacks), self.space)
        return builder


@pytest.fixture
async def cluster(kpack_cluster: KpackCluster) -> AsyncIterator[Cluster]:
    c = Cluster(kpack_cluster)
    try:
        async with kpack_cluster.service(builder_readiness_timeout=10.0):
            yield c
    finally:
        for name in c.cluster_buildpacks:  # cluster-scoped: a shared cluster outlives the test
            with contextlib.suppress(errors.NotFound):
                await kpack_cluster.client.delete(r.CLUSTER_BUILDPACK, name)


async def test_a_pinned_version_from_the_namespace_buildpack_builds(cluster: Cluster) -> None:
    tool = cluster.id("tool")
    # The same id and version in a ClusterBuildpack too: the namespace's Buildpack wins (kpack.md §6.3).
    cluster_buildpack = await cluster.cluster_buildpack("tool", tool, "1.0.0")
    await cluster.buildpack("tool", tool, "1.0.0")
    for resource, name in ((r.BUILDPACK, "tool"), (r.CLUSTER_BUILDPACK, cluster_buildpack)):
        await cluster.read_by_kpack(resource, name)
    requested = [f"{tool}@1.0.0"]
    await cluster.workload("pinned", requested)
    outcome = await cluster.outcome("pinned")
    assert (outcome["status"], outcome["reason"]) == ("True", k.BUILD_SUCCEEDED), outcome
    builder = await cluster.builder(requested)
    assert builder["spec"]["order"] == [
        {"group": [{"kind": "Buildpack", "name": "tool", "id": tool, "version": "1.0.0"}]}
    ]
    assert builder["status"]["order"] == [{"group": [{"id": tool, "version": "1.0.0"}]}]
    build = await cluster.client.get(r.BUILD, "pinned-build-1", cluster.space)
    assert build["metadata"]["annotations"]["image.kpack.io/builderName"] == builder["metadata"]["name"]


async def test_the_highest_semver_is_chosen(cluster: Cluster) -> None:
    tool = cluster.id("tool")
    await cluster.buildpack("tool-a", tool, "1.9.0")
    await cluster.buildpack("tool-b", tool, "v1")  # Masterminds semver reads it as 1.0.0
    newest = await cluster.cluster_buildpack("tool", tool, "1.10.0")  # higher as semver, lower as a string
    # Made a moment ago, the ClusterBuildpack may not be in the service's cache at all: an operator makes
    # buildpacks before the apps that name them.
    for resource, name in ((r.BUILDPACK, "tool-a"), (r.BUILDPACK, "tool-b"), (r.CLUSTER_BUILDPACK, newest)):
        await cluster.read_by_kpack(resource, name)
    await cluster.workload("newest", [tool])
    outcome = await cluster.outcome("newest")
    assert (outcome["status"], outcome["reason"]) == ("True", k.BUILD_SUCCEEDED), outcome
    builder = await cluster.builder([tool])
    assert builder["spec"]["order"] == [
        {"group": [{"kind": "ClusterBuildpack", "name": newest, "id": tool, "version": "1.10.0"}]}
    ]
    assert builder["status"]["order"] == [{"group": [{"id": tool, "version": "1.10.0"}]}]


async def test_every_unknown_id_is_listed(cluster: Cluster) -> None:
    tool = cluster.id("tool")
    await cluster.cluster_buildpack("tool", tool, "1.0.0")
    one, two = cluster.id("nobody-one"), cluster.id("nobody-two")
    await cluster.workload("unknowns", ["paketo-buildpacks/go", one, tool, two])
    outcome = await cluster.outcome("unknowns")
    assert (outcome["status"], outcome["reason"]) == ("False", k.INVALID_BUILDPACKS)
    assert outcome["message"] == (
        f'buildpacks "{one}", "{two}" not present in default ClusterStore. See `cf buildpacks`'
    )
    # One unknown id: Korifi's text, word for word.
    await cluster.workload("unknown", [one])
    outcome = await cluster.outcome("unknown")
    assert (outcome["reason"], outcome["message"]) == (k.INVALID_BUILDPACKS, k.invalid_buildpack_message(one))
    with pytest.raises(errors.NotFound):
        await cluster.builder([one])


async def test_a_pinned_version_that_does_not_exist_is_named(cluster: Cluster) -> None:
    tool = cluster.id("tool")
    await cluster.buildpack("tool", tool, "1.2")
    await cluster.workload("missing", [f"{tool}@1.2.0"])  # kpack compares pinned versions as strings
    outcome = await cluster.outcome("missing")
    assert (outcome["status"], outcome["reason"]) == ("False", k.INVALID_BUILDPACKS)
    assert outcome["message"] == (
        f'buildpack "{tool}@1.2.0" not present in default ClusterStore '
        f'("{tool}" has no version 1.2.0, only 1.2). See `cf buildpacks`'
    )


async def test_ids_of_the_cluster_builder_still_resolve(cluster: Cluster) -> None:
    """Korifi's behaviour: an id of the ClusterBuilder's order, and Korifi's ``{id}`` in the Builder."""
    await cluster.workload("korifi", ["paketo-buildpacks/go"])
    await cluster.workload("korifi-pinned", ["paketo-buildpacks/ruby@0.47.0"])
    for name, requested, entry in (
        ("korifi", ["paketo-buildpacks/go"], {"id": "paketo-buildpacks/go"}),
        (
            "korifi-pinned",
            ["paketo-buildpacks/ruby@0.47.0"],
            {"id": "paketo-buildpacks/ruby", "version": "0.47.0"},
        ),
    ):
        outcome = await cluster.outcome(name)
        assert (outcome["status"], outcome["reason"]) == ("True", k.BUILD_SUCCEEDED), (name, outcome)
        builder = await cluster.builder(requested)
        assert builder["spec"]["order"] == [{"group": [entry]}]


# ---------------------------------------------------------------------------------------- kpack's side by hand
# (``env``: no simulator, so a Buildpack's status is what the test writes, and when.)
async def _buildpack(env: Env, name: str, entries: list[Obj] | None) -> None:
    """A namespace Buildpack; with ``entries``, as kpack has read it (else not read yet)."""
    created = await env.create(
        r.BUILDPACK,
        {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "Buildpack",
            "metadata": {"name": name, "namespace": env.namespace},
            "spec": {"image": f"my.repository/buildpacks/{name}"},
        },
    )
    if entries is not None:
        await env.set_status(r.BUILDPACK, name, _read(created, entries))


def _read(buildpack: Obj, entries: list[Obj]) -> Obj:
    return {
        "observedGeneration": buildpack["metadata"]["generation"],
        "conditions": [{"type": "Ready", "status": "True"}],
        "buildpacks": entries,
    }


@pytest.mark.readiness_timeout(60)
async def test_a_buildpack_kpack_has_not_read_is_waited_for(env: Env) -> None:
    await _buildpack(env, "late", None)
    workload = await env.create_workload(env.workload_body(buildpacks=["late/tool@2.0.0"]))
    name = workload["metadata"]["name"]

    async def waiting() -> Obj | None:
        ready = await env.condition(name, k.READY)
        return ready if ready and ready["status"] == "False" else None

    ready = await eventually(waiting, what="the workload waiting for kpack")
    assert ready["message"] == 'waiting for kpack to resolve Buildpack "late"', ready
    assert await env.succeeded(name) is None
    late = await env.get(r.BUILDPACK, "late")
    assert late is not None
    await env.set_status(r.BUILDPACK, "late", _read(late, [{"id": "late/tool", "version": "2.0.0"}]))
    await env.wait_succeeded(name, "Unknown")  # the next look (within a second: the workload is young)
    builder = await env.get(r.BUILDER, k.builder_name(["late/tool@2.0.0"]))
    assert builder is not None
    assert builder["spec"]["order"] == [
        {"group": [{"kind": "Buildpack", "name": "late", "id": "late/tool", "version": "2.0.0"}]}
    ]


async def test_an_unread_buildpack_is_waited_for_only_the_builder_readiness_timeout(env: Env) -> None:
    await _buildpack(env, "never", None)  # kpack never reads it
    workload = await env.create_workload(env.workload_body(buildpacks=["never/tool"]))
    failed = await env.wait_succeeded(workload["metadata"]["name"], "False")
    assert (failed["reason"], failed["message"]) == (
        k.INVALID_BUILDPACKS,
        k.invalid_buildpack_message("never/tool"),
    )


async def test_a_version_that_is_not_semver_is_reported_as_kpack_would_refuse_it(env: Env) -> None:
    await _buildpack(env, "odd", [{"id": "odd/tool", "version": "latest"}])
    await _buildpack(env, "fine", [{"id": "odd/tool", "version": "1.0.0"}])
    unpinned = await env.create_workload(env.workload_body(buildpacks=["odd/tool", "repo/my-buildpack"]))
    failed = await env.wait_succeeded(unpinned["metadata"]["name"], "False")
    assert (failed["reason"], failed["message"]) == (
        k.INVALID_BUILDPACKS,
        'buildpack "odd/tool" not present in default ClusterStore (Buildpack "odd" offers "odd/tool" with '
        'version "latest", not semver). See `cf buildpacks`',
    )
    # Pinned, kpack compares strings: the other version is found.
    pinned = await env.create_workload(env.workload_body(buildpacks=["odd/tool@1.0.0"]))
    await env.wait_succeeded(pinned["metadata"]["name"], "Unknown")
