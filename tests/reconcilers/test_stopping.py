"""Builds stopped, failed and made, as a person sees them on the workload (issue 9 §1-§4; docs/builds.md):
a cancel and the build timeout stop kpack's running Build (its pod deleted, kpack not building it again),
a pod that cannot start is said while it waits and stopped past its limit, a failed build names its step
and the ``kubectl logs`` command, a success records what was built, and an Image deleted under a build in
flight never leaves its workload waiting for ever. With the kpack simulator playing kpack (build pods are
real Pod objects), on the emulator and on the real kube-apiserver through ``TEST_KUBECONFIG``.

The simulator's knobs ride on the workload's env (kpack copies it into every Build):
``SIM_KPACK_BUILD_SECONDS``, ``SIM_KPACK_POD_PENDING``, ``SIM_KPACK_FAIL``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload import pending
from simcluster.faults import FaultRule
from simcluster.kpack.options import ENV_BUILD_SECONDS, ENV_FAIL, ENV_POD_PENDING
from tests.conftest import Target
from tests.helpers import consistently, eventually, server_clock_skewed
from tests.reconcilers.conftest import KpackCluster

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]
QUIET = 1.0  # seconds during which kpack must not start a stopped build again


@dataclass
class World:
    kc: KpackCluster

    @property
    def client(self) -> KubeClient:
        return self.kc.client

    @property
    def space(self) -> str:
        return self.kc.space

    async def workload(self, name: str, app: str, **env: str) -> Obj:
        spec: Obj = {
            "buildRef": {"name": name},
            "builderName": k.BUILDER_NAME,
            "source": {"registry": {"image": f"{self.kc.registry.host}/packages/pkg:1"}},
        }
        if env:
            spec["env"] = [{"name": key, "value": value} for key, value in env.items()]
        body = {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {"name": name, "namespace": self.space, "labels": {k.APP_GUID_LABEL: app}},
            "spec": spec,
        }
        created: Obj = await self.client.create(r.BUILD_WORKLOAD, body, self.space)
        return created

    async def get(self, resource: r.Resource, name: str) -> Obj | None:
        try:
            obj: Obj = await self.client.get(resource, name, self.space)
            return obj
        except errors.NotFound:
            return None

    async def condition(self, name: str, status: str, reason: str, within: float = 20.0) -> Obj:
        """The workload once its Succeeded condition has this status and reason."""

        async def reached() -> Obj | None:
            obj = await self.get(r.BUILD_WORKLOAD, name)
            found = succeeded(obj or {})
            return obj if found.get("status") == status and found.get("reason") == reason else None

        obj: Obj = await eventually(reached, within, f"{name}: Succeeded={status}/{reason}")
        return obj

    async def running_pod(self, build: str) -> Obj:
        """The pod of a running Build, once the simulator has made it."""

        async def made() -> Obj | None:
            found = await self.get(r.BUILD, build)
            if found is None or succeeded(found).get("status") in ("True", "False"):
                return None
            return await self.get(r.POD, f"{build}-build-pod")

        pod: Obj = await eventually(made, 15, f"the pod of running Build {build}")
        return pod

    async def builds(self, app: str) -> list[Obj]:
        items = (await self.client.list(r.BUILD, self.space, label_selector=f"{k.KPACK_IMAGE_LABEL}={app}"))[
            "items"
        ]
        return sorted(items, key=lambda b: int(b["metadata"]["labels"][k.KPACK_BUILD_NUMBER_LABEL]))

    async def cancel(self, name: str) -> None:
        await self.client.merge_patch(
            r.BUILD_WORKLOAD, name, {"metadata": {"annotations": {k.CANCEL_ANNOTATION: "true"}}}, self.space
        )

    async def events(self, name: str, reason: str) -> list[Obj]:
        items = (await self.client.list(r.EVENT, self.space))["items"]
        return [e for e in items if e["involvedObject"]["name"] == name and e["reason"] == reason]


def succeeded(obj: Obj) -> Obj:
    for condition in (obj.get("status") or {}).get("conditions") or ():
        if condition["type"] == k.SUCCEEDED:
            return dict(condition)
    return {}


@pytest.fixture
async def world(kpack_cluster: KpackCluster) -> AsyncIterator[World]:
    async with kpack_cluster.service(build_pod_pending_timeout=3.0):
        yield World(kpack_cluster)


async def _stopped(world: World, app: str, reason: str) -> Obj:
    """The app's only Build, stopped for ``reason``: finished False, marked, its pod gone, and kpack not
    starting it (or another) again."""
    [build] = await world.builds(app)
    name = build["metadata"]["name"]
    assert succeeded(build)["status"] == "False" and succeeded(build)["reason"] == reason
    assert build["metadata"]["annotations"][k.STOPPED_FOR_ANNOTATION] == f"wl-{app}"
    assert not (build.get("status") or {}).get("latestImage")  # nothing was pushed
    assert await world.get(r.POD, f"{name}-build-pod") is None

    async def one_stopped_build() -> bool:
        builds = await world.builds(app)
        return len(builds) == 1 and succeeded(builds[0]).get("reason") == reason

    await consistently(one_stopped_build, QUIET, "kpack not building the stopped build again")
    return build


# ------------------------------------------------------------------------------------------ §1 cancel
async def test_a_cancel_stops_the_running_build(world: World) -> None:
    await world.workload("wl-long", "long", **{ENV_BUILD_SECONDS: "600"})
    await world.running_pod("long-build-1")
    await world.cancel("wl-long")
    done = await world.condition("wl-long", "False", k.BUILD_CANCELED)
    assert "kpack Build long-build-1 stopped" in succeeded(done)["message"]
    await _stopped(world, "long", k.BUILD_CANCELED)
    [event] = await eventually(
        lambda: world.events("wl-long", k.BUILD_CANCELED), what="a BuildCanceled Event"
    )
    assert event["type"] == "Warning"


async def test_a_cancel_does_not_touch_a_completed_workload(world: World) -> None:
    await world.workload("wl-quick", "quick")
    done = await world.condition("wl-quick", "True", k.BUILD_SUCCEEDED)
    await world.cancel("wl-quick")

    async def unchanged() -> bool:
        obj = await world.get(r.BUILD_WORKLOAD, "wl-quick")
        return (
            succeeded(obj or {}) == succeeded(done)
            and (obj or {})["status"]["droplet"] == done["status"]["droplet"]
        )

    await consistently(unchanged, QUIET, "the completed workload untouched by a cancel")


async def test_a_new_workload_after_a_cancel_gets_a_build_of_its_own(world: World) -> None:
    """The same spec again (a restage): kpack would build nothing (same generation, and kpack never rebuilds
    after a failed Build by itself), so the new workload asks kpack for a new build instead of inheriting
    the stop."""
    await world.workload("wl-again", "again", **{ENV_BUILD_SECONDS: "600"})
    await world.running_pod("again-build-1")
    await world.cancel("wl-again")
    await world.condition("wl-again", "False", k.BUILD_CANCELED)
    await world.workload("wl-again-2", "again", **{ENV_BUILD_SECONDS: "600"})
    pod = await world.running_pod("again-build-2")
    build = await world.get(r.BUILD, "again-build-2")
    assert build is not None and build["metadata"]["annotations"][k.KPACK_REASON_ANNOTATION] == "TRIGGER"
    assert pod["metadata"]["labels"]["kpack.io/build"] == "again-build-2"
    second = await world.condition("wl-again-2", "Unknown", k.BUILD_RUNNING)
    first = await world.get(r.BUILD_WORKLOAD, "wl-again")
    assert (
        second["metadata"]["labels"][k.IMAGE_GENERATION_LABEL]
        == (first or {})["metadata"]["labels"][k.IMAGE_GENERATION_LABEL]
    )


# ------------------------------------------------------------------------------------------ §1 timeout
async def test_the_build_timeout_stops_a_build_that_runs_too_long(kpack_cluster: KpackCluster) -> None:
    world = World(kpack_cluster)
    async with kpack_cluster.service(build_timeout=2.0):
        await world.workload("wl-slow", "slow", **{ENV_BUILD_SECONDS: "600"})
        done = await world.condition("wl-slow", "False", k.BUILD_TIMEOUT)
        assert "buildTimeout (2s)" in succeeded(done)["message"]
        await _stopped(world, "slow", k.BUILD_TIMEOUT)
        # A build within the limit is not touched.
        await world.workload("wl-fast", "fast")
        await world.condition("wl-fast", "True", k.BUILD_SUCCEEDED)


@pytest.mark.emulator
async def test_the_build_timeout_is_counted_by_the_servers_clock(kpack_cluster: KpackCluster) -> None:
    """A control plane an hour behind the controller's clock stamps every Build an hour old by this
    machine's: timed by it, each would pass a 60 s buildTimeout the moment it ran. By the server's clock,
    read from its answers' Date, the build runs on."""
    world = World(kpack_cluster)
    async with (
        server_clock_skewed(kpack_cluster.client, -3600),
        kpack_cluster.service(build_timeout=60.0),
    ):
        await world.workload("wl-skewed", "skewed", **{ENV_BUILD_SECONDS: "600"})
        await world.running_pod("skewed-build-1")

        async def still_running() -> bool:
            return succeeded(await world.get(r.BUILD_WORKLOAD, "wl-skewed") or {}).get("reason") in (
                None,
                k.BUILD_RUNNING,
            )

        await consistently(still_running, 1.5, "the build runs within its timeout")


# ------------------------------------------------------------------------------------------ §3 a pod that cannot start
@pytest.mark.parametrize(
    ("knob", "says"),
    [
        ("unschedulable", "0/3 nodes are available: 3 Insufficient memory."),
        ("image-pull", "ImagePullBackOff: Back-off pulling image"),
        ("quota", "kpack has not created the build pod pending-build-1-build-pod"),
    ],
)
async def test_a_pod_that_cannot_start_is_said_then_stopped(world: World, knob: str, says: str) -> None:
    await world.workload("wl-pending", "pending", **{ENV_POD_PENDING: knob})
    waiting = await world.condition("wl-pending", "Unknown", k.BUILD_POD_PENDING)
    assert says in succeeded(waiting)["message"]
    [event] = await eventually(lambda: world.events("wl-pending", k.BUILD_POD_PENDING), what="an Event")
    assert says in event["message"]
    done = await world.condition("wl-pending", "False", k.BUILD_POD_PENDING_TIMEOUT)
    assert "buildPodPendingTimeout (3s)" in succeeded(done)["message"]
    [build] = await world.builds("pending")
    assert succeeded(build)["reason"] == k.BUILD_POD_PENDING_TIMEOUT
    assert await world.get(r.POD, "pending-build-1-build-pod") is None


# ------------------------------------------------------------------------------------------ §2 failure details
async def test_a_failed_build_names_its_step_pod_and_logs_command(world: World) -> None:
    await world.workload("wl-bad", "bad", **{ENV_FAIL: "detect"})
    done = await world.condition("wl-bad", "False", k.BUILD_FAILED)
    pod = "bad-build-1-build-pod"
    assert succeeded(done)["message"] == (
        f'Check build log output: step "detect" failed (exit code 20) in pod {pod}: '
        f"kubectl logs -n {world.space} {pod} -c detect"
    )
    assert done["status"]["failedAt"] == {"pod": pod, "container": "detect"}


# ------------------------------------------------------------------------------------------ §4 provenance
async def test_a_success_records_what_was_built(world: World) -> None:
    await world.workload("wl-ok", "ok")
    done = await world.condition("wl-ok", "True", k.BUILD_SUCCEEDED)
    build = await world.get(r.BUILD, "ok-build-1")
    assert build is not None
    provenance, status = done["status"]["provenance"], build["status"]
    assert provenance["image"] == done["status"]["droplet"]["registry"]["image"] == status["latestImage"]
    assert provenance["digest"] == status["latestImage"].split("@")[1]
    assert provenance["digest"].startswith("sha256:") and provenance["size"] > 0
    assert provenance["stack"] == {"id": status["stack"]["id"], "runImage": status["stack"]["runImage"]}
    assert provenance["kpackBuild"] == {"name": "ok-build-1", "reason": "CONFIG"}
    ran = [{"id": bp["id"], "version": bp["version"]} for bp in status["buildMetadata"]]
    assert [{"id": bp["id"], "version": bp["version"]} for bp in provenance["buildpacks"]] == ran
    assert ran and "failedAt" not in done["status"]


# ------------------------------------------------------------------------------------------ §3 Image recreated
async def _delete_image(world: World, app: str, *, make_again: bool) -> None:
    """As an operator: delete the app's Image (kpack's Builds go with it), and maybe make it again (unless
    the service has already made it again for its workload)."""
    image = await world.get(r.IMAGE, app)
    assert image is not None
    await world.client.delete(r.IMAGE, app, world.space)

    async def replaced() -> bool:
        now = await world.get(r.IMAGE, app)
        return now is None or now["metadata"]["uid"] != image["metadata"]["uid"]

    await eventually(replaced, what=f"Image {app} gone")
    if make_again:
        with contextlib.suppress(errors.AlreadyExists):
            await world.client.create(
                r.IMAGE,
                {
                    "apiVersion": image["apiVersion"],
                    "kind": "Image",
                    "metadata": {
                        "name": app,
                        "namespace": world.space,
                        "labels": image["metadata"].get("labels"),
                    },
                    "spec": image["spec"],
                },
                world.space,
            )


@pytest.mark.parametrize(
    ("phase", "make_again"),
    [("before its Build", False), ("while its Build runs", False), ("while its Build runs", True)],
)
async def test_an_image_deleted_under_a_build_in_flight_leaves_no_workload_waiting(
    world: World, phase: str, make_again: bool
) -> None:
    await world.workload("wl-rec", "rec", **{ENV_BUILD_SECONDS: "3"})
    if phase == "before its Build":
        await world.condition("wl-rec", "Unknown", k.BUILD_RUNNING)
    else:
        await world.running_pod("rec-build-1")
    await _delete_image(world, "rec", make_again=make_again)
    done = await world.condition("wl-rec", "True", k.BUILD_SUCCEEDED, within=30)
    image = await world.get(r.IMAGE, "rec")
    assert image is not None
    assert done["metadata"]["annotations"][k.IMAGE_UID_ANNOTATION] == image["metadata"]["uid"]
    assert done["status"]["provenance"]["kpackBuild"]["name"] in {
        b["metadata"]["name"] for b in await world.builds("rec")
    }
    assert await eventually(lambda: world.events("wl-rec", k.IMAGE_RECREATED), what="an ImageRecreated Event")


async def test_a_completed_workload_is_not_rebuilt_when_its_image_is_deleted(world: World) -> None:
    await world.workload("wl-done", "done")
    done = await world.condition("wl-done", "True", k.BUILD_SUCCEEDED)
    await _delete_image(world, "done", make_again=False)

    async def unchanged() -> bool:
        obj = await world.get(r.BUILD_WORKLOAD, "wl-done")
        return succeeded(obj or {}) == succeeded(done)

    await consistently(unchanged, QUIET, "the completed workload untouched")
    assert await world.get(r.IMAGE, "done") is None


# ------------------------------------------------------------------------------------------ stops under way
@contextlib.asynccontextmanager
async def pod_held(world: World, pod: str) -> AsyncIterator[None]:
    """A finalizer keeps the pod terminating once deleted (as a node slow to stop its containers would),
    so that a stop stays under way; removed at the end."""
    await world.client.merge_patch(r.POD, pod, {"metadata": {"finalizers": ["test.kpack/hold"]}}, world.space)
    try:
        yield
    finally:
        with contextlib.suppress(errors.NotFound):
            await world.client.merge_patch(r.POD, pod, {"metadata": {"finalizers": None}}, world.space)


async def test_a_build_marked_for_a_stop_that_kpack_finished_keeps_kpacks_outcome(world: World) -> None:
    """A stop whose status write lost to kpack's (the Build marked for the workload, but finished by kpack):
    not a stop. The workload takes kpack's outcome; nothing of the build is deleted."""
    await world.workload("wl-half", "half", **{ENV_BUILD_SECONDS: "3"})
    await world.running_pod("half-build-1")
    await world.client.merge_patch(
        r.BUILD,
        "half-build-1",
        {"metadata": {"annotations": {k.STOPPED_FOR_ANNOTATION: "wl-half"}}},
        world.space,
    )
    done = await world.condition("wl-half", "True", k.BUILD_SUCCEEDED, within=30)
    assert done["status"]["provenance"]["kpackBuild"]["name"] == "half-build-1"
    [build] = await world.builds("half")
    assert succeeded(build)["status"] == "True"


async def test_a_stop_under_way_follows_its_own_build_not_a_restages(world: World) -> None:
    """While the canceled build's pod is still terminating, a restage of the same spec asks kpack for a new
    Build of the same generation: that one is the restage's, and the stop leaves it alone."""
    await world.workload("wl-first", "restaged", **{ENV_BUILD_SECONDS: "600"})
    await world.running_pod("restaged-build-1")
    async with pod_held(world, "restaged-build-1-build-pod"):
        await world.cancel("wl-first")
        await world.condition("wl-first", "Unknown", k.BUILD_CANCELED)
        await world.workload("wl-second", "restaged", **{ENV_BUILD_SECONDS: "600"})
        await world.running_pod("restaged-build-2")

        async def second_runs() -> bool:
            build = await world.get(r.BUILD, "restaged-build-2")
            return (
                build is not None
                and succeeded(build).get("status") not in ("True", "False")
                and k.STOPPED_FOR_ANNOTATION not in (build["metadata"].get("annotations") or {})
            )

        # Long enough for the stopping workload's next look (every CONFIRM_POLL, and on Build events).
        await consistently(second_runs, 3.0, "the restage's Build left running")
        still = await world.get(r.BUILD_WORKLOAD, "wl-first")
        assert succeeded(still or {}).get("status") == "Unknown", still
    await world.condition("wl-first", "False", k.BUILD_CANCELED)
    await world.condition("wl-second", "Unknown", k.BUILD_RUNNING)
    assert await second_runs()


async def test_a_pod_made_again_by_a_lagging_kpack_is_deleted_before_the_stop_is_done(world: World) -> None:
    """kpack whose cache has not seen the stop may make the Build's pod once more: the stop looks again a
    moment after its write, and deletes it again."""
    await world.workload("wl-lag", "lag", **{ENV_BUILD_SECONDS: "600"})
    pod = await world.running_pod("lag-build-1")
    name = pod["metadata"]["name"]
    await world.cancel("wl-lag")
    await eventually(lambda: _absent(world, r.POD, name), what="the pod deleted by the stop")
    meta = pod["metadata"]
    await world.client.create(
        r.POD,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": world.space,
                "labels": meta.get("labels"),
                "ownerReferences": meta.get("ownerReferences"),
            },
            "spec": pod["spec"],
        },
        world.space,
    )
    await world.condition("wl-lag", "False", k.BUILD_CANCELED)
    assert await world.get(r.POD, name) is None


async def _absent(world: World, resource: r.Resource, name: str) -> bool:
    return await world.get(resource, name) is None


async def test_an_image_deleted_during_a_stop_ends_the_stop_without_building_again(world: World) -> None:
    await world.workload("wl-cut", "cut", **{ENV_BUILD_SECONDS: "600"})
    await world.running_pod("cut-build-1")
    async with pod_held(world, "cut-build-1-build-pod"):
        await world.cancel("wl-cut")
        await world.condition("wl-cut", "Unknown", k.BUILD_CANCELED)
        await _delete_image(world, "cut", make_again=False)
        done = await world.condition("wl-cut", "False", k.BUILD_CANCELED)
        assert "its kpack Image was deleted" in succeeded(done)["message"]
        await consistently(lambda: _absent(world, r.IMAGE, "cut"), QUIET, "no Image made again")


async def test_an_older_workload_does_not_begin_again_over_a_newer_one(world: World) -> None:
    """Both workloads of an app in flight when its Image is deleted: only the newer begins again (the
    Image builds its source), the older is skipped as kpack skips a superseded generation."""
    await world.workload("wl-older", "pair", **{ENV_BUILD_SECONDS: "600"})
    await world.running_pod("pair-build-1")
    await world.workload("wl-newer", "pair", **{ENV_BUILD_SECONDS: "1"})
    await world.condition("wl-newer", "Unknown", k.BUILD_RUNNING)
    await _delete_image(world, "pair", make_again=False)
    await world.condition("wl-older", "False", k.KPACK_MISSED_BUILD, within=30)
    await world.condition("wl-newer", "True", k.BUILD_SUCCEEDED, within=30)
    image = await world.get(r.IMAGE, "pair")
    assert image is not None
    env = {e["name"]: e.get("value") for e in image["spec"]["build"]["env"]}
    assert env[ENV_BUILD_SECONDS] == "1"


@pytest.mark.emulator
async def test_a_build_whose_steps_run_costs_no_pod_reads(world: World, target: Target) -> None:
    """A running Build without a reason (kpack's while the pod is Running) is old enough for its pod to be
    read: only while kpack has seen none of its steps run."""
    assert target.emulator is not None
    reads = target.emulator.faults.add(
        FaultRule(method="GET", path="/pods/quiet-build-1-build-pod$", status=0)
    )
    long_ago = "2020-01-01T00:00:00Z"
    build: Obj = {
        "metadata": {"name": "quiet-build-1", "namespace": world.space, "creationTimestamp": long_ago},
        "status": {
            "conditions": [{"type": "Succeeded", "status": "Unknown"}],
            "stepStates": [{"terminated": {"exitCode": 0}}, {"running": {"startedAt": long_ago}}, {}],
        },
    }
    assert await pending.problem(world.client, build, 600.0) is None
    assert reads.hits == 0
    build["status"]["stepStates"] = [{"waiting": {"reason": "PodInitializing"}}, {}]
    said = await pending.problem(world.client, build, 600.0)
    assert said is not None and "kpack has not created the build pod quiet-build-1-build-pod" in said
    assert reads.hits == 1
