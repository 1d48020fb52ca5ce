"""Deletion of workloads and kpack Builds, and the finalizers the controllers add in place of Korifi's
webhook (korifi.md §4.3 G, J, K: behaviours 41-42, 56-62; untested path U5)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from service.kube import resources as r
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload import finalize
from service.reconcilers.kpackbuild import KpackBuildReconciler, acted_on
from service.registry.errors import NotFound as ImageNotFound
from service.runtime import changed
from service.runtime.clock import FakeClock
from simcluster.faults import FaultRule
from tests.helpers import consistently, eventually, server_clock_skewed
from tests.reconcilers.conftest import APP_GUID, SERVICE_ACCOUNT, Env

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]


async def finalizers(env: Env, resource: r.Resource, name: str) -> list[str]:
    obj = await env.get(resource, name)
    return list(((obj or {}).get("metadata") or {}).get("finalizers") or [])


async def labelled_workload(env: Env) -> Obj:
    workload = await env.create_workload(env.workload_body())
    await env.generation_label(workload["metadata"]["name"])
    return await env.workload(workload["metadata"]["name"])


# ------------------------------------------------------------------------------ K: finalizers
async def test_our_workloads_get_the_finalizer_and_foreign_ones_do_not(env: Env) -> None:
    """Behaviours 59-60."""
    ours = await env.create_workload(env.workload_body())
    foreign = await env.create_workload(env.workload_body(builderName="another-image-builder"))
    assert await eventually(lambda: finalizers(env, r.BUILD_WORKLOAD, ours["metadata"]["name"])) == [
        k.BUILD_WORKLOAD_FINALIZER
    ]
    assert await finalizers(env, r.BUILD_WORKLOAD, foreign["metadata"]["name"]) == []


async def test_builds_for_a_workload_get_the_finalizer_and_others_do_not(env: Env) -> None:
    """Behaviours 61-62."""
    await env.build("ours", "1", labels={k.BUILD_WORKLOAD_LABEL: "my-build-workload"})
    await env.build("theirs", "1", image="someone-elses-image")
    assert await eventually(lambda: finalizers(env, r.BUILD, "ours")) == [k.KPACK_BUILD_FINALIZER]
    await consistently(lambda: _equals(finalizers(env, r.BUILD, "theirs"), []), 0.5, "no finalizer")


async def test_a_build_written_by_kpack_at_once_gets_its_finalizer_in_one_write(env: Env) -> None:
    """kpack writes a new Build's status right after creating it, so the status's watch event often reaches
    the controller between its finalizer write and that write's own event. The controller waits for its
    write to show rather than patching again from the older state: such a patch fails its test of the
    finalizers (422) and the reconcile is retried as a conflict — about 0.4 wasted requests per Build in
    benchmarks/converge.py before this."""
    reconciles = env.manager.metrics.reconcile_total
    names = [f"build-{i}" for i in range(20)]
    for name in names:
        await env.build(name, "1", labels={k.BUILD_WORKLOAD_LABEL: name}, status={"podName": f"{name}-pod"})

    async def settled() -> bool:
        held = [await finalizers(env, r.BUILD, name) for name in names]
        depth = env.manager.metrics.depth.labels("kpackbuild", "kpackbuild", "").value
        active = env.manager.metrics.active_workers.labels("kpackbuild").value
        return all(h == [k.KPACK_BUILD_FINALIZER] for h in held) and depth == 0 and active == 0

    await eventually(settled, what="every Build holding its finalizer, the controller idle")
    assert reconciles.labels("kpackbuild", "requeue").value == 0  # no finalizer patch refused
    assert reconciles.labels("kpackbuild", "error").value == 0


async def test_only_what_the_build_controller_acts_on_brings_it_back(env: Env) -> None:
    """The Build controller acts on a Build made for a workload that lacks its finalizer, or one being
    deleted that holds it. kpack's status writes to a running Build, and the arrival of its own finalizer
    in the cache, are not reconciles (``wanted`` and ``changed(acted_on)``); the deletion is."""
    builds = env.manager.informers.lister(r.BUILD)
    adds = env.manager.metrics.adds.labels("kpackbuild", "kpackbuild")

    def cached() -> Obj:
        build = builds.get(env.namespace, "busy")
        return build if build is not None else {"metadata": {}}

    before = adds.value
    await env.build("busy", "1", labels={k.BUILD_WORKLOAD_LABEL: "busy"})
    # The informer tells its handlers in the same step as it stores an object: once the cache shows a
    # write, the controller has been told of it (or not).
    await eventually(
        lambda: k.KPACK_BUILD_FINALIZER in (cached()["metadata"].get("finalizers") or ()),
        what="the finalizer in the cache",
    )
    assert adds.value == before + 1  # the Build's creation alone
    for step in range(3):
        rv = (await env.set_status(r.BUILD, "busy", {"podName": f"pod-{step}"}))["metadata"][
            "resourceVersion"
        ]
        await eventually(lambda rv=rv: cached()["metadata"].get("resourceVersion") == rv, what="the write")
    assert adds.value == before + 1
    await env.client.delete(r.BUILD, "busy", env.namespace)
    await eventually(lambda: _gone(env, r.BUILD, "busy"), what="the Build released and gone")
    assert adds.value > before + 1


def test_a_build_made_again_under_its_name_is_a_change() -> None:
    """The filter's view of a Build holds its uid: a Build deleted and made again while the watch was
    broken (the relist compares the two) is looked at, though its finalizers look the same."""
    labels = {k.BUILD_WORKLOAD_LABEL: "w"}
    old = {"metadata": {"name": "b", "uid": "1", "resourceVersion": "5", "labels": labels}}
    again = {"metadata": {"name": "b", "uid": "2", "resourceVersion": "9", "labels": labels}}
    later = {"metadata": {"name": "b", "uid": "1", "resourceVersion": "7", "labels": labels}}
    assert changed(acted_on).update(old, again)
    assert not changed(acted_on).update(old, later)


def test_finalizer_writes_awaited_past_their_time_are_forgotten() -> None:
    """Their own watch event no longer brings a reconcile to pop them (the Build is not ``wanted`` once
    it holds the finalizer): without this, one entry per Build would stay for the Build's lifetime."""
    manager = SimpleNamespace(
        client=None, clock=FakeClock(), informers=SimpleNamespace(lister=lambda _: None)
    )
    reconciler = KpackBuildReconciler(manager, None, None, None)  # type: ignore[arg-type]
    reconciler._added = {("ns", "old"): ("uid-1", 10.0), ("ns", "also-due"): ("uid-2", 12.0)}
    reconciler._added[("ns", "new")] = ("uid-3", 30.0)
    reconciler._forget_expired(20.0)
    assert list(reconciler._added) == [("ns", "new")]
    reconciler._forget_expired(5.0)
    assert list(reconciler._added) == [("ns", "new")]


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


# ------------------------------------------------------------------------------ G: workload deletion
async def test_deleting_the_last_workload_of_a_generation_deletes_its_builds(env: Env) -> None:
    """Behaviour 41."""
    workload = await labelled_workload(env)
    name = workload["metadata"]["name"]
    await env.build("build", "1", labels={k.APP_GUID_LABEL: APP_GUID, k.BUILD_WORKLOAD_LABEL: name})
    await eventually(lambda: finalizers(env, r.BUILD, "build"), what="the Build holds its finalizer")
    await env.client.delete(r.BUILD_WORKLOAD, name, env.namespace)
    await eventually(lambda: _gone(env, r.BUILD, "build"), what="the Build is deleted")
    await eventually(lambda: _gone(env, r.BUILD_WORKLOAD, name), what="then the workload")


async def _gone(env: Env, resource: r.Resource, name: str) -> bool:
    return await env.get(resource, name) is None


async def test_builds_shared_with_another_workload_of_the_generation_are_kept(env: Env) -> None:
    """Behaviour 42."""
    workload = await labelled_workload(env)
    other = await env.create_workload(env.workload_body())
    assert await env.generation_label(other["metadata"]["name"]) == "1"  # same spec, same Image generation
    await env.build("build", "1")
    await env.client.delete(r.BUILD_WORKLOAD, workload["metadata"]["name"], env.namespace)
    await eventually(lambda: _gone(env, r.BUILD_WORKLOAD, workload["metadata"]["name"]), what="workload gone")
    await consistently(lambda: _present(env, r.BUILD, "build"), 1.0, "the shared Build stays")


async def _present(env: Env, resource: r.Resource, name: str) -> bool:
    return await env.get(resource, name) is not None


async def test_finalizing_waits_for_builds_held_by_someone_else(env: Env) -> None:
    """U5: Builds still present after the delete-collection keep the workload until they are gone."""
    workload = await labelled_workload(env)
    name = workload["metadata"]["name"]
    await env.build("build", "1")
    held = await env.get(r.BUILD, "build")
    assert held is not None
    await env.client.merge_patch(
        r.BUILD, "build", {"metadata": {"finalizers": ["example.com/hold"]}}, env.namespace
    )
    await env.client.delete(r.BUILD_WORKLOAD, name, env.namespace)

    async def build_deleting() -> bool:
        build = await env.get(r.BUILD, "build")
        return bool(build and build["metadata"].get("deletionTimestamp"))

    await eventually(build_deleting, what="the Build is being deleted")
    await consistently(lambda: _present(env, r.BUILD_WORKLOAD, name), 1.0, "the workload waits")
    await env.client.merge_patch(r.BUILD, "build", {"metadata": {"finalizers": None}}, env.namespace)
    await eventually(
        lambda: _gone(env, r.BUILD_WORKLOAD, name), what="the workload goes once the Build is gone"
    )


async def deleted_with_a_build_finalizer_refused(env: Env) -> tuple[str, FaultRule]:
    """A workload with a Build of its generation ("build") whose finalizer's write the API refuses, then
    deleted; the workload's name and the refusing rule."""
    workload = await labelled_workload(env)
    name = workload["metadata"]["name"]
    refused = env.api.faults.add(FaultRule(method="PATCH", path="/builds/build$", status=500))
    await env.build("build", "1", labels={k.APP_GUID_LABEL: APP_GUID, k.BUILD_WORKLOAD_LABEL: name})
    await eventually(lambda: refused.hits > 0, what="the finalizer's write is refused")
    await env.client.delete(r.BUILD_WORKLOAD, name, env.namespace)
    return name, refused


@pytest.mark.emulator
async def test_finalizing_waits_until_every_build_of_the_generation_holds_its_finalizer(env: Env) -> None:
    """A Build the kpack Build controller has not yet given its finalizer (kpack made it while no leader
    ran; here its write is refused) would be deleted at once, and a build pushing at that moment would
    leave its droplet with nothing to delete it: the chaos soak's leaked droplet. The workload waits."""
    name, refused = await deleted_with_a_build_finalizer_refused(env)

    async def both_there_and_the_build_untouched() -> bool:
        build = await env.get(r.BUILD, "build")
        live = build is not None and not build["metadata"].get("deletionTimestamp")
        return live and await _present(env, r.BUILD_WORKLOAD, name)

    await consistently(both_there_and_the_build_untouched, 1.5, "the workload waits for the finalizer")
    refused.count = refused.hits  # the API takes the finalizer's write again
    await eventually(lambda: _gone(env, r.BUILD, "build"), what="the Build, held, then released")
    await eventually(lambda: _gone(env, r.BUILD_WORKLOAD, name), what="then the workload")


@pytest.mark.emulator
async def test_the_wait_for_a_builds_finalizer_is_bounded(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finalizer that can never be written (the Build controller's patch refused for good) must not
    hold the app's deletion for ever: past the bound the workload lets go, and a Warning Event names the
    Build whose droplet may stay."""
    monkeypatch.setattr(finalize, "FINALIZER_WAIT_LIMIT", 2.0)
    name, _ = await deleted_with_a_build_finalizer_refused(env)
    await consistently(
        lambda: _present(env, r.BUILD_WORKLOAD, name), 0.8, "the workload waits for the finalizer first"
    )
    await eventually(lambda: _gone(env, r.BUILD_WORKLOAD, name), what="then lets go")
    await eventually(lambda: _gone(env, r.BUILD, "build"), what="the Build, deleted without its finalizer")

    async def warned() -> list[dict[str, Any]]:
        items = (await env.client.list(r.EVENT, env.namespace))["items"]
        return [e for e in items if e["reason"] == k.BUILD_FINALIZER_MISSING]

    [event] = await eventually(warned, what="a BuildFinalizerMissing Warning")
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == name
    assert "kpack Build build still without" in event["message"], event["message"]


@pytest.mark.emulator
async def test_the_wait_for_a_builds_finalizer_is_counted_by_the_servers_clock(env: Env) -> None:
    """A control plane whose clock is an hour behind the controller's stamps a deletion that this machine
    reads as an hour old: timed by the machine's clock, the five-minute wait would be over before it
    began, and the droplet of a build that pushes meanwhile left behind. The service reads the server's
    clock from its answers, so the workload still waits."""
    assert env.api is not None
    async with server_clock_skewed(env.client, -3600):
        name, refused = await deleted_with_a_build_finalizer_refused(env)
        await consistently(
            lambda: _present(env, r.BUILD_WORKLOAD, name), 1.5, "the workload waits for the finalizer"
        )
        refused.count = refused.hits  # the API takes the finalizer's write again
        await eventually(lambda: _gone(env, r.BUILD_WORKLOAD, name), what="then goes, its Build with it")
    events = (await env.client.list(r.EVENT, env.namespace))["items"]
    assert not [e for e in events if e["reason"] == k.BUILD_FINALIZER_MISSING]


# ------------------------------------------------------------------------------ J: Build deletion
async def pushed_build(env: Env, tags: list[str]) -> tuple[str, str]:
    """A Build labelled for a workload whose droplet was pushed under ``tags``; (Build name, image)."""
    repo = f"{env.registry.host}/droplets/{APP_GUID}"
    digest = await env.images.push_image(f"{repo}:{tags[0]}", {"config": {}}, [b"droplet"])
    for tag in tags[1:]:
        await env.images.push_image(f"{repo}:{tag}", {"config": {}}, [b"droplet"])
    image = f"{repo}@{digest}"
    build = {
        "apiVersion": k.KPACK_API_VERSION,
        "kind": "Build",
        "metadata": {
            "name": "foo",
            "namespace": env.namespace,
            "labels": {k.BUILD_WORKLOAD_LABEL: "anything"},
        },
        "spec": {"tags": [repo, f"{repo}:{tags[-1]}"]},
    }
    await env.create(r.BUILD, build)
    await env.set_status(r.BUILD, "foo", {"latestImage": image})
    await eventually(lambda: finalizers(env, r.BUILD, "foo"), what="the Build holds its finalizer")
    return "foo", image


async def test_deleting_a_build_deletes_its_droplet_tags(env: Env) -> None:
    """Behaviour 56, with a registry host that has a port (§6.15 done right)."""
    name, image = await pushed_build(env, ["latest", "bob"])
    assert ":" in env.registry.host  # 127.0.0.1:<port>: Korifi's split on ":" would get this wrong
    await env.client.delete(r.BUILD, name, env.namespace)
    await eventually(lambda: _gone(env, r.BUILD, name), what="the Build is released")
    with pytest.raises(ImageNotFound):
        await env.images.get_manifest(image)


async def test_a_build_without_an_image_is_released_without_registry_calls(env: Env) -> None:
    """Behaviour 57."""
    await env.build("foo", "1", labels={k.BUILD_WORKLOAD_LABEL: "anything"})
    await eventually(lambda: finalizers(env, r.BUILD, "foo"), what="finalizer")
    before = sum(env.registry.registry.requests.values())
    await env.client.delete(r.BUILD, "foo", env.namespace)
    await eventually(lambda: _gone(env, r.BUILD, "foo"), what="the Build is released")
    assert sum(env.registry.registry.requests.values()) == before


async def test_a_registry_failure_never_holds_the_build(env: Env) -> None:
    """Behaviour 58: the registry refuses deletions; the Build goes anyway."""
    name, image = await pushed_build(env, ["latest", "bob"])
    env.registry.registry.delete_enabled = False
    await env.client.delete(r.BUILD, name, env.namespace)
    await eventually(lambda: _gone(env, r.BUILD, name), what="the Build is released")
    assert await env.images.get_manifest(image)  # still there: only logged


async def test_without_the_builder_service_account_the_droplet_is_still_deleted(env: Env) -> None:
    """As k8schain: no service account means no credentials, not no attempt (the registry is open)."""
    name, image = await pushed_build(env, ["latest", "bob"])
    await env.client.delete(r.SERVICE_ACCOUNT, SERVICE_ACCOUNT, env.namespace)
    await env.client.delete(r.BUILD, name, env.namespace)
    await eventually(lambda: _gone(env, r.BUILD, name), what="the Build is released")
    with pytest.raises(ImageNotFound):
        await env.images.get_manifest(image)


async def test_a_build_deleted_while_its_pod_runs_is_stopped_and_what_it_pushed_is_deleted(env: Env) -> None:
    """Released at once (Korifi), a running Build's pod goes with it, but one already exporting pushes its
    droplet meanwhile, with no latestImage to find it by. The Build is stopped first (Succeeded=False,
    its pod deleted), and what the pod pushed is found by the Build's own build-number tag."""
    repo = f"{env.registry.host}/droplets/{APP_GUID}"
    own_tag = "b1.20261207.030411"
    digest = await env.images.push_image(repo, {"config": {}}, [b"exported"])
    await env.images.push_image(f"{repo}:{own_tag}", {"config": {}}, [b"exported"])
    build = {
        "apiVersion": k.KPACK_API_VERSION,
        "kind": "Build",
        "metadata": {"name": "foo", "namespace": env.namespace, "labels": {k.BUILD_WORKLOAD_LABEL: "any"}},
        "spec": {"tags": [repo, f"{repo}:{own_tag}"]},
    }
    await env.create(r.BUILD, build)
    running = {"type": k.SUCCEEDED, "status": "Unknown", "reason": "", "message": ""}
    await env.set_status(r.BUILD, "foo", {"podName": "foo-build-pod", "conditions": [running]})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "foo-build-pod", "namespace": env.namespace},
        "spec": {"containers": [{"name": "export", "image": "exporter"}]},
    }
    await env.create(r.POD, pod)
    await eventually(lambda: finalizers(env, r.BUILD, "foo"), what="the Build holds its finalizer")
    await env.client.delete(r.BUILD, "foo", env.namespace)

    async def stopped() -> bool:
        build = await env.get(r.BUILD, "foo")
        condition = next(iter(((build or {}).get("status") or {}).get("conditions") or []), {})
        return condition.get("status") == "False" and condition.get("reason") == k.BUILD_DELETED

    await eventually(stopped, what="the Build stopped, Succeeded=False with reason BuildDeleted")
    await eventually(lambda: _gone(env, r.POD, "foo-build-pod"), what="its pod deleted")
    await eventually(lambda: _gone(env, r.BUILD, "foo"), what="then the Build released")
    with pytest.raises(ImageNotFound):
        await env.images.get_manifest(f"{repo}@{digest}")


async def test_a_build_kpack_failed_is_released_without_registry_calls(env: Env) -> None:
    """Finished by kpack, a Build's status says what it pushed: a failed one, nothing to look for."""
    failed = {"type": k.SUCCEEDED, "status": "False", "reason": "", "message": "failed at build"}
    status = {"podName": "foo-build-pod", "conditions": [failed]}
    await env.build("foo", "1", labels={k.BUILD_WORKLOAD_LABEL: "anything"}, status=status)
    await eventually(lambda: finalizers(env, r.BUILD, "foo"), what="finalizer")
    before = sum(env.registry.registry.requests.values())
    await env.client.delete(r.BUILD, "foo", env.namespace)
    await eventually(lambda: _gone(env, r.BUILD, "foo"), what="the Build is released")
    assert sum(env.registry.registry.requests.values()) == before
