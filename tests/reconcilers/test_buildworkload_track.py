"""A running BuildWorkload follows its kpack Build (korifi.md §4.3 C, D, E, F, H: behaviours 22-40 and 43,
untested paths U2, U3, U6, and the defects of §6.4, §6.5 and §6.10 done better)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from service.kube import resources as r
from service.reconcilers import korifi as k
from tests.helpers import consistently, eventually
from tests.reconcilers.conftest import APP_GUID, PULL_SECRET, READINESS_TIMEOUT, SERVICE_ACCOUNT, Env

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]


def succeeded(status: str, reason: str = "", message: str = "") -> Obj:
    condition: Obj = {"type": "Succeeded", "status": status}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return {"conditions": [condition]}


async def running_workload(env: Env, **spec: Any) -> Obj:
    """A workload whose Image exists and which waits for its Build (Succeeded=Unknown, labelled)."""
    workload = await env.create_workload(env.workload_body(**spec))
    name = workload["metadata"]["name"]
    await env.wait_succeeded(name, "Unknown")
    await env.generation_label(name)
    return await env.workload(name)


async def droplet_of(env: Env, name: str) -> Obj | None:
    status = (await env.workload(name)).get("status") or {}
    droplet: Obj | None = status.get("droplet")
    return droplet


# ------------------------------------------------------------------------------ C
async def test_each_workload_follows_the_build_of_its_own_generation(env: Env) -> None:
    """Behaviour 22."""
    first = await running_workload(env)
    second = await running_workload(env, source="PACKAGE_IMAGE2")
    assert await env.generation_label(first["metadata"]["name"]) == "1"
    assert await env.generation_label(second["metadata"]["name"]) == "2"
    image = await env.push_droplet()
    await env.build("build", "1", "1", status=succeeded("False", "BuildFailed"))
    await env.build(
        "build-2", "2", "1", status={**succeeded("True"), "latestImage": image, "stack": {"id": "x"}}
    )
    failed = await env.wait_succeeded(first["metadata"]["name"], "False")
    assert failed["reason"] == k.BUILD_FAILED  # from its own Build, not KpackMissedBuild
    await env.wait_succeeded(second["metadata"]["name"], "True")


async def test_a_failed_build_fails_the_workload(env: Env) -> None:
    """Behaviour 23."""
    workload = await running_workload(env)
    await env.build(
        "build", "1", "1", status=succeeded("False", "BuildFailed", "Error: the build step failed")
    )
    failed = await env.wait_succeeded(workload["metadata"]["name"], "False")
    assert (failed["reason"], failed["message"]) == (k.BUILD_FAILED, k.BUILD_FAILED_MESSAGE)
    assert await droplet_of(env, workload["metadata"]["name"]) is None

    async def event() -> list[Obj]:
        events = (await env.client.list(r.EVENT, env.namespace))["items"]
        return [e for e in events if e["reason"] == k.BUILD_FAILED]

    [recorded] = await eventually(event, what="a BuildFailed event")
    assert recorded["type"] == "Warning" and "Error: the build step failed" in recorded["message"]
    assert recorded["involvedObject"]["name"] == workload["metadata"]["name"]


async def test_a_successful_build_writes_the_droplet_before_succeeding(env: Env) -> None:
    """Behaviours 24-25."""
    workload = await running_workload(env)
    name = workload["metadata"]["name"]
    image = await env.push_droplet()
    await env.build(
        "build", "1", "1", status={**succeeded("True"), "latestImage": image, "stack": {"id": "cflinuxfs3"}}
    )
    done = await env.wait_succeeded(name, "True")
    assert (done["reason"], done["message"]) == (k.BUILD_SUCCEEDED, k.BUILD_SUCCEEDED_MESSAGE)
    assert await droplet_of(env, name) == {
        "registry": {"image": image, "imagePullSecrets": [{"name": PULL_SECRET}]},
        "stack": "cflinuxfs3",
        "processTypes": [
            {"type": "web", "command": 'my-command "foo" "bar"'},
            {"type": "db", "command": "my-command2"},
        ],
        "ports": [8080, 8443],
    }
    ready = await env.condition(name, k.READY)
    assert ready is not None and ready["status"] == "True"


async def test_the_highest_build_number_decides(env: Env) -> None:
    """Behaviours 26-28."""
    workload = await running_workload(env)
    name = workload["metadata"]["name"]
    first_image = await env.push_droplet()
    # The newer build exists (running) before the older one succeeds, as in Korifi's setup.
    await env.build("latest-build", "1", "2")
    await env.build(
        "build", "1", "1", status={**succeeded("True"), "latestImage": first_image, "stack": {"id": "s"}}
    )
    await consistently(lambda: _no_droplet(env, name), 1.0, "no droplet while the latest build runs")
    assert (await env.succeeded(name) or {}).get("status") == "Unknown"

    latest_image = await env.push_droplet({"processes": [{"type": "web", "command": "latest"}]})
    await env.set_status(
        r.BUILD, "latest-build", {**succeeded("True"), "latestImage": latest_image, "stack": {"id": "s"}}
    )
    await env.wait_succeeded(name, "True")
    droplet = await droplet_of(env, name)
    assert droplet is not None and droplet["registry"]["image"] == latest_image
    assert droplet["processTypes"] == [{"type": "web", "command": "latest"}]


async def test_a_failed_latest_build_wins_over_an_older_success(env: Env) -> None:
    """Behaviour 28."""
    workload = await running_workload(env)
    name = workload["metadata"]["name"]
    image = await env.push_droplet()
    await env.build("latest-build", "1", "2", status=succeeded("False", "BuildFailed"))
    await env.build(
        "build", "1", "1", status={**succeeded("True"), "latestImage": image, "stack": {"id": "s"}}
    )
    await env.wait_succeeded(name, "False")
    await consistently(lambda: _no_droplet(env, name), 0.5, "no droplet")


async def _no_droplet(env: Env, name: str) -> bool:
    return await droplet_of(env, name) is None


async def test_an_unreadable_image_config_keeps_the_workload_running(env: Env) -> None:
    """Behaviour 43 (and Korifi's HEAD order: Succeeded=True only once the droplet is written)."""
    workload = await running_workload(env)
    name = workload["metadata"]["name"]
    missing = f"{env.registry.host}/droplets/{APP_GUID}@sha256:{'0' * 64}"
    await env.build(
        "build", "1", "1", status={**succeeded("True"), "latestImage": missing, "stack": {"id": "s"}}
    )

    async def not_ready() -> Obj | None:
        ready = await env.condition(name, k.READY)
        return ready if ready and ready["status"] == "False" else None

    ready = await eventually(not_ready, what="Ready=False")
    assert ready["message"].startswith("failed getting image config: ")
    assert (await env.succeeded(name) or {}).get("status") == "Unknown"
    assert await droplet_of(env, name) is None


async def test_unusable_build_metadata_keeps_the_workload_running(env: Env) -> None:
    """U6: an image without the build metadata label."""
    workload = await running_workload(env)
    name = workload["metadata"]["name"]
    repo = f"{env.registry.host}/droplets/no-label"
    digest = await env.images.push_image(f"{repo}:latest", {"config": {}}, [b"layer"])
    await env.build("build", "1", "1", status={**succeeded("True"), "latestImage": f"{repo}@{digest}"})

    async def not_ready() -> Obj | None:
        ready = await env.condition(name, k.READY)
        return ready if ready and ready["status"] == "False" else None

    ready = await eventually(not_ready, what="Ready=False")
    assert "failed to unmarshal build metadata" in ready["message"]
    assert (await env.succeeded(name) or {}).get("status") == "Unknown"


async def test_a_missing_builder_service_account_keeps_the_workload_running(env: Env) -> None:
    """U6: the droplet needs the builder service account's pull secrets."""
    workload = await running_workload(env)
    name = workload["metadata"]["name"]
    await env.client.delete(r.SERVICE_ACCOUNT, SERVICE_ACCOUNT, env.namespace)
    image = await env.push_droplet()
    await env.build("build", "1", "1", status={**succeeded("True"), "latestImage": image})

    async def not_ready() -> Obj | None:
        ready = await env.condition(name, k.READY)
        return ready if ready and ready["status"] == "False" else None

    ready = await eventually(not_ready, what="Ready=False")
    assert ready["message"] == f'ServiceAccount "{SERVICE_ACCOUNT}" not found'


@pytest.mark.emulator
async def test_the_builder_service_account_comes_from_a_cache_that_wakes_the_waiting_workload(
    env: Env,
) -> None:
    """The account is read from a cache of that one name, never from the API on a workload's path (it used
    to be one GET per droplet); the account made again wakes the workload waiting for it."""
    from simcluster.faults import FaultRule

    workload = await running_workload(env)
    name = workload["metadata"]["name"]
    account = await env.client.get(r.SERVICE_ACCOUNT, SERVICE_ACCOUNT, env.namespace)
    await env.client.delete(r.SERVICE_ACCOUNT, SERVICE_ACCOUNT, env.namespace)
    reads = env.api.faults.add(FaultRule(method="GET", path="/serviceaccounts", status=0))
    image = await env.push_droplet()
    await env.build("build", "1", "1", status={**succeeded("True"), "latestImage": image})

    async def waiting() -> bool:
        ready = await env.condition(name, k.READY)
        return bool(ready and ready["status"] == "False" and "not found" in ready.get("message", ""))

    await eventually(waiting, what="Ready=False: the account is missing")
    await env.client.create(
        r.SERVICE_ACCOUNT,
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT},
            **{key: account[key] for key in ("imagePullSecrets", "secrets") if key in account},
        },
        env.namespace,
    )
    await env.wait_succeeded(name, "True")
    assert reads.hits == 0


# ------------------------------------------------------------------------------ D
async def test_a_builder_that_stays_unready_fails_the_workload_after_the_timeout(env: Env) -> None:
    """Behaviour 29, with the better message of §6.10."""
    await env.set_status(
        r.CLUSTER_BUILDER,
        env.settings.cluster_builder_name,
        {"conditions": [{"type": "Ready", "status": "False"}]},
    )
    started = time.monotonic()
    workload = await env.create_workload(env.workload_body())
    name = workload["metadata"]["name"]
    assert await eventually(lambda: env.get(r.IMAGE, APP_GUID), what="the Image is created first")
    failed = await env.wait_succeeded(name, "False", within=READINESS_TIMEOUT + 5)
    assert time.monotonic() - started >= READINESS_TIMEOUT * 0.9
    assert failed["reason"] == k.BUILDER_NOT_READY
    assert failed["message"] == f'Check ClusterBuilder "{env.settings.cluster_builder_name}"'


@pytest.mark.parametrize(
    "conditions", [[], [{"type": "Ready", "status": "Unknown"}]], ids=["none", "unknown"]
)
async def test_a_builder_without_ready_true_fails_after_the_timeout(env: Env, conditions: list[Obj]) -> None:
    """Behaviours 32-33."""
    await env.set_status(r.CLUSTER_BUILDER, env.settings.cluster_builder_name, {"conditions": conditions})
    workload = await env.create_workload(env.workload_body())
    failed = await env.wait_succeeded(workload["metadata"]["name"], "False", within=READINESS_TIMEOUT + 5)
    assert failed["reason"] == k.BUILDER_NOT_READY


async def test_a_builder_that_becomes_ready_in_time_keeps_the_workload_running(env: Env) -> None:
    """Behaviour 30."""
    await env.set_status(
        r.CLUSTER_BUILDER,
        env.settings.cluster_builder_name,
        {"conditions": [{"type": "Ready", "status": "False"}]},
    )
    workload = await env.create_workload(env.workload_body())
    name = workload["metadata"]["name"]
    await env.wait_succeeded(name, "Unknown")
    await env.set_status(
        r.CLUSTER_BUILDER,
        env.settings.cluster_builder_name,
        {"conditions": [{"type": "Ready", "status": "True"}]},
    )

    async def still_running() -> bool:
        return (await env.succeeded(name) or {}).get("status") == "Unknown"

    await consistently(still_running, READINESS_TIMEOUT + 1.0, "Succeeded stays Unknown (no builds yet)")


async def test_a_builder_becoming_ready_wakes_the_waiting_workload(env: Env) -> None:
    """No polling: the workload's next step follows the ClusterBuilder's event, not a timer."""
    await env.set_status(
        r.CLUSTER_BUILDER,
        env.settings.cluster_builder_name,
        {"conditions": [{"type": "Ready", "status": "False"}]},
    )
    workload = await env.create_workload(env.workload_body())
    name = workload["metadata"]["name"]
    await env.wait_succeeded(name, "Unknown")
    image = await env.push_droplet()
    await env.build("build", "1", "1", status={**succeeded("True"), "latestImage": image})
    await consistently(lambda: _still(env, name, "Unknown"), 0.3, "waits for the builder")
    await env.set_status(
        r.CLUSTER_BUILDER,
        env.settings.cluster_builder_name,
        {"conditions": [{"type": "Ready", "status": "True"}]},
    )
    await env.wait_succeeded(name, "True", within=READINESS_TIMEOUT)


async def _still(env: Env, name: str, status: str) -> bool:
    return (await env.succeeded(name) or {}).get("status") == status


async def test_a_deleted_cluster_builder_fails_the_workload(env: Env) -> None:
    """Behaviour 31."""
    await env.client.delete(r.CLUSTER_BUILDER, env.settings.cluster_builder_name)
    workload = await env.create_workload(env.workload_body())
    failed = await env.wait_succeeded(workload["metadata"]["name"], "False")
    assert (failed["reason"], failed["message"]) == (k.BUILDER_NOT_READY, k.CLUSTER_BUILDER_NOT_FOUND)
    assert await env.get(r.IMAGE, APP_GUID) is not None


async def test_a_deleted_custom_builder_is_made_again(env: Env) -> None:
    """U2 differs (docs/builders.md): the workload's own Builder, deleted (e.g. by the garbage collector's
    race with a new user), is made again and waited for anew; nobody builds it here, so the timeout ends it."""
    workload = await env.create_workload(env.workload_body(buildpacks=["repo/my-buildpack"]))
    name = workload["metadata"]["name"]
    await env.wait_succeeded(name, "Unknown")
    builder = k.builder_name(["repo/my-buildpack"])
    old = await env.get(r.BUILDER, builder)
    assert old is not None
    await env.client.delete(r.BUILDER, builder, env.namespace)

    async def remade() -> Obj | None:
        new = await env.get(r.BUILDER, builder)
        return new if new and new["metadata"]["uid"] != old["metadata"]["uid"] else None

    await eventually(remade, what="the Builder made again")
    failed = await env.wait_succeeded(name, "False", within=READINESS_TIMEOUT + 5)
    assert (failed["reason"], failed["message"]) == (k.BUILDER_NOT_READY, f'Check Builder "{builder}"')


@pytest.mark.readiness_timeout(60)  # its own custom Builder never gets ready here: no timeout first
async def test_an_image_naming_a_missing_builder_fails_the_workload(env: Env) -> None:
    """U2, for a Builder the workload did not ask for."""
    workload = await env.create_workload(env.workload_body(buildpacks=["repo/my-buildpack"]))
    name = workload["metadata"]["name"]
    await env.wait_succeeded(name, "Unknown")
    await env.client.merge_patch(
        r.IMAGE, APP_GUID, {"spec": {"builder": {"name": "no-such-builder"}}}, env.namespace
    )
    failed = await env.wait_succeeded(name, "False")
    assert (failed["reason"], failed["message"]) == (k.BUILDER_NOT_READY, k.CUSTOM_BUILDER_NOT_FOUND)


async def test_an_unready_custom_builder_fails_after_the_timeout_naming_it(env: Env) -> None:
    """U3, with the better message of §6.10."""
    workload = await env.create_workload(env.workload_body(buildpacks=["repo/another-buildpack"]))
    failed = await env.wait_succeeded(workload["metadata"]["name"], "False", within=READINESS_TIMEOUT + 5)
    builder = k.builder_name(["repo/another-buildpack"])
    assert (failed["reason"], failed["message"]) == (k.BUILDER_NOT_READY, f'Check Builder "{builder}"')


# ------------------------------------------------------------------------------ E
async def test_an_older_workload_kpack_skipped_is_failed(env: Env) -> None:
    """Behaviour 34."""
    first = await running_workload(env)
    second = await running_workload(env, source="PACKAGE_IMAGE2")
    await env.build("build", await env.generation_label(second["metadata"]["name"]), "1")
    failed = await env.wait_succeeded(first["metadata"]["name"], "False")
    assert (failed["reason"], failed["message"]) == (k.KPACK_MISSED_BUILD, k.KPACK_MISSED_BUILD_MESSAGE)
    assert failed["observedGeneration"] == first["metadata"]["generation"]
    assert (await env.succeeded(second["metadata"]["name"]) or {}).get("status") == "Unknown"


async def test_an_older_workload_with_its_own_build_is_not_failed(env: Env) -> None:
    """Behaviour 35."""
    first = await running_workload(env)
    second = await running_workload(env, source="PACKAGE_IMAGE2")
    await env.build("own-build", await env.generation_label(first["metadata"]["name"]), None)
    await env.build("build", await env.generation_label(second["metadata"]["name"]), "1")
    await consistently(lambda: _still(env, first["metadata"]["name"], "Unknown"), 1.0, "first stays running")


async def test_a_completed_older_workload_is_not_touched(env: Env) -> None:
    """Behaviour 36."""
    first = await running_workload(env)
    name = first["metadata"]["name"]
    await env.set_status(
        r.BUILD_WORKLOAD,
        name,
        {
            "conditions": [
                {
                    "type": "Succeeded",
                    "status": "True",
                    "reason": "DoneAlready",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ]
        },
    )
    second = await running_workload(env, source="PACKAGE_IMAGE2")
    await env.build("build", await env.generation_label(second["metadata"]["name"]), "1")
    await consistently(lambda: _still(env, name, "True"), 1.0, "the completed workload stays True")


async def test_a_newer_workload_is_not_failed_by_an_older_one(env: Env) -> None:
    """Behaviour 37."""
    await running_workload(env)
    second = await running_workload(env, source="PACKAGE_IMAGE2")
    third = await running_workload(env, source="PACKAGE_IMAGE3")
    await env.build("build", await env.generation_label(second["metadata"]["name"]), "1")
    await consistently(
        lambda: _still(env, third["metadata"]["name"], "Unknown"), 1.0, "the newest stays running"
    )


async def test_a_sibling_without_a_generation_label_does_not_stop_the_others(env: Env) -> None:
    """§6.5 done better: the unlabelled sibling is skipped, the skipped one still failed."""
    first = await running_workload(env)
    unlabelled = await env.create_workload(env.workload_body(buildpacks=["not/in-the-store"]))
    await env.wait_succeeded(unlabelled["metadata"]["name"], "False")
    second = await running_workload(env, source="PACKAGE_IMAGE2")
    await env.build("build", await env.generation_label(second["metadata"]["name"]), "1")
    failed = await env.wait_succeeded(first["metadata"]["name"], "False")
    assert failed["reason"] == k.KPACK_MISSED_BUILD


# ------------------------------------------------------------------------------ F
@pytest.mark.parametrize(("ready", "annotated"), [("True", True), ("False", True), ("Unknown", False)])
async def test_a_skipped_build_is_requested_again(env: Env, ready: str, annotated: bool) -> None:
    """Behaviours 38-40."""
    await running_workload(env)
    second = await running_workload(env)
    generation = int(await env.generation_label(second["metadata"]["name"]))
    await env.build("first-build", str(generation), "1")
    await env.set_status(
        r.IMAGE,
        APP_GUID,
        {
            "observedGeneration": generation,
            "latestBuildImageGeneration": generation - 1,
            "latestBuildRef": "first-build",
            "conditions": [{"type": "Ready", "status": ready}],
        },
    )

    async def annotation() -> str | None:
        build = await env.get(r.BUILD, "first-build")
        return ((build or {}).get("metadata", {}).get("annotations") or {}).get(k.BUILD_NEEDED_ANNOTATION)

    if annotated:
        assert await eventually(annotation, what="additionalBuildNeeded on the latest Build") == "true"
    else:
        await consistently(lambda: _is_none(annotation()), 1.0, "no annotation while the Image is Unknown")


async def _is_none(value: Any) -> bool:
    return await value is None


async def test_an_image_that_never_built_is_waited_for(env: Env) -> None:
    """§6.4 done better: no latestBuildRef means kpack's first build is coming; no error loop."""
    workload = await running_workload(env)
    name = workload["metadata"]["name"]
    await env.set_status(
        r.IMAGE,
        APP_GUID,
        {
            "observedGeneration": 1,
            "latestBuildImageGeneration": 0,
            "conditions": [{"type": "Ready", "status": "False"}],
        },
    )

    async def healthy() -> bool:
        ready = await env.condition(name, k.READY)
        return ready is not None and ready["status"] == "True" and await _still(env, name, "Unknown")

    await consistently(healthy, 1.0, "Ready stays True and the workload keeps waiting")


async def test_an_unknown_builder_kind_on_the_image_is_reported(env: Env) -> None:
    """U4: the Image names a builder kind kpack does not have; the workload says so and keeps running."""
    workload = await running_workload(env)
    name = workload["metadata"]["name"]
    await env.client.merge_patch(r.IMAGE, APP_GUID, {"spec": {"builder": {"kind": "Mystery"}}}, env.namespace)

    async def not_ready() -> Obj | None:
        ready = await env.condition(name, k.READY)
        return ready if ready and ready["status"] == "False" else None

    ready = await eventually(not_ready, what="Ready=False")
    assert ready["message"] == "failed getting builder readiness condition: unknown kind 'Mystery'"
    assert await _still(env, name, "Unknown")
    errors_before = _reconcile_errors(env)
    await eventually(
        lambda: _reconcile_errors(env) >= errors_before + 3, what="retried with backoff, no event needed"
    )


def _reconcile_errors(env: Env) -> float:
    value = env.manager.registry.get_sample_value(
        "controller_runtime_reconcile_errors_total", {"controller": "buildworkload"}
    )
    return value or 0.0


async def test_an_unparsable_generation_label_is_reported(env: Env) -> None:
    """U6: the workload's Image-generation label was damaged; it says so instead of guessing."""
    workload = await running_workload(env)
    name = workload["metadata"]["name"]
    await env.client.merge_patch(
        r.BUILD_WORKLOAD, name, {"metadata": {"labels": {k.IMAGE_GENERATION_LABEL: "two"}}}, env.namespace
    )

    async def not_ready() -> Obj | None:
        ready = await env.condition(name, k.READY)
        return ready if ready and ready["status"] == "False" else None

    ready = await eventually(not_ready, what="Ready=False")
    assert ready["message"].startswith("couldn't parse image generation on buildworkload label: ")
    assert await _still(env, name, "Unknown")
    await env.client.merge_patch(
        r.BUILD_WORKLOAD, name, {"metadata": {"labels": {k.IMAGE_GENERATION_LABEL: "1"}}}, env.namespace
    )

    async def ready_again() -> bool:
        condition = await env.condition(name, k.READY)
        return condition is not None and condition["status"] == "True"

    await eventually(ready_again, what="Ready again once the label is repaired")


@pytest.mark.emulator
async def test_an_older_workload_sees_its_own_skip_when_the_siblings_write_is_lost(env: Env) -> None:
    """The newer workload's KpackMissedBuild patch of its sibling can meet a 409 (a stale cache): the older
    workload must still end, from its own Image's events (Korifi would leave it running for ever)."""
    from simcluster.faults import FaultRule

    first = await running_workload(env)
    name = first["metadata"]["name"]
    # The newer generation's Build has already succeeded when its workload starts, so the newer workload
    # completes in the very pass that patches its sibling, and never tries that patch again.
    image = await env.push_droplet()
    await env.build("build", "2", "1", status={**succeeded("True"), "latestImage": image})
    env.api.faults.add(FaultRule(method="PATCH", path=f"/buildworkloads/{name}/status$", status=409, count=1))
    second = await env.create_workload(env.workload_body(source="PACKAGE_IMAGE2"))
    await env.wait_succeeded(second["metadata"]["name"], "True")
    assert await env.generation_label(second["metadata"]["name"]) == "2"
    assert (await env.succeeded(name) or {}).get("status") == "Unknown"  # the sibling's write was lost
    await env.set_status(
        r.IMAGE,
        APP_GUID,
        {
            "observedGeneration": 2,
            "latestBuildImageGeneration": 2,
            "latestBuildRef": "build",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    )
    failed = await env.wait_succeeded(name, "False")
    assert failed["reason"] == k.KPACK_MISSED_BUILD


@pytest.mark.parametrize(
    ("observed", "built"), [(0, -1), (1, 0)], ids=["generation-not-observed", "already-built"]
)
async def test_no_build_is_requested_unless_kpack_observed_and_skipped_the_generation(
    env: Env, observed: int, built: int
) -> None:
    """Behaviours 38-40, the other side: an Image that has not seen the generation yet, or has built it."""
    await running_workload(env)
    second = await running_workload(env)
    generation = int(await env.generation_label(second["metadata"]["name"]))
    await env.build("first-build", str(generation), "1")
    await env.set_status(
        r.IMAGE,
        APP_GUID,
        {
            "observedGeneration": generation - 1 + observed,
            "latestBuildImageGeneration": generation + built,
            "latestBuildRef": "first-build",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    )

    async def annotation() -> str | None:
        build = await env.get(r.BUILD, "first-build")
        return ((build or {}).get("metadata", {}).get("annotations") or {}).get(k.BUILD_NEEDED_ANNOTATION)

    await consistently(lambda: _is_none(annotation()), 1.0, "no additionalBuildNeeded")
