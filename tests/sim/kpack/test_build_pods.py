"""Build pods: every Build the simulator runs gets a real Pod in the API, named, labelled and owned as
kpack's, whose status is the run's and from which the Build's status is read; a pod deleted under a running
Build is made again; a Build finished by someone else is left alone (no push, its pod untouched); the
``sim.kpack.io/pod-pending`` knob holds a run in each of its three states.

Each test runs twice: in the emulator (``running_kpack``, a fresh one per test) and against the session's
real kube-apiserver (``running_kpack_on_cluster``, with real admission webhooks; one simulator and one set
of default objects, under names of this module's, for the whole module), so the pods are also what
kube-apiserver accepts: its pod validation, its status rules, its immediate delete of an unscheduled pod."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from service.registry.client import RegistryClient
from service.registry.errors import RegistryError
from simcluster.crds import bundled_crd_dirs, read_documents
from simcluster.kpack import KpackSimulator, running_kpack
from simcluster.kpack.options import ANNOTATION_FAIL, ANNOTATION_POD_PENDING
from simcluster.kpack.pods import COMPLETION, STEPS, UNSCHEDULABLE_MESSAGE
from simcluster.kpack.refs import child_name
from simcluster.kpack.simulator import CLUSTER_BUILDER, SERVICE_ACCOUNT, running_kpack_on_cluster
from simcluster.registry import RunningRegistry, running_registry
from simcluster.server import RunningApiServer
from tests.controlplane.build import binaries
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.helpers import consistently, eventually
from tests.kpack_world import isolated
from tests.sim.kpack.conftest import PACKAGE, Obj, builder_ready, condition, get_or_none, options

pytestmark = pytest.mark.anyio

EMULATOR, REAL = "emulator", "kube-apiserver"
DEADLINE = 15.0
LABEL = "kpack.io/build"


@dataclass
class Cluster:
    client: KubeClient  # an administrator's
    kpack: KpackSimulator
    registry: RunningRegistry
    namespace: str  # where the Images go: the builder's service account (with registry credentials) is there
    cluster_builder: str

    def image(self, annotations: dict[str, str] | None = None) -> Obj:
        """An Image of a name of its own (the real server is shared by the module), pushing to the
        registry."""
        name = f"app-{uuid.uuid4().hex[:6]}"
        meta: Obj = {"name": name, "namespace": self.namespace, "labels": {"app": name}}
        if annotations:
            meta["annotations"] = annotations
        return {
            "apiVersion": "kpack.io/v1alpha2",
            "kind": "Image",
            "metadata": meta,
            "spec": {
                "tag": f"{self.registry.host}/cf/{name}-droplets",
                "builder": {"kind": "ClusterBuilder", "name": self.cluster_builder},
                "serviceAccountName": SERVICE_ACCOUNT,
                "source": {"registry": {"image": PACKAGE}},
            },
        }

    async def build_of(self, image: Obj) -> Obj:
        name = child_name(image["metadata"]["name"], "-build-1")
        found = await eventually(
            lambda: get_or_none(self.client, r.BUILD, name, self.namespace), DEADLINE, f"build {name}"
        )
        assert found is not None
        return found

    async def pod(self, build: Obj, *, other_than: str = "") -> Obj:
        """The Build's pod, once there (and, with ``other_than``, once it is another pod than that uid)."""
        name = child_name(build["metadata"]["name"], "-build-pod")
        found = await eventually(
            lambda: get_or_none(self.client, r.POD, name, self.namespace),
            DEADLINE,
            f"pod {name}",
            until=lambda p: p is not None and p["metadata"]["uid"] != other_than,
        )
        assert found is not None
        return found

    async def build_when(self, build: Obj, what: str, until: Callable[[Obj | None], object]) -> Obj:
        name = build["metadata"]["name"]
        found = await eventually(
            lambda: get_or_none(self.client, r.BUILD, name, self.namespace),
            DEADLINE,
            f"build {name}: {what}",
            until=until,
        )
        assert found is not None
        return found

    async def finished(self, build: Obj) -> Obj:
        return await self.build_when(build, "finished", lambda b: finished(b))

    async def unannotate(self, build: Obj) -> None:
        await self.client.merge_patch(
            r.BUILD,
            build["metadata"]["name"],
            {"metadata": {"annotations": {ANNOTATION_POD_PENDING: None}}},
            self.namespace,
        )

    async def tags(self, image: Obj) -> list[str]:
        async with RegistryClient(insecure_registries=[self.registry.host]) as reg:
            try:
                return await reg.list_tags(image["spec"]["tag"])
            except RegistryError:
                return []  # the repository does not exist


def finished(build: Obj | None) -> bool:
    return build is not None and condition(build, "Succeeded").get("status") in ("True", "False")


def pod_condition(pod: Obj, type_: str) -> Obj:
    return next((c for c in pod["status"].get("conditions") or () if c["type"] == type_), {})


def states(pod: Obj) -> list[tuple[str, Obj]]:
    status = pod["status"]
    return [
        (c["name"], c["state"])
        for c in (*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ()))
    ]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
async def real_kpack(
    real_control_plane: ControlPlane,
) -> AsyncIterator[tuple[KubeClient, KpackSimulator, RunningRegistry, str, str]]:
    config = await load_kubeconfig(str(real_control_plane.kubeconfig))
    async with KubeClient(config, qps=0, timeout=5.0) as client, running_registry() as registry:
        await apply_crds(client, read_documents(bundled_crd_dirs()))
        world = isolated(registry.host, uuid.uuid4().hex[:6])
        try:
            await world.create(client)
            async with running_kpack_on_cluster(client, options(registry=registry.host)) as kpack:
                await builder_ready(client, world.cluster_builder)
                yield client, kpack.simulator, registry, world.root, world.cluster_builder
        finally:
            with anyio.CancelScope(shield=True):
                await world.remove(client)


@pytest.fixture(
    params=[EMULATOR, pytest.param(REAL, marks=pytest.mark.timeout(3600 if binaries().missing() else 120))]
)
def where(request: pytest.FixtureRequest) -> tuple[str, Any]:
    # Synchronous, so that it may ask for the (async) fixtures of the one server it needs by name.
    if request.param == REAL:
        return REAL, request.getfixturevalue("real_kpack")
    return EMULATOR, (request.getfixturevalue("api"), request.getfixturevalue("client"))


@pytest.fixture
async def cluster(where: tuple[str, Any]) -> AsyncIterator[Cluster]:
    name, values = where
    if name == REAL:
        yield Cluster(*values)
        return
    api, client = values
    async with (
        running_registry() as registry,
        running_kpack(api, options(registry=registry.host), seed=True) as sim,
    ):
        await builder_ready(client)
        yield Cluster(client, sim, registry, "cf", CLUSTER_BUILDER)


# ------------------------------------------------------------------------------------------------- tests
async def test_a_build_gets_its_pod_and_its_status_from_it(cluster: Cluster) -> None:
    image = await cluster.client.create(r.IMAGE, cluster.image())
    build = await cluster.finished(await cluster.build_of(image))
    pod = await cluster.pod(build)
    meta = pod["metadata"]
    assert meta["name"] == build["status"]["podName"] == child_name(build["metadata"]["name"], "-build-pod")
    assert meta["labels"] == {**build["metadata"]["labels"], LABEL: build["metadata"]["name"]}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kpack.io/v1alpha2",
            "kind": "Build",
            "name": build["metadata"]["name"],
            "uid": build["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT
    assert spec["restartPolicy"] == "Never"
    assert "nodeName" not in spec
    assert [c["name"] for c in spec["initContainers"]] == list(STEPS)
    assert [c["name"] for c in spec["containers"]] == [COMPLETION]
    assert {c["image"] for c in spec["initContainers"]} == {build["spec"]["builder"]["image"]}

    assert condition(build, "Succeeded")["status"] == "True", build["status"]
    assert pod["status"]["phase"] == "Succeeded"
    assert [(n, s["terminated"]["exitCode"]) for n, s in states(pod)] == [
        (s, 0) for s in (*STEPS, COMPLETION)
    ]
    # The Build's steps are the pod's containers' states, messages filled in as kpack fills them.
    steps = build["status"]["stepStates"]
    assert [s["terminated"]["containerID"] for s in steps] == [
        s["terminated"]["containerID"] for _, s in states(pod)
    ]
    assert steps[0]["terminated"]["message"] == "Container prepare terminated successfully"
    assert steps[-1]["terminated"]["message"] == states(pod)[-1][1]["terminated"]["message"]
    assert build["status"]["stepsCompleted"] == [*STEPS, COMPLETION]
    assert build["status"]["latestImage"].startswith(image["spec"]["tag"] + "@sha256:")
    assert "latest" in await cluster.tags(image)


async def test_a_failing_step_fails_the_pod(cluster: Cluster) -> None:
    image = await cluster.client.create(r.IMAGE, cluster.image({ANNOTATION_FAIL: "detect"}))
    build = await cluster.finished(await cluster.build_of(image))
    pod = await cluster.pod(build)
    assert pod["status"]["phase"] == "Failed"
    got = states(pod)
    assert [(n, s["terminated"]["exitCode"]) for n, s in got[:3]] == [
        ("prepare", 0),
        ("analyze", 0),
        ("detect", 20),
    ]
    assert [(n, s["waiting"]["reason"]) for n, s in got[3:]] == [
        (n, "PodInitializing") for n in ("restore", "build", "export", COMPLETION)
    ]
    succeeded = condition(build, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "Failed")
    ns, name = cluster.namespace, pod["metadata"]["name"]
    assert succeeded["message"] == (
        "Error:  Container detect terminated with error ERROR: No buildpack groups passed detection.: "
        f"For more info use `kubectl logs -n {ns} {name} -c detect`"
    )
    assert build["status"]["stepsCompleted"] == ["prepare", "analyze"]
    assert build["status"]["stepStates"][2]["terminated"]["exitCode"] == 20
    assert await cluster.tags(image) == []


async def test_a_deleted_pod_of_a_running_build_is_made_again(cluster: Cluster) -> None:
    # The knob holds the run, so the pod is deleted mid-run whatever the machine's speed.
    image = await cluster.client.create(r.IMAGE, cluster.image({ANNOTATION_POD_PENDING: "image-pull"}))
    build = await cluster.build_of(image)
    first = await cluster.pod(build)
    await cluster.client.delete(r.POD, first["metadata"]["name"], cluster.namespace)
    second = await cluster.pod(build, other_than=first["metadata"]["uid"])
    assert second["metadata"]["ownerReferences"] == first["metadata"]["ownerReferences"]
    # The simulator creates a pod before it writes the Build's status from it: the Build may have none yet
    # (a pod deleted before its first status write leaves none), so its status is awaited, not read once.
    running = await cluster.build_when(
        build, "a status read from a pod", lambda b: condition(b or {}, "Succeeded").get("status")
    )
    assert condition(running, "Succeeded")["status"] == "Unknown", running["status"]
    await cluster.unannotate(build)
    done = await cluster.finished(build)
    assert condition(done, "Succeeded")["status"] == "True", done["status"]
    last = await cluster.pod(build)
    assert last["metadata"]["uid"] == second["metadata"]["uid"]
    assert last["status"]["phase"] == "Succeeded"


async def test_a_build_finished_by_someone_else_is_left_alone(cluster: Cluster) -> None:
    image = await cluster.client.create(r.IMAGE, cluster.image({ANNOTATION_POD_PENDING: "unschedulable"}))
    build = await cluster.build_of(image)
    held = await cluster.build_when(
        build, "pod pending", lambda b: (b or {}).get("status", {}).get("podName")
    )
    pod = await cluster.pod(build)
    canceled = {
        **held,
        "status": {
            **held["status"],
            "conditions": [
                {"type": "Succeeded", "status": "False", "reason": "BuildCanceled", "message": "canceled"}
            ],
        },
    }
    await cluster.client.update_status(r.BUILD, canceled)
    # Were the simulator still running it, removing the knob would let it finish within build_seconds.
    await cluster.unannotate(build)
    name, ns = build["metadata"]["name"], cluster.namespace

    async def untouched() -> bool:
        now = await cluster.client.get(r.BUILD, name, ns)
        current = await cluster.client.get(r.POD, pod["metadata"]["name"], ns)
        return (
            condition(now, "Succeeded").get("reason") == "BuildCanceled"
            and current["metadata"]["resourceVersion"] == pod["metadata"]["resourceVersion"]
        )

    await consistently(untouched, 1.0, "the canceled build and its pod untouched")
    assert await cluster.tags(image) == []


async def test_an_unschedulable_pod(cluster: Cluster) -> None:
    image = await cluster.client.create(r.IMAGE, cluster.image({ANNOTATION_POD_PENDING: "unschedulable"}))
    build = await cluster.build_of(image)
    pod = await cluster.pod(build)
    pod = await eventually(
        lambda: cluster.client.get(r.POD, pod["metadata"]["name"], cluster.namespace),
        DEADLINE,
        "pod unschedulable",
        until=lambda p: pod_condition(p, "PodScheduled").get("status") == "False",
    )
    assert pod["status"]["phase"] == "Pending"
    scheduled = pod_condition(pod, "PodScheduled")
    assert (scheduled["reason"], scheduled["message"]) == ("Unschedulable", UNSCHEDULABLE_MESSAGE)
    assert states(pod) == []
    held = await cluster.build_when(
        build, "pod pending", lambda b: (b or {}).get("status", {}).get("podName")
    )
    succeeded = condition(held, "Succeeded")
    assert (succeeded["status"], succeeded.get("reason", ""), succeeded.get("message", "")) == (
        "Unknown",
        "",
        "",
    )
    assert not held["status"].get("stepStates")
    await cluster.unannotate(build)
    assert condition(await cluster.finished(build), "Succeeded")["status"] == "True"


async def test_an_image_that_cannot_be_pulled(cluster: Cluster) -> None:
    image = await cluster.client.create(r.IMAGE, cluster.image({ANNOTATION_POD_PENDING: "image-pull"}))
    build = await cluster.build_of(image)
    held = await cluster.build_when(
        build, "image pull", lambda b: condition(b or {}, "Succeeded").get("reason") == "ImagePullBackOff"
    )
    message = f'Back-off pulling image "{build["spec"]["builder"]["image"]}"'
    assert condition(held, "Succeeded")["message"] == message
    assert condition(held, "Succeeded")["status"] == "Unknown"
    pod = await cluster.pod(build)
    got = states(pod)
    assert got[0] == ("prepare", {"waiting": {"reason": "ImagePullBackOff", "message": message}})
    assert {s["waiting"]["reason"] for _, s in got[1:]} == {"PodInitializing"}
    assert pod["status"]["phase"] == "Pending"
    await cluster.unannotate(build)
    assert condition(await cluster.finished(build), "Succeeded")["status"] == "True"


async def test_a_pod_a_quota_refuses(cluster: Cluster) -> None:
    image = await cluster.client.create(
        r.IMAGE, cluster.image({ANNOTATION_POD_PENDING: "quota:exceeded quota: compute, requested: pods=1"})
    )
    build = await cluster.build_of(image)
    key = (cluster.namespace, build["metadata"]["name"])
    await eventually(
        lambda: cluster.kpack.builds.pod_failures.get(key, ("", 0))[1] >= 2,
        DEADLINE,
        "pod creation retried",
    )
    pod_name = child_name(build["metadata"]["name"], "-build-pod")
    assert await get_or_none(cluster.client, r.POD, pod_name, cluster.namespace) is None
    now = await cluster.client.get(r.BUILD, build["metadata"]["name"], cluster.namespace)
    assert not (now.get("status") or {}).get("conditions"), now.get("status")  # kpack writes nothing
    await cluster.unannotate(build)
    assert condition(await cluster.finished(build), "Succeeded")["status"] == "True"
    assert (await cluster.pod(build))["status"]["phase"] == "Succeeded"


async def test_a_restarted_simulator_takes_over_the_pod_of_a_running_build(
    api: RunningApiServer, client: KubeClient
) -> None:
    async with running_registry() as registry:
        opts = options(registry=registry.host)
        async with running_kpack(api, opts, seed=True) as sim:
            await builder_ready(client)
            cluster = Cluster(client, sim, registry, "cf", CLUSTER_BUILDER)
            image = await client.create(r.IMAGE, cluster.image({ANNOTATION_POD_PENDING: "image-pull"}))
            build = await cluster.build_of(image)
            first = await cluster.pod(build)
        async with running_kpack(api, opts) as sim:
            cluster.kpack = sim
            await cluster.unannotate(build)
            done = await cluster.finished(build)
            assert condition(done, "Succeeded")["status"] == "True", done["status"]
            pod = await cluster.pod(build)
            assert pod["metadata"]["uid"] == first["metadata"]["uid"]
            assert pod["status"]["phase"] == "Succeeded"
