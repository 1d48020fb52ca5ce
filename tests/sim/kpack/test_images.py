"""The Image reconciler against the running simulator: Builds as kpack creates them (names, labels,
annotations, owner, tags, lastBuild), the Image status walk of kpack.md §3.5, what triggers a build and
what does not, the additionalBuildNeeded trigger, a stack update's STACK rebuild, history limits, builder
problems, and the knob that makes kpack skip a build (the case Korifi's recovery handles)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from simcluster.kpack import KpackSimulator
from simcluster.kpack.apis import SOURCE_RESOLVER_RESOURCE as SOURCE_RESOLVER
from simcluster.kpack.refs import digest_of
from tests.sim.kpack.conftest import CLUSTER_BUILDER, NS, PACKAGE, Obj, condition, eventually, image

pytestmark = pytest.mark.anyio

BUILD_TAG = re.compile(r"^registry\.example\.com/cf/app-droplets:b(\d+)\.\d{8}\.\d{6}$")
KORIFI_LABEL = "korifi.cloudfoundry.org/build-workload-name"


def ready(obj: Obj) -> tuple[str, str, str]:
    c = condition(obj, "Ready")
    return c.get("status", ""), c.get("reason", ""), c.get("message", "")


async def get_image(client: KubeClient, name: str = "app") -> Obj:
    return await client.get(r.IMAGE, name, NS)


async def wait_image(client: KubeClient, check: Any, name: str = "app", what: str = "") -> Obj:
    return await eventually(lambda: get_image(client, name), until=check, what=what or f"image {name}")


async def builds_of(client: KubeClient, name: str = "app") -> list[Obj]:
    items, _ = await client.list_all(r.BUILD, NS, label_selector=f"image.kpack.io/image={name}")
    return sorted(items, key=lambda b: int(b["metadata"]["labels"]["image.kpack.io/buildNumber"]))


def succeeded(b: Obj) -> str:
    return condition(b, "Succeeded").get("status", "")


def up_to_date(generation: int, build_generation: int | None = None) -> Any:
    def check(img: Obj) -> bool:
        status = img.get("status") or {}
        return (
            ready(img)[0] == "True"
            and status.get("observedGeneration") == generation
            and (build_generation is None or status.get("latestBuildImageGeneration") == build_generation)
        )

    return check


@asynccontextmanager
async def ready_history(client: KubeClient, name: str = "app") -> AsyncIterator[list[tuple[str, str, str]]]:
    """Every distinct Ready condition the Image goes through while the block runs (from a watch)."""
    seen: list[tuple[str, str, str]] = []

    async def watch() -> None:
        async with client.watch(r.IMAGE, NS, field_selector=f"metadata.name={name}") as stream:
            async for _, obj in stream:
                state = ready(obj)
                if state[0] and (not seen or seen[-1] != state):
                    seen.append(state)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        yield seen
        tg.cancel_scope.cancel()


async def test_an_image_gets_build_1_and_its_status_walks_to_up_to_date(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    body = image(labels={KORIFI_LABEL: "bw-1"}, build={"env": [{"name": "BP_X", "value": "1"}]})
    body["metadata"]["annotations"] = {"sim.kpack.io/build-seconds": "0.3", "team": "a"}
    async with ready_history(client) as history:
        created = await client.create(r.IMAGE, body)
        done = await wait_image(client, up_to_date(1))
        # The watch may deliver the last change after the GET that saw it: wait for it there too.
        await eventually(lambda: history[-1:] == [("True", "UpToDate", "")], what="the watch sees UpToDate")
    assert history[0] == ("Unknown", "ResolverNotReady", "Error: SourceResolver 'app-source' is not ready")
    assert ("Unknown", "BuildRunning", "Build 'app-build-1' is executing") in history
    assert ("Unknown", "BuildRunning", "Container prepare waiting") in history  # the running Build's message
    assert history[-1] == ("True", "UpToDate", "")

    [build] = await builds_of(client)
    meta = build["metadata"]
    assert meta["name"] == "app-build-1"
    assert meta["labels"] == {
        KORIFI_LABEL: "bw-1",
        "image.kpack.io/buildNumber": "1",
        "image.kpack.io/image": "app",
        "image.kpack.io/imageGeneration": "1",
    }
    annotations = meta["annotations"]
    assert annotations["team"] == "a" and annotations["image.kpack.io/reason"] == "CONFIG"
    assert annotations["image.kpack.io/builderName"] == CLUSTER_BUILDER
    assert annotations["image.kpack.io/builderKind"] == "ClusterBuilder"
    assert orjson.loads(annotations["image.kpack.io/buildChanges"]) == [
        {
            "reason": "CONFIG",
            "old": {"resources": {}, "source": {}},
            "new": {
                "env": [{"name": "BP_X", "value": "1"}],
                "resources": {},
                "source": {"registry": {"image": PACKAGE}},
            },
        }
    ]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kpack.io/v1alpha2",
            "kind": "Image",
            "name": "app",
            "uid": created["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = build["spec"]
    assert spec["tags"][0] == "registry.example.com/cf/app-droplets"
    assert BUILD_TAG.match(spec["tags"][1]) and BUILD_TAG.match(spec["tags"][1])[1] == "1"  # type: ignore[index]
    cb = await client.get(r.CLUSTER_BUILDER, CLUSTER_BUILDER)
    assert spec["builder"] == {"image": cb["status"]["latestImage"]}
    assert spec["runImage"] == {"image": cb["status"]["stack"]["runImage"]}
    assert spec["cache"] == {"volume": {"persistentVolumeClaimName": "app-cache"}}
    assert spec["serviceAccountName"] == "kpack-service-account" and "lastBuild" not in spec

    bstatus = build["status"]
    assert bstatus["podName"] == "app-build-1-build-pod"
    assert bstatus["stepsCompleted"] == [
        "prepare",
        "analyze",
        "detect",
        "restore",
        "build",
        "export",
        "completion",
    ]
    assert bstatus["lifecycleVersion"] == cb["status"]["lifecycle"]["version"]
    assert digest_of(bstatus["stack"]["runImage"]) == digest_of(cb["status"]["stack"]["runImage"])
    known = {(m["id"], m["version"]) for m in cb["status"]["builderMetadata"]}
    assert bstatus["buildMetadata"] and all(
        (m["id"], m["version"]) in known for m in bstatus["buildMetadata"]
    )
    assert re.fullmatch(r"registry\.example\.com/cf/app-droplets@sha256:[0-9a-f]{64}", bstatus["latestImage"])

    status = done["status"]
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "observedGeneration": 1,
        "latestBuildRef": "app-build-1",
        "latestBuildImageGeneration": 1,
        "latestImage": bstatus["latestImage"],
        "latestStack": "io.buildpacks.stacks.jammy",
        "buildCounter": 1,
        "buildCacheName": "app-cache",
        "latestBuildReason": "CONFIG",
    }
    assert [(c["type"], c["status"], c.get("reason")) for c in status["conditions"]] == [
        ("Ready", "True", "UpToDate"),
        ("BuilderReady", "True", "BuilderReady"),
        ("BuilderUpToDate", "True", "BuilderUpToDate"),
    ]
    resolver = await client.get(SOURCE_RESOLVER, "app-source", NS)
    assert resolver["spec"] == {
        "serviceAccount": "kpack-service-account",
        "source": {"registry": {"image": PACKAGE}},
    }
    assert resolver["metadata"]["labels"] == {KORIFI_LABEL: "bw-1"}
    assert [(c["type"], c["status"], c["lastTransitionTime"]) for c in resolver["status"]["conditions"]] == [
        ("Ready", "True", None),
        ("ActivePolling", "False", None),
    ]


async def test_a_failed_build(kpack: KpackSimulator, client: KubeClient) -> None:
    body = image()
    body["metadata"]["annotations"] = {"sim.kpack.io/fail": "true"}
    await client.create(r.IMAGE, body)
    failed = await wait_image(client, lambda i: ready(i)[0] == "False")
    [build] = await builds_of(client)
    message = (
        "Error:  Container build terminated with error ERROR: failed to build: exit status 1: For more info use "
        "`kubectl logs -n cf app-build-1-build-pod -c build`"
    )
    assert condition(build, "Succeeded") | {"lastTransitionTime": None} == {
        "type": "Succeeded",
        "status": "False",
        "reason": "Failed",
        "message": message,
        "lastTransitionTime": None,
    }
    status = build["status"]
    assert status["stepsCompleted"] == ["prepare", "analyze", "detect", "restore"]
    assert status["stepStates"][4]["terminated"]["exitCode"] == 51
    assert status["stepStates"][4]["terminated"]["message"] == "Container build terminated with error"
    assert status["stepStates"][5] == {
        "waiting": {"reason": "PodInitializing", "message": "Container export waiting"}
    }
    assert (status["stack"], status["lifecycleVersion"], "latestImage" in status) == ({}, "", False)
    assert ready(failed) == (
        "False",
        "BuildFailed",
        f"Error: Build 'app-build-1' in namespace 'cf' failed: {message}",
    )
    assert "latestStack" not in failed["status"] and "latestImage" not in failed["status"]  # "" is omitted

    detect = image("det")
    detect["metadata"]["annotations"] = {"sim.kpack.io/fail": "detect"}
    await client.create(r.IMAGE, detect)
    await wait_image(client, lambda i: ready(i)[0] == "False", "det")
    [build] = await builds_of(client, "det")
    assert build["status"]["stepsCompleted"] == ["prepare", "analyze"]
    assert build["status"]["stepStates"][2]["terminated"]["exitCode"] == 20


async def test_a_triggering_change_builds_again_and_a_non_triggering_one_does_not(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    await client.create(r.IMAGE, image())
    first = await wait_image(client, up_to_date(1, 1))
    await client.merge_patch(r.IMAGE, "app", {"spec": {"build": {"env": [{"name": "A", "value": "2"}]}}}, NS)
    second = await wait_image(client, up_to_date(2, 2))
    builds = await builds_of(client)
    assert [b["metadata"]["name"] for b in builds] == ["app-build-1", "app-build-2"]
    b2 = builds[1]
    assert b2["metadata"]["labels"]["image.kpack.io/imageGeneration"] == "2"
    assert b2["metadata"]["annotations"]["image.kpack.io/reason"] == "CONFIG"
    assert b2["spec"]["lastBuild"] == {
        "image": first["status"]["latestImage"],
        "cache": {},
        "stackId": "io.buildpacks.stacks.jammy",
    }
    assert (
        second["status"]["buildCounter"] == 2
        and second["status"]["latestImage"] == b2["status"]["latestImage"]
    )

    await client.merge_patch(r.IMAGE, "app", {"spec": {"serviceAccountName": "other"}}, NS)
    third = await wait_image(client, up_to_date(3))
    assert third["status"]["latestBuildImageGeneration"] == 2  # observed, not built
    assert third["status"]["latestBuildRef"] == "app-build-2"
    assert len(await builds_of(client)) == 2


async def test_additional_build_needed_makes_exactly_one_more_build(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    await client.create(r.IMAGE, image())
    await wait_image(client, up_to_date(1, 1))
    await client.merge_patch(
        r.BUILD,
        "app-build-1",
        {"metadata": {"annotations": {"image.kpack.io/additionalBuildNeeded": "true"}}},
        NS,
    )
    await wait_image(client, lambda i: up_to_date(1)(i) and i["status"]["latestBuildRef"] == "app-build-2")
    # One more reconcile after build 2, for certain: a change that triggers nothing.
    await client.merge_patch(r.IMAGE, "app", {"spec": {"serviceAccountName": "other"}}, NS)
    await wait_image(client, up_to_date(2))
    builds = await builds_of(client)
    assert [b["metadata"]["name"] for b in builds] == ["app-build-1", "app-build-2"]
    b2 = builds[1]
    assert b2["metadata"]["annotations"]["image.kpack.io/reason"] == "TRIGGER"
    assert b2["metadata"]["labels"]["image.kpack.io/imageGeneration"] == "1"
    [change] = orjson.loads(b2["metadata"]["annotations"]["image.kpack.io/buildChanges"])
    assert change["old"] == "" and change["new"].startswith("A new build was manually triggered on ")
    assert "image.kpack.io/additionalBuildNeeded" not in b2["metadata"]["annotations"]


async def test_a_stack_update_rebuilds_with_reason_stack(kpack: KpackSimulator, client: KubeClient) -> None:
    await client.create(r.IMAGE, image())
    first = await wait_image(client, up_to_date(1, 1))
    await kpack.update_stack("cf-default-stack", "paketobuildpacks/run-jammy-full:0.1.2")
    done = await wait_image(client, lambda i: up_to_date(1)(i) and i["status"]["buildCounter"] == 2)
    builds = await builds_of(client)
    b2 = builds[1]
    assert b2["metadata"]["annotations"]["image.kpack.io/reason"] == "STACK"
    assert b2["metadata"]["labels"]["image.kpack.io/imageGeneration"] == "1"  # same image generation
    new_digest = digest_of("paketobuildpacks/run-jammy-full:0.1.2")
    [change] = orjson.loads(b2["metadata"]["annotations"]["image.kpack.io/buildChanges"])
    assert change == {
        "reason": "STACK",
        "old": digest_of("paketobuildpacks/run-jammy-full"),
        "new": new_digest,
    }
    assert b2["status"]["stepsCompleted"] == ["rebase", "completion"]  # STACK only, same stack id: a rebase
    assert digest_of(b2["status"]["stack"]["runImage"]) == new_digest
    assert done["status"]["latestBuildImageGeneration"] == 1
    assert done["status"]["latestImage"] != first["status"]["latestImage"]


async def test_history_limits_prune_the_oldest_finished_builds(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    await client.create(r.IMAGE, image(successBuildHistoryLimit=1, failedBuildHistoryLimit=1))
    await wait_image(client, up_to_date(1, 1))
    for n in (2, 3):
        await client.merge_patch(
            r.IMAGE, "app", {"spec": {"build": {"env": [{"name": "N", "value": str(n)}]}}}, NS
        )
        await wait_image(client, up_to_date(n, n))
    names = await eventually(
        lambda: builds_of(client), until=lambda bs: len(bs) == 1, what="one successful build kept"
    )
    assert [b["metadata"]["name"] for b in names] == ["app-build-3"]


async def test_builder_not_found_and_not_ready(kpack: KpackSimulator, client: KubeClient) -> None:
    await client.create(r.IMAGE, image("lost", builder={"kind": "ClusterBuilder", "name": "nope"}))
    lost = await wait_image(client, lambda i: ready(i)[0] == "False", "lost")
    assert [c["type"] for c in lost["status"]["conditions"]] == ["Ready"]
    assert ready(lost) == (
        "False",
        "BuilderNotFound",
        "Error: Unable to find builder 'nope' in namespace ''.",
    )

    await client.create(
        r.CLUSTER_BUILDER,
        {
            "apiVersion": "kpack.io/v1alpha2",
            "kind": "ClusterBuilder",
            "metadata": {"name": "stuck", "annotations": {"sim.kpack.io/never-ready": "true"}},
            "spec": {
                "tag": "registry.example.com/cf/b",
                "serviceAccountRef": {"name": "kpack-service-account", "namespace": NS},
                "stack": {"kind": "ClusterStack", "name": "cf-default-stack"},
            },
        },
    )
    await client.create(r.IMAGE, image("waiting", builder={"kind": "ClusterBuilder", "name": "stuck"}))
    waiting = await wait_image(client, lambda i: ready(i)[1] == "BuilderNotReady", "waiting")
    message = "Error: Builder 'stuck' is not ready in namespace ''; Message: Builder has no latestImage"
    assert [
        (c["type"], c["status"], c.get("reason"), c.get("message")) for c in waiting["status"]["conditions"]
    ] == [
        ("Ready", "False", "BuilderNotReady", message),
        ("BuilderReady", "False", "BuilderNotReady", message),
        (
            "BuilderUpToDate",
            "False",
            "BuilderNotUpToDate",
            "Builder is not up to date. The latest stack and buildpacks may not be in use.",
        ),
    ]
    assert await builds_of(client, "waiting") == []


async def test_a_skipped_build_is_recovered_by_the_trigger(kpack: KpackSimulator, client: KubeClient) -> None:
    """kpack observes generation 2 without building it; Korifi's recovery (additionalBuildNeeded on the last
    Build) then gets the build, for generation 2."""
    body = image()
    body["metadata"]["annotations"] = {"sim.kpack.io/skip-build-generation": "2"}
    await client.create(r.IMAGE, body)
    await wait_image(client, up_to_date(1, 1))
    await client.merge_patch(r.IMAGE, "app", {"spec": {"build": {"env": [{"name": "A", "value": "1"}]}}}, NS)
    skipped = await wait_image(client, up_to_date(2))
    assert skipped["status"]["latestBuildImageGeneration"] == 1 and len(await builds_of(client)) == 1
    await client.merge_patch(
        r.BUILD,
        "app-build-1",
        {"metadata": {"annotations": {"image.kpack.io/additionalBuildNeeded": "true"}}},
        NS,
    )
    recovered = await wait_image(client, up_to_date(2, 2))
    assert recovered["status"]["latestBuildReason"] == "TRIGGER,CONFIG"

    await client.create(r.IMAGE, image("other"))
    await wait_image(client, up_to_date(1, 1), "other")
    kpack.skip_next_build(NS, "other")
    await client.merge_patch(
        r.IMAGE, "other", {"spec": {"build": {"env": [{"name": "A", "value": "1"}]}}}, NS
    )
    skipped = await wait_image(client, up_to_date(2), "other")
    assert skipped["status"]["latestBuildImageGeneration"] == 1


async def test_a_git_source_resolves_to_a_commit_and_a_new_revision_is_a_commit_build(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    await client.create(
        r.IMAGE, image(source={"git": {"url": "https://github.com/x/app", "revision": "main"}})
    )
    await wait_image(client, up_to_date(1, 1))
    resolver = await client.get(SOURCE_RESOLVER, "app-source", NS)
    git = resolver["status"]["source"]["git"]
    assert git["type"] == "Branch" and re.fullmatch("[0-9a-f]{40}", git["revision"])
    assert condition(resolver, "ActivePolling")["status"] == "True"
    await client.merge_patch(r.IMAGE, "app", {"spec": {"source": {"git": {"revision": "dev"}}}}, NS)
    await wait_image(client, up_to_date(2, 2))
    b2 = (await builds_of(client))[1]
    assert b2["metadata"]["annotations"]["image.kpack.io/reason"] == "COMMIT"
    assert b2["spec"]["source"]["git"]["revision"] != git["revision"]


async def test_long_image_names_get_knatives_hashed_child_names(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    name = "app-" + "x" * 56  # 60 characters: "<name>-build-1" would be too long
    await client.create(r.IMAGE, image(name))
    done = await wait_image(client, up_to_date(1, 1), name)
    digest = hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()
    assert done["status"]["latestBuildRef"] == name[:23] + digest + "-build-1"
    assert done["status"]["buildCacheName"] == name[:25] + digest + "-cache"
    assert (await client.get(SOURCE_RESOLVER, name[:24] + digest + "-source", NS))["metadata"][
        "ownerReferences"
    ]
