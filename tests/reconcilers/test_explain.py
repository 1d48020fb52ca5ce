"""``kpack-image-builder explain`` on workloads the service builds with the kpack simulator: a success, a
failed build, builders that never get ready, build pods that cannot start (the simulator's ``pod-pending``
knob), a canceled build, a build queued behind an earlier generation's, and the one-line errors (exit 2).
Exit codes and error lines are checked on the real process; the rest in-process (``diagnose``, then the
text as the command prints it). On the emulator, or on another cluster through ``TEST_KUBECONFIG``."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from service.diagnosis.command import Target, diagnose
from service.diagnosis.explain import deletion_holds
from service.diagnosis.facts import Diagnosis
from service.diagnosis.render import render
from service.kube import errors
from service.kube import resources as r
from service.reconcilers import korifi as k
from simcluster.demo import SERVICE_ACCOUNT as SERVICE_ACCOUNT_OF_SPACES
from simcluster.devcluster import kubeconfig, write_kubeconfig
from simcluster.kpack.options import ANNOTATION_BUILD_SECONDS as BUILD_SECONDS
from simcluster.kpack.options import ANNOTATION_NEVER_READY
from simcluster.kpack.options import ANNOTATION_POD_PENDING as POD_PENDING
from tests.conftest import TARGET_ENV
from tests.conftest import Target as Cluster
from tests.helpers import child_env, eventually
from tests.reconcilers.conftest import KpackCluster

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]


@pytest.fixture
def kubeconfig_path(target: Cluster, tmp_path: Path) -> str:
    """A kubeconfig for the cluster the test runs on, as a person running ``explain`` would have."""
    if target.emulator is None:
        return os.environ[TARGET_ENV]
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, kubeconfig(target.emulator.url))
    return str(path)


@dataclass
class World:
    kc: KpackCluster
    kubeconfig: str

    async def workload(self, name: str, app: str, **spec: Any) -> Obj:
        body = {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {"name": name, "namespace": self.kc.space, "labels": {k.APP_GUID_LABEL: app}},
            "spec": {
                "buildRef": {"name": name},
                "builderName": k.BUILDER_NAME,
                "source": {"registry": {"image": f"{self.kc.registry.host}/packages/pkg:1"}},
                **spec,
            },
        }
        return await self.kc.client.create(r.BUILD_WORKLOAD, body, self.kc.space)

    async def outcome(self, name: str, within: float = 15.0) -> Obj:
        async def finished() -> Obj | None:
            obj = await self.kc.client.get(r.BUILD_WORKLOAD, name, self.kc.space)
            for condition in (obj.get("status") or {}).get("conditions") or ():
                if condition["type"] == k.SUCCEEDED and condition["status"] in ("True", "False"):
                    return obj
            return None

        return await eventually(finished, within, f"workload {name} finished")

    async def image(self, app: str, annotations: dict[str, str], *, from_the_start: bool = False) -> None:
        """The app's kpack Image, made before its workload (which the service then adopts) and built once,
        then given the simulator's knobs in ``annotations``, which kpack copies to every later Build of it:
        the workload's own. ``from_the_start``: the knobs are there when kpack starts the first build (of
        generation 1, which the workload's waits for: kpack builds an Image's generations one at a time)."""
        client, space = self.kc.client, self.kc.space
        await client.create(
            r.IMAGE,
            {
                "apiVersion": k.KPACK_API_VERSION,
                "kind": "Image",
                "metadata": {
                    "name": app,
                    "namespace": space,
                    "annotations": annotations if from_the_start else {},
                },
                "spec": {
                    "tag": f"{self.kc.registry.host}/cf/{app}-droplets",
                    "builder": {"kind": "ClusterBuilder", "name": self.kc.cluster_builder},
                    "serviceAccountName": SERVICE_ACCOUNT_OF_SPACES,
                    "source": {"registry": {"image": f"{self.kc.registry.host}/packages/pkg:0"}},
                },
            },
            space,
        )

        async def first_build() -> bool:
            try:
                build = await client.get(r.BUILD, f"{app}-build-1", space)
            except errors.NotFound:
                return False
            return from_the_start or succeeded_status(build) in ("True", "False")

        await eventually(first_build, what=f"the first build of Image {app}")
        if not from_the_start:
            await client.merge_patch(r.IMAGE, app, {"metadata": {"annotations": annotations}}, space)

    async def diagnose(self, name: str) -> Diagnosis:
        return await diagnose(Target(self.kc.space, name), self.kubeconfig, None)

    async def explain(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return await explain_process(self.kubeconfig, *args)


async def explain_process(kubeconfig_file: str | Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The real ``kpack-image-builder explain`` process, to its end."""
    with anyio.fail_after(30):
        return await anyio.run_process(
            [sys.executable, "-m", "service", "explain", f"--kubeconfig={kubeconfig_file}", *args],
            stdin=subprocess.DEVNULL,
            check=False,
            env=child_env(),
        )


@pytest.fixture
async def world(kpack_cluster: KpackCluster, kubeconfig_path: str) -> AsyncIterator[World]:
    async with kpack_cluster.service(builder_readiness_timeout=10.0):
        yield World(kpack_cluster, kubeconfig_path)


def succeeded(obj: Obj) -> Obj:
    return next(c for c in obj["status"]["conditions"] if c["type"] == k.SUCCEEDED)


def succeeded_status(obj: Obj) -> str | None:
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return next((str(c["status"]) for c in conditions if c["type"] == k.SUCCEEDED), None)


def assert_one_line(result: subprocess.CompletedProcess[bytes], expected: str) -> None:
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert result.returncode == 2, stderr
    assert result.stdout == b""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kpack-image-builder: {expected}"), stderr


async def test_a_succeeded_workload_is_healthy_and_its_chain_is_named(world: World) -> None:
    await world.workload("wl-ok", app="ok-app")
    done = await world.outcome("wl-ok")
    result = await world.explain(f"{world.kc.space}/wl-ok")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    text = result.stdout.decode()
    space = world.kc.space
    assert f"BuildWorkload {space}/wl-ok (app ok-app, Image generation 1)" in text
    assert "Succeeded   True    BuildSucceeded: Image built successfully" in text
    assert f"kpack Image {space}/ok-app (generation 1)" in text
    assert f"builder     ClusterBuilder {world.kc.cluster_builder}" in text
    assert f"ClusterBuilder {world.kc.cluster_builder} (from the Image's spec.builder)" in text
    assert f"kpack Build {space}/ok-app-build-1 (build 1 of Image generation 1" in text
    assert done["status"]["droplet"]["registry"]["image"] in text
    assert text.endswith("\nhealthy\n")
    assert "Problems:" not in text


async def test_a_failed_build_names_the_step_and_its_logs_command(world: World) -> None:
    await world.workload("wl-bad", app="bad-app", env=[{"name": "SIM_KPACK_FAIL", "value": "build"}])
    failed = await world.outcome("wl-bad")
    assert succeeded(failed)["reason"] == k.BUILD_FAILED
    space = world.kc.space
    build = await world.kc.client.get(r.BUILD, "bad-app-build-1", space)
    pod = build["status"]["podName"]
    assert pod == "bad-app-build-1-build-pod"
    code = build["status"]["stepStates"][4]["terminated"]["exitCode"]  # the fifth step is build
    command = f"kubectl logs -n {space} {pod} -c build"

    result = await world.explain(f"{space}/wl-bad", "--output", "json")
    assert result.returncode == 1, result.stderr.decode()
    assert result.stderr == b""
    document = orjson.loads(result.stdout)
    assert {
        "healthy",
        "problems",
        "next",
        "notes",
        "workload",
        "image",
        "builder",
        "build",
    } <= document.keys()
    assert document["healthy"] is False
    assert document["workload"]["succeeded"]["reason"] == k.BUILD_FAILED
    assert document["build"]["name"] == "bad-app-build-1"
    assert document["build"]["failed_step"]["container"] == "build"
    assert document["build"]["failed_step"]["logs_command"] == command
    assert any(step.endswith(command) for step in document["next"]), document["next"]

    text = render(await world.diagnose("wl-bad"))
    assert f"  failed step build (exit code {code}): {command}\n" in text
    assert f'  - read the log of the failed step "build", exit code {code}: {command}\n' in text
    assert f"  pod         {pod}: Failed\n" in text  # read with a GET: the pod is still there
    assert text.endswith("\nnot healthy\n")


async def test_a_builder_that_never_gets_ready_is_named_with_what_to_check(
    kpack_cluster: KpackCluster, kubeconfig_path: str
) -> None:
    """A ClusterBuilder kpack never makes Ready (the simulator's ``never-ready``): the workload fails
    ``BuilderNotReady`` after the readiness timeout, and explain names that builder and how to look at it."""
    client = kpack_cluster.client
    default = await client.get(r.CLUSTER_BUILDER, kpack_cluster.cluster_builder)
    name = f"never-ready-{uuid.uuid4().hex[:6]}"
    await client.create(
        r.CLUSTER_BUILDER,
        {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "ClusterBuilder",
            "metadata": {"name": name, "annotations": {ANNOTATION_NEVER_READY: "true"}},
            "spec": copy.deepcopy(default["spec"]),
        },
    )
    try:
        async with kpack_cluster.service(cluster_builder_name=name, builder_readiness_timeout=1.0):
            world = World(kpack_cluster, kubeconfig_path)
            await world.workload("wl-stuck", app="stuck-app")
            failed = await world.outcome("wl-stuck")
            reasons = {c["type"]: c["reason"] for c in failed["status"]["conditions"]}
            assert reasons[k.SUCCEEDED] == k.BUILDER_NOT_READY
            diagnosis = await world.diagnose("wl-stuck")
    finally:
        with anyio.CancelScope(shield=True):
            await client.delete(r.CLUSTER_BUILDER, name)
    assert not diagnosis.healthy
    assert diagnosis.builder is not None and diagnosis.builder.found
    assert diagnosis.builder.ready is not None and diagnosis.builder.ready.status == "False"
    text = render(diagnosis)
    assert f"ClusterBuilder {name} is not Ready: " in text
    assert f"kubectl describe clusterbuilder {name}" in text
    assert "once the builder is Ready, to build again, create a new build" in text


async def test_a_missing_cluster_builder_is_named_with_how_to_fix_it(
    kpack_cluster: KpackCluster, kubeconfig_path: str
) -> None:
    name = f"missing-{uuid.uuid4().hex[:6]}"
    async with kpack_cluster.service(cluster_builder_name=name):
        world = World(kpack_cluster, kubeconfig_path)
        await world.workload("wl-orphan", app="orphan-app")
        await world.outcome("wl-orphan")
        diagnosis = await world.diagnose("wl-orphan")
    assert not diagnosis.healthy
    assert diagnosis.problems == ["the build failed: BuilderNotReady: ClusterBuilder not found"]
    assert diagnosis.builder is not None and not diagnosis.builder.found
    assert any(step.startswith(f"create ClusterBuilder {name}, or configure") for step in diagnosis.next)
    assert f"ClusterBuilder {name} (from the Image's spec.builder): not found" in render(diagnosis)


async def test_a_missing_workload_is_one_line_and_exit_2(world: World) -> None:
    result = await world.explain(f"{world.kc.space}/no-such-workload")
    assert_one_line(result, f"BuildWorkload {world.kc.space}/no-such-workload not found")


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("just-a-name", "expected NAMESPACE/WORKLOAD, got 'just-a-name'"),
        ("a/b/c", "'a/b/c' is not NAMESPACE/WORKLOAD: workload name:"),
        ("/name", "expected NAMESPACE/WORKLOAD, got '/name'"),
        ("Space/name", "'Space/name' is not NAMESPACE/WORKLOAD: namespace:"),
    ],
)
async def test_a_malformed_argument_is_one_line_and_exit_2(
    tmp_path: Path, argument: str, expected: str
) -> None:
    """Refused before any cluster is asked: the kubeconfig names a server that is not there."""
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, kubeconfig("http://127.0.0.1:9"))
    assert_one_line(await explain_process(path, argument), expected)


async def test_an_unreachable_cluster_or_a_bad_kubeconfig_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, kubeconfig("http://127.0.0.1:9"))
    unreachable = await explain_process(path, "space/wl")
    assert_one_line(unreachable, "cannot read BuildWorkload space/wl: 0 ")
    path.write_text("clusters: [\n")
    assert_one_line(await explain_process(path, "space/wl"), f"cannot load kubeconfig {path}")


@pytest.mark.parametrize(
    ("knob", "expected_problem"),
    [
        pytest.param(
            "unschedulable",
            "pod {pod} cannot be scheduled: Unschedulable: 0/3 nodes are available: 3 Insufficient memory.",
            id="unschedulable",
        ),
        pytest.param(
            "image-pull",
            'container "prepare" of pod {pod} cannot start: ImagePullBackOff: Back-off pulling image "',
            id="image-pull",
        ),
    ],
)
async def test_a_pending_build_pod_says_why_it_cannot_start(
    world: World, knob: str, expected_problem: str
) -> None:
    """The simulator's ``pod-pending`` knob on the app's Image (so on its Builds): the pod is read with a
    GET, and its PodScheduled condition or its first waiting init container is the problem."""
    space = world.kc.space
    await world.image("slow-app", {POD_PENDING: knob})
    await world.workload("wl-slow", app="slow-app")

    async def pending() -> Diagnosis | None:
        diagnosis = await world.diagnose("wl-slow")
        pod = diagnosis.build.pod if diagnosis.build is not None else None
        return diagnosis if pod is not None and pod.found and diagnosis.problems else None

    diagnosis = await eventually(pending, what="the build's pod pending and explained")
    assert diagnosis.build is not None and diagnosis.build.pod is not None
    pod = diagnosis.build.pod
    assert pod.name == diagnosis.build.pod_name == f"{diagnosis.build.name}-build-pod"
    assert pod.phase == "Pending"
    assert not diagnosis.healthy
    assert diagnosis.problems[0].startswith(expected_problem.format(pod=pod.name)), diagnosis.problems
    assert f"kubectl describe pod -n {space} {pod.name}" in " ".join(diagnosis.next)
    text = render(diagnosis)
    assert f"  pod         {pod.name}: Pending\n" in text


async def test_a_canceled_build_says_to_create_a_new_one(world: World) -> None:
    kc, space = world.kc, world.kc.space
    await world.image("long-app", {BUILD_SECONDS: "600"})  # the cancel finds it running
    await world.workload("wl-long", app="long-app")

    async def running() -> Diagnosis | None:
        diagnosis = await world.diagnose("wl-long")
        return diagnosis if diagnosis.build is not None and diagnosis.build.pod_name else None

    in_progress = await eventually(running, what="the build running")
    assert in_progress.healthy, in_progress.problems
    await kc.client.merge_patch(
        r.BUILD_WORKLOAD, "wl-long", {"metadata": {"annotations": {k.CANCEL_ANNOTATION: "true"}}}, space
    )
    assert succeeded(await world.outcome("wl-long"))["reason"] == k.BUILD_CANCELED
    result = await world.explain(f"{space}/wl-long")
    assert result.returncode == 1, result.stderr.decode()
    text = result.stdout.decode()
    assert "  Succeeded   False   BuildCanceled" in text
    assert "  stopped     by the service, for workload wl-long\n" in text
    assert "create a new build (cf restage, or a new BuildWorkload)" in text


async def test_a_build_waiting_behind_an_earlier_generation_names_that_build(world: World) -> None:
    """kpack builds one generation of an Image at a time: the workload's waits for the running one."""
    space = world.kc.space
    await world.image("queued-app", {BUILD_SECONDS: "600"}, from_the_start=True)
    await world.workload("wl-queued", app="queued-app")

    async def waiting() -> Diagnosis | None:
        diagnosis = await world.diagnose("wl-queued")
        return (
            diagnosis if diagnosis.earlier_build is not None and diagnosis.workload.image_generation else None
        )

    diagnosis = await eventually(waiting, what="the workload's generation waiting behind build 1")
    assert diagnosis.healthy, diagnosis.problems
    assert diagnosis.build is None
    assert diagnosis.earlier_build is not None and diagnosis.earlier_build.name == "queued-app-build-1"
    generation = diagnosis.workload.image_generation
    assert (
        f"kpack is still running Build queued-app-build-1 of Image generation 1; it builds generation "
        f"{generation} once that one ends (one build at a time per Image)"
    ) in diagnosis.notes
    assert f"kpack Build {space}/queued-app-build-1 (build 1 of Image generation 1, still running" in render(
        diagnosis
    )


async def test_a_workload_being_deleted_names_the_build_that_holds_it(world: World) -> None:
    """The last workload of an Image generation goes once that generation's Builds are gone (the service
    deletes them): explain names the Build that still holds it, and by which finalizers."""
    kc, space = world.kc, world.kc.space
    await world.image("held-app", {BUILD_SECONDS: "600"})
    await world.workload("wl-held", app="held-app")

    async def running_and_finalized() -> str | None:
        diagnosis = await world.diagnose("wl-held")
        build = diagnosis.build
        if build is None or not build.pod_name:
            return None
        obj = await kc.client.get(r.BUILD, build.name, space)
        return build.name if k.KPACK_BUILD_FINALIZER in (obj["metadata"].get("finalizers") or ()) else None

    build = await eventually(running_and_finalized, what="the build running, with its finalizer")
    hold = {"op": "add", "path": "/metadata/finalizers/-", "value": "example.com/hold"}
    await kc.client.json_patch(r.BUILD, build, [hold], space)
    await kc.client.delete(r.BUILD_WORKLOAD, "wl-held", space)
    expected = f"kpack Build {build} is being deleted, held by example.com/hold"

    async def held() -> Diagnosis | None:
        diagnosis = await world.diagnose("wl-held")
        return diagnosis if expected in diagnosis.notes else None

    # The service stops the Build and lets go of it; the foreign finalizer alone holds it then.
    diagnosis = await eventually(held, 20, "the Build held by the foreign finalizer alone")
    assert "the workload is being deleted" in diagnosis.notes
    assert diagnosis.healthy, diagnosis.problems  # a Build stopped for its deletion did not fail
    stopped = f"the service stopped Build {build}: stopped by kpack-image-builder: the Build is being deleted"
    assert stopped in diagnosis.notes
    await kc.client.json_patch(r.BUILD, build, [{"op": "remove", "path": "/metadata/finalizers"}], space)

    async def gone() -> bool:
        try:
            await kc.client.get(r.BUILD_WORKLOAD, "wl-held", space)
        except errors.NotFound:
            return True
        return False

    await eventually(gone, what="then the workload")


def test_a_build_of_the_generation_without_its_finalizer_is_named_as_a_hold() -> None:
    def build(name: str, generation: str, **meta: Any) -> Obj:
        labels = {k.KPACK_IMAGE_GENERATION_LABEL: generation, k.BUILD_WORKLOAD_LABEL: "wl"}
        return {"metadata": {"name": name, "labels": labels, **meta}}

    builds = [
        build("app-build-1", "1"),  # another generation: not this workload's concern
        build("app-build-2", "2"),
        build("app-build-3", "2", finalizers=[k.KPACK_BUILD_FINALIZER]),  # held: deleted by the workload
    ]
    assert deletion_holds(builds, "2") == [
        f"kpack Build app-build-2 has no {k.KPACK_BUILD_FINALIZER} finalizer yet; the service's kpack Build "
        "controller adds it (its log says why it cannot), and the deletion waits for it at most 300 s"
    ]
