"""Builders: the seeded ClusterBuilder as kpack reports a ready one (kpack.md §8.1), order resolution
(§6: sources, version choice, errors), and the status of a builder that fails, before or after it built."""

from __future__ import annotations

import re
from typing import Any

import anyio
import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from simcluster.kpack import KpackSimulator, install_webhooks, run_kpack_simulator, running_kpack
from simcluster.kpack.apis import CLUSTER_LIFECYCLE_RESOURCE
from simcluster.kpack.builders import BuilderError, Resolver, semver_key
from simcluster.kpack.refs import digest_of
from simcluster.kpack.simulator import LIFECYCLE_IMAGE
from simcluster.server import RunningApiServer
from tests.helpers import fast_client
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

PAKETO = "https://github.com/paketo-buildpacks/"


async def test_the_default_cluster_builder_is_ready_with_its_order_resolved(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    cb = await client.get(r.CLUSTER_BUILDER, CLUSTER_BUILDER)
    status = cb["status"]
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("Ready", "True"),
        ("UpToDate", "True"),
    ]
    assert status["observedGeneration"] == cb["metadata"]["generation"] == 1
    ref = "registry.example.com/cf/kpack-builder:clusterbuilder-cf-kpack-cluster-builder"
    assert re.fullmatch(re.escape(ref) + "@sha256:[0-9a-f]{64}", status["latestImage"])
    run_image = digest_of("paketobuildpacks/run-jammy-full")
    assert status["stack"] == {"id": "io.buildpacks.stacks.jammy", "runImage": f"{ref}-run-image@{run_image}"}
    assert status["order"] == [
        {"group": [{"id": f"paketo-buildpacks/{name}", "version": version}]}
        for name, version in (
            ("java", "18.5.0"),
            ("go", "4.13.0"),
            ("nodejs", "7.2.1"),
            ("ruby", "0.47.0"),
            ("procfile", "5.11.0"),
        )
    ]
    ids = {m["id"]: m for m in status["builderMetadata"]}
    assert ids["paketo-buildpacks/bellsoft-liberica"] == {
        "id": "paketo-buildpacks/bellsoft-liberica",
        "version": "11.0.2",
        "homepage": PAKETO + "bellsoft-liberica",
    }
    assert {"paketo-buildpacks/java", "paketo-buildpacks/node-engine", "paketo-buildpacks/go-build"} <= set(
        ids
    )
    lifecycle = status["lifecycle"]
    assert lifecycle["image"] == {} and lifecycle["version"] == "0.20.12"
    assert set(lifecycle["apis"]) == {"buildpack", "platform"}
    assert (status["os"], status["observedStackGeneration"], status["observedStoreGeneration"]) == (
        "linux",
        1,
        1,
    )
    stack = await client.get(r.CLUSTER_STACK, "cf-default-stack")
    assert stack["status"]["runImage"] == {
        "latestImage": f"index.docker.io/paketobuildpacks/run-jammy-full@{run_image}",
        "image": "paketobuildpacks/run-jammy-full",
    }
    lc = await client.get(CLUSTER_LIFECYCLE_RESOURCE, "default-lifecycle")
    assert [(c["type"], c["status"]) for c in lc["status"]["conditions"]] == [("Ready", "True")]
    assert lc["status"]["image"] == {
        "latestImage": LIFECYCLE_IMAGE,  # a digest reference resolves to its own digest
        "image": LIFECYCLE_IMAGE,
    }
    assert lc["status"]["version"] == "0.20.12" and lc["status"]["observedGeneration"] == 1
    assert (await client.get(r.BUILDER_INFO, "kpack-image-builder", NS))["spec"] == {}
    store = await client.get(r.CLUSTER_STORE, "cf-default-buildpacks")
    keys = [f"{b['id']}@{b['version']}" for b in store["status"]["buildpacks"]]
    assert keys == sorted(keys) and "paketo-buildpacks/maven@6.19.2" in keys
    java = next(b for b in store["status"]["buildpacks"] if b["id"] == "paketo-buildpacks/java")
    assert java["buildpackage"] == {
        "id": "paketo-buildpacks/java",
        "version": "18.5.0",
        "homepage": PAKETO + "java",
    }
    assert java["storeImage"] == {"image": "paketobuildpacks/java"} and java["order"][0]["group"][0][
        "id"
    ].endswith("bellsoft-liberica")


def bp_source(name: str, *entries: tuple[str, str], namespace: str | None = None) -> Obj:
    meta: Obj = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "metadata": meta,
        "status": {
            "buildpacks": [{"id": i, "version": v, "storeImage": {"image": name}} for i, v in entries]
        },
    }


def ref(bp_id: str = "", version: str = "", kind: str = "", name: str = "", image: str = "") -> Obj:
    return {"id": bp_id, "version": version, "kind": kind, "name": name, "image": image, "optional": False}


def resolver() -> Resolver:
    return Resolver(
        store=bp_source("store", ("a", "1.0.0"), ("b", "2.0.0"), ("c", "1.0")),
        buildpacks=[bp_source("ns-bp", ("a", "1.0.0"), ("b", "1.5.0"), ("c", "not-semver"), namespace=NS)],
        cluster_buildpacks=[bp_source("cbp", ("a", "1.0.0"), ("b", "2.0.0"))],
    )


@pytest.mark.parametrize(
    ("given", "source", "version"),
    [
        (ref("b"), "store", "2.0.0"),  # highest semver; ties go to the store, last in source order
        (ref("a"), "store", "1.0.0"),
        (ref("b", "1.5.0"), "ns-bp", "1.5.0"),  # pinned: first exact match, Buildpacks first
        (ref("a", "1.0.0"), "ns-bp", "1.0.0"),
        (ref("b", kind="ClusterBuildpack", name="cbp"), "cbp", "2.0.0"),
        (ref("a", kind="Buildpack", name="ns-bp"), "ns-bp", "1.0.0"),
    ],
)
def test_version_choice(given: Obj, source: str, version: str) -> None:
    chosen = resolver().resolve(given)
    assert (chosen["storeImage"]["image"], chosen["version"]) == (source, version)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (ref("zzz"), "could not find buildpack with id 'zzz'"),
        (ref("b", "9.9.9"), "could not find buildpack with id 'b' and version '9.9.9'"),
        (ref("c"), "cannot find buildpack 'c' with latest version due to invalid semver 'not-semver'"),
        (ref("a", kind="Buildpack", name="nope"), "buildpack not found: nope"),
        (ref("a", kind="ClusterBuildpack", name="nope"), "cluster buildpack not found: nope"),
        (ref(kind="ClusterBuildpack", name="nope"), "no cluster buildpack with name 'nope'"),
        (ref(kind="ClusterBuildpack", name="cbp"), "unexpected number of root buildpacks: 2"),
        (ref(kind="Stack", name="x"), "kind must be either Buildpack or ClusterBuildpack"),
        (ref(image="x"), "using images in builders not currently supported"),
        (ref(), "invalid buildpack reference"),
    ],
)
def test_resolution_errors(given: Obj, message: str) -> None:
    with pytest.raises(BuilderError) as info:
        resolver().resolve(given)
    assert str(info.value) == message


def test_semver_is_lenient_like_masterminds() -> None:
    assert semver_key("v1") == semver_key("1.0.0")
    assert semver_key("1.2") is not None and semver_key("1.2.3-rc.1") < semver_key("1.2.3")  # type: ignore[operator]
    assert semver_key("1.2.3.4") is None and semver_key("latest") is None


async def cluster_builder(client: KubeClient, name: str, *order: str, **extra: Any) -> Obj:
    body = {
        "apiVersion": "kpack.io/v1alpha2",
        "kind": "ClusterBuilder",
        "metadata": {"name": name, **extra.pop("metadata", {})},
        "spec": {
            "tag": "registry.example.com/cf/builder:v1",
            "serviceAccountRef": {"name": "kpack-service-account", "namespace": NS},
            "stack": {"kind": "ClusterStack", "name": "cf-default-stack"},
            "store": {"kind": "ClusterStore", "name": "cf-default-buildpacks"},
            "order": [{"group": [{"id": bp_id}]} for bp_id in order],
            **extra,
        },
    }
    return await client.create(r.CLUSTER_BUILDER, body)


async def builder_status(client: KubeClient, name: str, check: Any) -> Obj:
    return await eventually(
        lambda: client.get(r.CLUSTER_BUILDER, name), until=check, what=f"ClusterBuilder {name}"
    )


def up_to_date(status: str) -> Any:
    return lambda b: (
        condition(b, "UpToDate").get("status") == status
        and b["status"].get("observedGeneration") == b["metadata"]["generation"]
    )


async def test_a_builder_that_fails_after_building_keeps_its_image(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    await cluster_builder(client, "custom", "paketo-buildpacks/procfile")
    built = await builder_status(client, "custom", up_to_date("True"))
    assert built["status"]["latestImage"].startswith(
        "registry.example.com/cf/builder:v1@sha256:"
    )  # an explicit tag
    await client.merge_patch(
        r.CLUSTER_BUILDER, "custom", {"spec": {"order": [{"group": [{"id": "paketo-buildpacks/php"}]}]}}
    )
    failed = await builder_status(client, "custom", up_to_date("False"))
    assert condition(failed, "Ready")["status"] == "True"
    assert condition(failed, "UpToDate") | {"lastTransitionTime": None} == {
        "type": "UpToDate",
        "status": "False",
        "reason": "ReconcileFailed",
        "message": "could not find buildpack with id 'paketo-buildpacks/php'",
        "lastTransitionTime": None,
    }
    assert failed["status"]["latestImage"] == built["status"]["latestImage"]
    assert failed["status"]["order"] == built["status"]["order"]


async def test_a_builder_that_never_built_is_not_ready(kpack: KpackSimulator, client: KubeClient) -> None:
    await cluster_builder(
        client, "nostack", "paketo-buildpacks/procfile", stack={"kind": "ClusterStack", "name": "none"}
    )
    failed = await builder_status(client, "nostack", up_to_date("False"))
    assert [
        (c["type"], c["status"], c.get("reason"), c.get("message")) for c in failed["status"]["conditions"]
    ] == [
        ("Ready", "False", "NoLatestImage", "Builder has no latestImage"),
        ("UpToDate", "False", "ReconcileFailed", 'clusterstack.kpack.io "none" not found'),
    ]
    await cluster_builder(
        client, "nosa", "paketo-buildpacks/procfile", serviceAccountRef={"name": "missing", "namespace": NS}
    )
    failed = await builder_status(client, "nosa", up_to_date("False"))
    assert condition(failed, "UpToDate")["message"] == 'serviceaccounts "missing" not found'


async def test_the_never_ready_knob(kpack: KpackSimulator, client: KubeClient) -> None:
    await cluster_builder(
        client,
        "stuck",
        "paketo-buildpacks/procfile",
        metadata={"annotations": {"sim.kpack.io/never-ready": "true"}},
    )
    stuck = await builder_status(client, "stuck", up_to_date("False"))
    assert condition(stuck, "Ready")["reason"] == "NoLatestImage"


async def test_a_namespaced_builder_resolves_namespace_buildpacks_first(
    kpack: KpackSimulator, client: KubeClient
) -> None:
    await client.create(
        r.BUILDPACK,
        {
            "apiVersion": "kpack.io/v1alpha2",
            "kind": "Buildpack",
            "metadata": {"name": "proc", "namespace": NS},
            "spec": {"image": "paketobuildpacks/procfile"},
        },
    )
    await client.create(
        r.BUILDER,
        {
            "apiVersion": "kpack.io/v1alpha2",
            "kind": "Builder",
            "metadata": {"name": "mine", "namespace": NS},
            "spec": {
                "tag": "registry.example.com/cf/mine",
                "serviceAccountName": "kpack-service-account",
                "stack": {"name": "cf-default-stack"},
                "order": [{"group": [{"kind": "Buildpack", "name": "proc"}]}],
            },
        },
    )
    mine = await eventually(
        lambda: client.get(r.BUILDER, "mine", NS),
        until=lambda b: condition(b, "Ready").get("status") == "True",
        what="Builder ready",
    )
    assert mine["status"]["order"] == [{"group": [{"id": "paketo-buildpacks/procfile", "version": "5.11.0"}]}]
    assert mine["status"]["latestImage"].startswith("registry.example.com/cf/mine:builder-cf-mine@sha256:")


async def test_the_unready_builders_option(api: RunningApiServer, client: KubeClient) -> None:
    async with running_kpack(api, options(unready_builders=frozenset({CLUSTER_BUILDER})), seed=True):
        await client.create(r.IMAGE, image())
        waiting = await eventually(
            lambda: client.get(r.IMAGE, "app", NS),
            until=lambda i: condition(i, "Ready").get("reason") == "BuilderNotReady",
            what="image waiting for its builder",
        )
    assert condition(waiting, "BuilderReady")["status"] == "False"


async def test_run_kpack_simulator_against_any_api_server(api: RunningApiServer) -> None:
    webhooks = install_webhooks(api.cluster)
    try:
        async with fast_client(api.url) as client, anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_kpack_simulator(client, options(), seed=True))
            cb = await builder_ready(client)
            assert cb["spec"]["lifecycle"] == {
                "kind": "ClusterLifecycle",
                "name": "default-lifecycle",
            }  # defaulted
            tg.cancel_scope.cancel()
    finally:
        webhooks.uninstall()
