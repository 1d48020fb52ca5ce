"""Regression tests for the defects the chaos soak found (issue "Reliability"): caches that lag, registries
that hang, spaces deleted whole, bad input and races that heal. Each test fails on the code before the fix.

Caches are made to lag on purpose: a fault on a resource's list and watch requests, then every watch
dropped, leaves that one informer unable to see anything new while the API serves single objects."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.conditions import MAX_MESSAGE
from service.reconcilers import korifi as k
from service.registry.auth import Keychain
from service.registry.client import RegistryClient
from service.registry.errors import NotFound as ImageNotFound
from simcluster.demo import create_space
from simcluster.faults import FaultRule
from simcluster.registry import OciRegistry, running_registry
from tests.conftest import Target
from tests.helpers import consistently, eventually, hanging_server
from tests.reconcilers.conftest import (
    APP_GUID,
    PREFIX,
    SERVICE_ACCOUNT,
    Env,
    RecordingRepositories,
    running_controllers,
    service_config,
)
from tests.reconcilers.test_buildworkload_track import running_workload, succeeded

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]


def lag_cache(env: Env, plural: str) -> FaultRule:
    """From now on the informer of ``plural`` sees nothing new (its list and watch fail); single GETs and
    writes still work. Set ``count = hits`` on the returned rule to let it catch up."""
    rule = env.api.faults.add(FaultRule(method="GET", path=f"/{plural}$", status=500))
    env.api.cluster.drop_watches()
    return rule


def metric(env: Env, name: str, **labels: str) -> float:
    value = env.manager.registry.get_sample_value(name, {"controller": "buildworkload", **labels})
    return value or 0.0


def errors_total(env: Env) -> float:
    return metric(env, "controller_runtime_reconcile_errors_total")


async def event_count(env: Env, name: str, reason: str) -> int:
    events, _ = await env.client.list_all(
        r.EVENT, env.namespace, field_selector=f"involvedObject.name={name}"
    )
    return sum(int(e.get("count") or 1) for e in events if e.get("reason") == reason)


# ------------------------------------------------------------------------------ lagging caches
@pytest.mark.emulator
async def test_a_custom_builder_missing_from_a_lagging_cache_does_not_fail_the_workload(env: Env) -> None:
    lag = lag_cache(env, "builders")
    workload = await env.create_workload(env.workload_body(buildpacks=["repo/my-buildpack"]))
    name = workload["metadata"]["name"]
    builder = k.builder_name(["repo/my-buildpack"])
    await eventually(lambda: env.get(r.BUILDER, builder), what="the custom Builder is created")
    await env.set_status(r.BUILDER, builder, {"conditions": [{"type": "Ready", "status": "True"}]})
    await env.wait_succeeded(name, "Unknown")
    image = await env.push_droplet()
    await env.build("build", "1", "1", status={**succeeded("True"), "latestImage": image})
    await env.wait_succeeded(name, "True")  # before: Succeeded=False "Custom Builder not found"
    cached = env.manager.informers.lister(r.BUILDER).get(env.namespace, builder)
    assert cached is None, "the Builder cache caught up: the test proved nothing"
    assert lag.count is None  # still lagging


@pytest.mark.emulator
async def test_a_build_missing_from_a_lagging_cache_is_not_a_missed_build(env: Env) -> None:
    first = await running_workload(env)
    name = first["metadata"]["name"]
    lag = lag_cache(env, "builds")
    await env.build("build", "1", "1")  # kpack made the Build; the cache cannot see it
    second = await running_workload(env, source="PACKAGE_IMAGE2")
    assert await env.generation_label(second["metadata"]["name"]) == "2"
    await env.set_status(  # the Image moved on to generation 2 and built it
        r.IMAGE,
        APP_GUID,
        {
            "observedGeneration": 2,
            "latestBuildImageGeneration": 2,
            "latestBuildRef": "build-2",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    )
    await eventually(lambda: lag.hits > 2, what="the informer tried to relist")
    await consistently(
        lambda: _succeeded_is(env, name, "Unknown"), 1.5, "not failed as a missed build"
    )  # before: Succeeded=False KpackMissedBuild although its Build exists
    lag.count = lag.hits  # the cache catches up
    await env.set_status(r.BUILD, "build", succeeded("False"))
    failed = await env.wait_succeeded(name, "False", within=20)
    assert failed["reason"] == k.BUILD_FAILED


async def _succeeded_is(env: Env, name: str, status: str) -> bool:
    return ((await env.succeeded(name)) or {}).get("status") == status


@pytest.mark.emulator
async def test_an_image_the_cache_has_not_seen_is_a_quiet_retry_not_an_error(env: Env) -> None:
    """Two workloads of one app beginning together, or a relist: creating the Image meets 409
    AlreadyExists. That heals on its own: a requeue, not an error, and no Ready=False."""
    lag = lag_cache(env, "images")
    await env.create(
        r.IMAGE,
        {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "Image",
            "metadata": {"name": APP_GUID, "namespace": env.namespace},
            "spec": {"tag": f"my.repository/my-prefix/{APP_GUID}-droplets"},
        },
    )
    errors_before = errors_total(env)
    requeues_before = metric(env, "controller_runtime_reconcile_total", result="requeue")
    workload = await env.create_workload(env.workload_body())
    name = workload["metadata"]["name"]
    await eventually(
        lambda: metric(env, "controller_runtime_reconcile_total", result="requeue") > requeues_before,
        what="the AlreadyExists is requeued",
    )
    lag.count = lag.hits
    await env.wait_succeeded(name, "Unknown", within=20)
    assert errors_total(env) == errors_before
    ready = await env.condition(name, k.READY)
    assert ready is not None and ready["status"] == "True"


# ------------------------------------------------------------------------------ a hanging registry
async def test_a_hanging_registry_holds_no_worker_from_unrelated_workloads(env: Env) -> None:
    """One worker (the env's default) and a droplet read that hangs for the registry timeout (5 s):
    another app's workload begins meanwhile, not after."""
    async with hanging_server() as hang:
        first = await running_workload(env)
        name = first["metadata"]["name"]
        image = f"127.0.0.1:{hang.port}/droplets/{APP_GUID}@sha256:{'0' * 64}"
        await env.build("build", "1", "1", status={**succeeded("True"), "latestImage": image})
        await eventually(lambda: hang.connections >= 1, what="the droplet read reached the registry")
        other = env.workload_body()
        other["metadata"]["labels"][k.APP_GUID_LABEL] = "other-app"
        created = await env.create_workload(other)
        await env.wait_succeeded(created["metadata"]["name"], "Unknown")
        # The hanging read has not timed out yet: the other workload did not wait for it.
        ready = await env.condition(name, k.READY)
        assert ready is not None and ready["status"] == "True", ready
        failed = await eventually(
            lambda: env.condition(name, k.READY),
            until=lambda c: c is not None and c["status"] == "False",
            what="the read times out and says so",
        )
        assert "failed getting image config" in failed["message"]
        assert await _succeeded_is(env, name, "Unknown")  # retried, not failed for good


async def test_a_hanging_registry_does_not_hold_other_build_deletions(env: Env) -> None:
    async with hanging_server() as hang:
        repo = f"{env.registry.host}/droplets/{APP_GUID}"
        digest = await env.images.push_image(f"{repo}:latest", {"config": {}}, [b"droplet"])
        builds = {
            "hung": f"127.0.0.1:{hang.port}/droplets/{APP_GUID}@sha256:{'0' * 64}",
            "fine": f"{repo}@{digest}",
        }
        for build, image in builds.items():
            await env.build(build, "1", labels={k.BUILD_WORKLOAD_LABEL: "anything"}, number=None)
            await env.set_status(r.BUILD, build, {"latestImage": image})
            await eventually(lambda b=build: _finalized(env, b), what=f"{build} holds its finalizer")
        await env.client.delete(r.BUILD, "hung", env.namespace)
        await eventually(lambda: hang.connections >= 1, what="the hung deletion reached its registry")
        await env.client.delete(r.BUILD, "fine", env.namespace)
        await eventually(lambda: _gone(env, "fine"), what="the other Build is released")
        assert not await _gone(env, "hung"), "the hung deletion ended first: the test proved nothing"
        with pytest.raises(ImageNotFound):
            await env.images.get_manifest(builds["fine"])
        await eventually(lambda: _gone(env, "hung"), what="released after the registry timeout")


async def _finalized(env: Env, build: str) -> bool:
    obj = await env.get(r.BUILD, build)
    return k.KPACK_BUILD_FINALIZER in ((obj or {}).get("metadata", {}).get("finalizers") or [])


async def _gone(env: Env, build: str) -> bool:
    return await env.get(r.BUILD, build) is None


# ------------------------------------------------------------------------------ a space deleted whole
async def test_deleting_a_space_deletes_its_droplets_with_the_root_namespace_credentials(
    target: Target,
) -> None:
    """The space's Secrets and ServiceAccount go at once; its Builds wait for their finalizer, which then
    finds no credentials in the space. The root namespace's builder account (Korifi copies it into every
    space) still opens the registry."""
    root, space = f"cf-{uuid.uuid4().hex[:6]}", f"space-{uuid.uuid4().hex[:6]}"
    config = service_config(
        builder_service_account=SERVICE_ACCOUNT,
        cf_root_namespace=root,
        container_repository_prefix="x.example/cf/",
    )
    locked = OciRegistry(auth="basic", users={"demo": "demo"})
    async with (
        running_registry(locked) as registry,
        KubeClient(target.cluster, timeout=5.0) as client,
        RegistryClient(timeout=5.0) as images,
        running_controllers(client, config, images),
    ):
        for namespace in (root, space):
            await create_space(client, namespace, registry.host, service_account=SERVICE_ACCOUNT)
        keychain = Keychain.from_docker_config(
            {"auths": {registry.host: {"username": "demo", "password": "demo"}}}
        )
        repo = f"{registry.host}/droplets/{APP_GUID}"
        digest = await images.push_image(f"{repo}:latest", {"config": {}}, [b"droplet"], keychain=keychain)
        build: Obj = {
            "apiVersion": k.KPACK_API_VERSION,
            "kind": "Build",
            "metadata": {"name": "b", "namespace": space, "labels": {k.BUILD_WORKLOAD_LABEL: "w"}},
            "spec": {"tags": [repo]},
        }
        await client.create(r.BUILD, build, space)
        await client.patch_status(r.BUILD, "b", {"status": {"latestImage": f"{repo}@{digest}"}}, space)

        async def finalized() -> bool:
            obj = await client.get(r.BUILD, "b", space)
            return k.KPACK_BUILD_FINALIZER in (obj["metadata"].get("finalizers") or [])

        await eventually(finalized, what="the Build holds its finalizer")
        await client.delete(r.NAMESPACE, space)

        async def space_gone() -> bool:
            namespaces, _ = await client.list_all(r.NAMESPACE)
            return all(ns["metadata"]["name"] != space for ns in namespaces)

        await eventually(space_gone, within=20, what="the space is deleted")
        with pytest.raises(ImageNotFound):
            await images.get_manifest(f"{repo}@{digest}", keychain=keychain)
        if target.emulator is None:  # another cluster outlives the test
            await client.delete(r.NAMESPACE, root)


# ------------------------------------------------------------------------------ an Image deleted under two workloads
async def test_an_older_workload_is_skipped_even_when_the_newer_began_again_first(target: Target) -> None:
    """Both workloads of an app in flight when its Image is deleted; the newer one reconciles first, makes
    the Image again and labels itself with that Image's generation, 1 — the older one's own. The older one
    must still see that it is superseded (it began on the deleted Image, the newer on the one there now),
    not begin again and write its source over the newer one's. The controllers are stopped in between so
    that the order is the test's, not the scheduler's (the real control plane showed it under load)."""
    config = service_config(
        cluster_builder_name=f"cluster-builder-{uuid.uuid4().hex[:6]}",
        builder_service_account=SERVICE_ACCOUNT,
        container_repository_prefix=PREFIX,
        cf_root_namespace=f"cf-{uuid.uuid4().hex[:6]}",
    )
    async with (
        running_registry() as registry,
        KubeClient(target.cluster, timeout=5.0) as client,
        RegistryClient(timeout=5.0) as images,
    ):
        async with running_controllers(client, config, images) as manager:
            env = Env(
                target.emulator,
                client,
                registry,
                images,
                manager,
                config.builder_settings(),
                RecordingRepositories(),
            )
            await env.standard()
            older = (await running_workload(env, source="OLDER_SOURCE"))["metadata"]["name"]
            newer = (await running_workload(env, source="NEWER_SOURCE"))["metadata"]["name"]
            assert await env.generation_label(newer) == "2"
        # What the newer workload's beginning again does, with the controllers stopped: the Image made anew
        # with its source, and the workload labelled with that Image's generation and UID.
        old_image = await env.get(r.IMAGE, APP_GUID)
        assert old_image is not None
        await client.delete(r.IMAGE, APP_GUID, env.namespace)
        await eventually(lambda: _gone_image(env), what="the old Image is gone")
        remade = await env.create(
            r.IMAGE,
            {
                "apiVersion": old_image["apiVersion"],
                "kind": "Image",
                "metadata": {
                    "name": APP_GUID,
                    "namespace": env.namespace,
                    "labels": old_image["metadata"].get("labels") or {},
                },
                "spec": old_image["spec"],
            },
        )
        await client.merge_patch(
            r.BUILD_WORKLOAD,
            newer,
            {
                "metadata": {
                    "labels": {k.IMAGE_GENERATION_LABEL: str(remade["metadata"]["generation"])},
                    "annotations": {k.IMAGE_UID_ANNOTATION: remade["metadata"]["uid"]},
                }
            },
            env.namespace,
        )
        assert await env.generation_label(newer) == await env.generation_label(older) == "1"
        async with running_controllers(client, config, images):
            skipped = await env.wait_succeeded(older, "False")
            assert skipped["reason"] == k.KPACK_MISSED_BUILD
            image = await env.get(r.IMAGE, APP_GUID)
            assert image is not None and image["metadata"]["uid"] == remade["metadata"]["uid"]
            assert image["spec"]["source"] == remade["spec"]["source"]  # the newer one's source, untouched
            assert image["spec"]["source"]["registry"]["image"] == "NEWER_SOURCE"
            still = await env.succeeded(newer)
            assert still is not None and still["status"] == "Unknown"  # it waits for its Build
        if target.emulator is None:  # another cluster outlives the test
            await client.delete(r.NAMESPACE, env.namespace)
            await client.delete(r.CLUSTER_BUILDER, config.cluster_builder_name)


async def _gone_image(env: Env) -> bool:
    return await env.get(r.IMAGE, APP_GUID) is None


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("labels", "source", "says"),
    [
        ({}, "PACKAGE_IMAGE", "has no korifi.cloudfoundry.org/app-guid label"),
        ({k.APP_GUID_LABEL: ""}, "PACKAGE_IMAGE", "has no korifi.cloudfoundry.org/app-guid label"),
        (
            {k.APP_GUID_LABEL: "Not_A_Name"},
            "PACKAGE_IMAGE",
            'app guid "Not_A_Name" cannot name a kpack Image',
        ),
        ({k.APP_GUID_LABEL: APP_GUID}, "", "spec.source.registry.image is empty"),
    ],
    ids=["no-app-guid", "empty-app-guid", "app-guid-not-a-name", "no-source-image"],
)
async def test_a_workload_that_can_never_build_fails_saying_why(
    env: Env, labels: dict[str, str], source: str, says: str
) -> None:
    body = env.workload_body(source=source)
    body["metadata"]["labels"] = labels
    workload = await env.create_workload(body)
    name = workload["metadata"]["name"]
    failed = await env.wait_succeeded(name, "False")  # before: retried for ever, Succeeded never set
    assert failed["reason"] == k.INVALID_WORKLOAD
    assert says in failed["message"]
    assert await env.get(r.IMAGE, APP_GUID) is None
    await eventually(lambda: event_count(env, name, k.INVALID_WORKLOAD), what="a Warning Event says so")


async def test_an_environment_kpack_could_never_record_fails_the_workload(env: Env) -> None:
    """kpack copies env into a Build annotation (twice); Kubernetes caps annotations at 256 KiB, so the
    Build could never be created and the workload would stay BuildRunning for ever."""
    body = env.workload_body()
    body["spec"]["env"] = [{"name": "HUGE", "value": "x" * (200 * 1024)}]
    workload = await env.create_workload(body)
    failed = await env.wait_succeeded(workload["metadata"]["name"], "False")
    assert failed["reason"] == k.INVALID_WORKLOAD
    assert "262144 bytes of annotations" in failed["message"]


async def test_a_condition_message_beyond_the_crd_limit_is_cut_and_the_status_written(env: Env) -> None:
    long_id = "x" * 40_000
    workload = await env.create_workload(env.workload_body(buildpacks=[long_id]))
    failed = await env.wait_succeeded(workload["metadata"]["name"], "False")  # before: 422, no status
    assert failed["reason"] == k.INVALID_BUILDPACKS
    assert len(failed["message"]) == MAX_MESSAGE and failed["message"].endswith("...")


async def test_a_missing_builder_service_account_is_named_and_waited_for(env: Env) -> None:
    """Without the account kpack cannot push; the workload says which account is missing (before, only
    kpack's 401 said anything), and starts soon after it appears — not after an error backoff."""
    account = await env.get(r.SERVICE_ACCOUNT, SERVICE_ACCOUNT)
    assert account is not None
    await env.client.delete(r.SERVICE_ACCOUNT, SERVICE_ACCOUNT, env.namespace)
    errors_before = errors_total(env)
    workload = await env.create_workload(env.workload_body())
    name = workload["metadata"]["name"]
    ready = await eventually(
        lambda: env.condition(name, k.READY),
        until=lambda c: c is not None and c["status"] == "False",
        what="Ready=False naming the account",
    )
    assert ready["message"].startswith(f'ServiceAccount "{SERVICE_ACCOUNT}" not found')
    assert await env.get(r.IMAGE, APP_GUID) is None
    assert errors_total(env) == errors_before  # waiting is not an error
    account["metadata"] = {"name": SERVICE_ACCOUNT, "namespace": env.namespace}
    await env.create(r.SERVICE_ACCOUNT, account)
    await env.wait_succeeded(name, "Unknown", within=30)


@pytest.mark.emulator
async def test_outcome_events_are_recorded_once_even_when_the_write_is_retried(env: Env) -> None:
    body = env.workload_body()
    name = body["metadata"]["name"]
    env.api.faults.add(FaultRule(method="PATCH", path=f"/buildworkloads/{name}/status$", status=409, count=1))
    await env.create_workload(body)
    await env.wait_succeeded(name, "Unknown")
    await eventually(lambda: event_count(env, name, k.BUILD_RUNNING), what="the BuildRunning Event")
    await consistently(
        lambda: _equals(event_count(env, name, k.BUILD_RUNNING), 1), 1.0, "one Event, not one per try"
    )


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


@pytest.mark.emulator
async def test_a_workload_deleted_during_its_reconcile_is_not_an_error(env: Env) -> None:
    """Deleted between the cache read and the write, the workload's write meets 404: nothing is left to
    report on, and nothing to retry."""
    body = env.workload_body()
    name = body["metadata"]["name"]
    slow = env.api.faults.add(
        FaultRule(method="PATCH", path=f"/buildworkloads/{name}$", status=0, latency=1.0, count=1)
    )
    errors_before = errors_total(env)
    await env.create_workload(body)
    await eventually(lambda: slow.hits == 1, what="the first write is on its way")
    done_before = _reconciles(env)
    await env.client.delete(r.BUILD_WORKLOAD, name, env.namespace)  # no finalizer yet: gone at once
    await eventually(lambda: _reconciles(env) > done_before, what="the reconcile ends")
    assert errors_total(env) == errors_before


def _reconciles(env: Env) -> float:
    return sum(
        metric(env, "controller_runtime_reconcile_total", result=result)
        for result in ("success", "error", "requeue", "requeue_after")
    )


@pytest.mark.reconcile_timeout(0.5)
@pytest.mark.emulator
async def test_a_reconcile_out_of_time_says_so_on_the_workload(env: Env) -> None:
    """A reconcile timeout used to cancel the status write with the rest: nothing landed on the object."""
    env.api.faults.add(FaultRule(method="POST", path="/images$", status=0, latency=3.0))
    workload = await env.create_workload(env.workload_body())
    name = workload["metadata"]["name"]
    ready = await eventually(
        lambda: env.condition(name, k.READY),
        until=lambda c: c is not None and c["status"] == "False",
        what="Ready=False saying the reconcile ran out of time",
    )
    assert "ran out of time" in ready["message"]
