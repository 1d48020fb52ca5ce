"""The rebuilds kpack makes by itself when the builder under an Image changes (kpack.md §3.2 to §3.4): a new
run image on the ClusterStack rebases every Image whose last build succeeded (``STACK``), a buildpack
leaving the builder rebuilds the Images that used it (``BUILDPACK``), both at once are one full build
(``BUILDPACK,STACK``); a failed last build and an added buildpack rebuild nothing; a rebase keeps the
buildpacks of the image it rebases."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from service.reconcilers.korifi import BUILD_METADATA_LABEL
from service.registry.client import RegistryClient
from simcluster.kpack import KpackSimulator, running_kpack
from simcluster.kpack.refs import digest_of
from simcluster.registry import RunningRegistry
from simcluster.server import RunningApiServer
from tests.sim.kpack.conftest import (
    CLUSTER_BUILDER,
    NS,
    Obj,
    builder_ready,
    condition,
    eventually,
    image,
    options,
)

pytestmark = pytest.mark.anyio

STACK = "cf-default-stack"
REASON = "image.kpack.io/reason"
CHANGES = "image.kpack.io/buildChanges"
NUMBER = "image.kpack.io/buildNumber"
JAVA = "paketo-buildpacks/java"


async def builds_of(client: KubeClient, name: str) -> list[Obj]:
    items, _ = await client.list_all(r.BUILD, NS, label_selector=f"image.kpack.io/image={name}")
    return sorted(items, key=lambda b: int(b["metadata"]["labels"][NUMBER]))


async def settled(client: KubeClient, name: str, builds: int) -> Obj:
    """The Image once it has ``builds`` Builds and the last one has finished."""

    async def check() -> Obj | None:
        img = await client.get(r.IMAGE, name, NS)
        status = img.get("status") or {}
        finished = condition(img, "Ready").get("status") in ("True", "False")
        return img if finished and status.get("buildCounter") == builds else None

    found: Obj = await eventually(check, what=f"image {name} finished build {builds}")
    return found


async def reconciled_again(client: KubeClient, name: str) -> Obj:
    """One more Image reconcile for certain (a change that triggers no build), so that what it did not do
    can be asserted."""
    img = await client.merge_patch(
        r.IMAGE, name, {"spec": {"additionalTags": [f"registry.example.com/cf/{name}:tagged"]}}, NS
    )
    generation = img["metadata"]["generation"]
    found: Obj = await eventually(
        lambda: client.get(r.IMAGE, name, NS),
        until=lambda i: (i.get("status") or {}).get("observedGeneration") == generation,
        what=f"image {name} reconciled at generation {generation}",
    )
    return found


async def change_order(client: KubeClient, order: list[Obj]) -> None:
    builder = await client.merge_patch(r.CLUSTER_BUILDER, CLUSTER_BUILDER, {"spec": {"order": order}})
    await eventually(
        lambda: builder_ready(client),
        until=lambda b: b["status"]["observedGeneration"] >= builder["metadata"]["generation"],
        what="the ClusterBuilder rebuilt",
    )


async def order_without(client: KubeClient, buildpack: str) -> tuple[list[Obj], list[Obj]]:
    """The ClusterBuilder's order without ``buildpack``'s group, and the whole order."""
    builder = await client.get(r.CLUSTER_BUILDER, CLUSTER_BUILDER)
    order = builder["spec"]["order"]
    return [g for g in order if g["group"][0]["id"] != buildpack], order


async def test_a_stack_update_rebases_every_image_whose_last_build_succeeded(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    failing = image("c")
    failing["metadata"]["annotations"] = {"sim.kpack.io/fail": "true"}
    for body in (image("a"), image("b"), failing):
        await client.create(r.IMAGE, body)
    before = {name: await settled(client, name, 1) for name in ("a", "b", "c")}
    assert condition(before["c"], "Ready")["status"] == "False"
    await kpack.update_stack(STACK, "paketobuildpacks/run-jammy-full:0.2.0")
    new_digest = digest_of("paketobuildpacks/run-jammy-full:0.2.0")
    for name in ("a", "b"):
        done = await settled(client, name, 2)
        first, rebase = await builds_of(client, name)
        assert rebase["metadata"]["annotations"][REASON] == "STACK"
        assert rebase["metadata"]["labels"]["image.kpack.io/imageGeneration"] == "1"
        assert rebase["spec"]["lastBuild"]["image"] == first["status"]["latestImage"]
        assert rebase["status"]["stepsCompleted"] == ["rebase", "completion"]
        assert digest_of(rebase["status"]["stack"]["runImage"]) == new_digest
        assert (
            done["status"]["latestImage"] == rebase["status"]["latestImage"] != first["status"]["latestImage"]
        )
    # kpack never rebuilds after a failure by itself (kpack.md §3.2): only TRIGGER, COMMIT, CONFIG can.
    assert (await reconciled_again(client, "c"))["status"]["buildCounter"] == 1
    assert len(await builds_of(client, "c")) == 1


@pytest.fixture
async def pushing(
    api: RunningApiServer, client: KubeClient, registry: RunningRegistry
) -> AsyncIterator[KpackSimulator]:
    """The simulator with its builds pushing to ``registry``."""
    async with running_kpack(api, options(registry=registry.host), seed=True) as sim:
        await builder_ready(client)
        yield sim


async def test_a_rebase_keeps_the_buildpacks_of_the_image_it_rebases(
    pushing: KpackSimulator, client: KubeClient, registry: RunningRegistry
) -> None:
    """Even when the builder would detect others now (a group put in front of the order rebuilds nothing):
    a rebase only swaps the run image under the app's layers."""
    await client.create(r.IMAGE, image("a", tag=f"{registry.host}/cf/a-droplets"))
    await settled(client, "a", 1)
    [first] = await builds_of(client, "a")
    _, whole = await order_without(client, JAVA)
    go = next(g for g in whole if g["group"][0]["id"] == "paketo-buildpacks/go")
    await change_order(client, [go, *(g for g in whole if g is not go)])
    await pushing.update_stack(STACK, "paketobuildpacks/run-jammy-full:0.4.0")
    await settled(client, "a", 2)
    _, rebase = await builds_of(client, "a")
    assert rebase["status"]["stepsCompleted"] == ["rebase", "completion"]
    assert rebase["status"]["buildMetadata"] == first["status"]["buildMetadata"]
    async with RegistryClient() as images:
        configs = [await images.image_config(b["status"]["latestImage"]) for b in (first, rebase)]
    labels = [orjson.loads(c.labels[BUILD_METADATA_LABEL]) for c in configs]
    assert labels[0] == labels[1] and labels[1]["buildpacks"] == first["status"]["buildMetadata"]


async def test_a_buildpack_leaving_the_builder_rebuilds_and_one_joining_it_does_not(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    await client.create(r.IMAGE, image("a"))
    await settled(client, "a", 1)
    [first] = await builds_of(client, "a")
    used = [{"id": m["id"], "version": m["version"]} for m in first["status"]["buildMetadata"]]
    assert JAVA in {m["id"] for m in used}  # detection takes the first group of the order
    without, whole = await order_without(client, JAVA)
    await change_order(client, without)
    await settled(client, "a", 2)
    _, rebuild = await builds_of(client, "a")
    assert rebuild["metadata"]["annotations"][REASON] == "BUILDPACK"
    builder = await client.get(r.CLUSTER_BUILDER, CLUSTER_BUILDER)
    kept = {(m["id"], m["version"]) for m in builder["status"]["builderMetadata"]}
    removed = sorted((m for m in used if (m["id"], m["version"]) not in kept), key=lambda m: m["id"])
    assert removed and orjson.loads(rebuild["metadata"]["annotations"][CHANGES]) == [
        {"reason": "BUILDPACK", "old": removed, "new": None}
    ]
    assert "rebase" not in rebuild["status"]["stepsCompleted"]  # a full build with the builder's buildpacks
    assert JAVA not in {m["id"] for m in rebuild["status"]["buildMetadata"]}

    await change_order(client, whole)  # java is back: buildpacks added to a builder never rebuild
    assert (await reconciled_again(client, "a"))["status"]["buildCounter"] == 2


async def test_a_stack_and_a_buildpack_update_together_are_one_full_build(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    """One change of the ClusterBuilder brings both: another stack (same id, another run image) and an order
    without the buildpack the app used."""
    await client.create(r.IMAGE, image("a"))
    await settled(client, "a", 1)
    stack = await client.get(r.CLUSTER_STACK, STACK)
    other = {
        "apiVersion": "kpack.io/v1alpha2",
        "kind": "ClusterStack",
        "metadata": {"name": f"{STACK}-patched"},
        "spec": {**stack["spec"], "runImage": {"image": "paketobuildpacks/run-jammy-full:0.3.0"}},
    }
    await client.create(r.CLUSTER_STACK, other)
    await eventually(
        lambda: client.get(r.CLUSTER_STACK, other["metadata"]["name"]),
        until=lambda s: condition(s, "Ready").get("status") == "True",
        what="the other ClusterStack ready",
    )
    without, _ = await order_without(client, JAVA)
    await client.merge_patch(
        r.CLUSTER_BUILDER,
        CLUSTER_BUILDER,
        {"spec": {"order": without, "stack": {"kind": "ClusterStack", "name": other["metadata"]["name"]}}},
    )
    await settled(client, "a", 2)
    _, rebuild = await builds_of(client, "a")
    assert rebuild["metadata"]["annotations"][REASON] == "BUILDPACK,STACK"  # kpack's fixed order
    assert [c["reason"] for c in orjson.loads(rebuild["metadata"]["annotations"][CHANGES])] == [
        "BUILDPACK",
        "STACK",
    ]
    assert "rebase" not in rebuild["status"]["stepsCompleted"]  # a rebase is for STACK alone
