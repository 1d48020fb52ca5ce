"""The kpack simulator on a real cluster, as a person runs it: ``python -m simcluster kpack --kubeconfig``
against the session's kube-apiserver (kpack's CRDs installed, no kpack). Its webhooks are real admission
webhooks there — kube-apiserver calls them over HTTPS, as it would call kpack's — so an Image gets kpack's
defaults, refusals reach the client with the emulator's texts (the same table ``tests/sim/kpack`` checks
against the emulator), a kpack panic is kube-apiserver's own EOF error, and an Image builds to Ready with a
succeeded Build pushed to a registry. Stopping the process removes its webhook configurations (checked on
the way out).

The control plane is shared by the session: everything here lives in a namespace of its own, and what it
creates at cluster scope (a default StorageClass, the builder's stack, store and lifecycle) is deleted
after the module."""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from service.kube.resources import Resource
from simcluster.crds import read_documents
from simcluster.kpack.apis import CLUSTER_LIFECYCLE_RESOURCE
from simcluster.kpack.webhook_server import (
    MUTATING_WEBHOOK_CONFIGURATION,
    VALIDATING_WEBHOOK_CONFIGURATION,
)
from simcluster.kpack.webhooks import DEFAULTING, EXCLUDE_LABEL, VALIDATING
from simcluster.registry import RunningRegistry, running_registry
from tests.controlplane.build import binaries
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.controlplane.kpack_process import Simulator, kpack_process
from tests.helpers import eventually
from tests.sim.kpack.conftest import PACKAGE, Obj, condition
from tests.sim.kpack.test_admission import CREATE_CASES, DENIED, RESOURCES

pytestmark = [
    pytest.mark.anyio,
    # The first test pays for the session's control plane: a build when nothing is cached.
    pytest.mark.timeout(3600 if binaries().missing() else 120),
]

ROOT = Path(__file__).resolve().parents[2]
KPACK_CRDS = ROOT / "simcluster" / "crds" / "kpack"
DEADLINE = 30.0


@pytest.fixture(scope="module")
async def admin(real_control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    async with KubeClient(await load_kubeconfig(str(real_control_plane.kubeconfig)), qps=0) as client:
        await apply_crds(client, read_documents([KPACK_CRDS]))
        yield client


@pytest.fixture(scope="module")
async def registry() -> AsyncIterator[RunningRegistry]:
    async with running_registry() as reg:
        yield reg


async def _configurations(admin: KubeClient) -> list[str]:
    names = []
    for res in (MUTATING_WEBHOOK_CONFIGURATION, VALIDATING_WEBHOOK_CONFIGURATION):
        names += [c["metadata"]["name"] for c in (await admin.list(res))["items"]]
    return names


@pytest.fixture(scope="module")
async def simulator(
    real_control_plane: ControlPlane, admin: KubeClient, registry: RunningRegistry
) -> AsyncIterator[Simulator]:
    """``python -m simcluster kpack`` against the control plane's admin kubeconfig, until its webhooks are
    in use; SIGTERM after the module, which must end it cleanly, its configurations gone."""
    async with kpack_process(real_control_plane.kubeconfig, registry.url) as sim:
        yield sim
    assert await _configurations(admin) == []


@dataclass
class World:
    """The test's namespace and a ClusterBuilder that builds there."""

    ns: str
    builder: str
    created: list[tuple[Resource, str]]


async def _create(admin: KubeClient, res: Resource, obj: Obj, created: list[tuple[Resource, str]]) -> Obj:
    out = await admin.create(res, obj)
    if not res.namespaced:
        created.append((res, obj["metadata"]["name"]))
    return out


@pytest.fixture(scope="module")
async def world(admin: KubeClient, simulator: Simulator, registry: RunningRegistry) -> AsyncIterator[World]:
    name = f"kpack-sim-{uuid.uuid4().hex[:8]}"
    created: list[tuple[Resource, str]] = []
    kpack = "kpack.io/v1alpha2"
    try:
        await admin.create(r.NAMESPACE, {"metadata": {"name": name}})
        # As the emulator's fixture has it: a default StorageClass that allows expansion.
        await _create(
            admin,
            r.STORAGE_CLASS,
            {
                "metadata": {
                    "name": name,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": "example.com/p",
                "allowVolumeExpansion": True,
            },
            created,
        )
        with contextlib.suppress(errors.AlreadyExists):
            await _create(
                admin,
                CLUSTER_LIFECYCLE_RESOURCE,
                {
                    "apiVersion": kpack,
                    "kind": "ClusterLifecycle",
                    "metadata": {"name": "default-lifecycle"},  # what every builder defaults to
                    "spec": {"image": "registry.example.com/lifecycle@sha256:" + "2" * 64},
                },
                created,
            )
        stack = {"id": "io.buildpacks.stacks.jammy", "buildImage": {"image": "example.com/build"}}
        stack["runImage"] = {"image": "example.com/run"}
        await _create(
            admin,
            r.CLUSTER_STACK,
            {"apiVersion": kpack, "kind": "ClusterStack", "metadata": {"name": name}, "spec": stack},
            created,
        )
        store = {"sources": [{"image": "paketobuildpacks/procfile"}]}
        await _create(
            admin,
            r.CLUSTER_STORE,
            {"apiVersion": kpack, "kind": "ClusterStore", "metadata": {"name": name}, "spec": store},
            created,
        )
        builder = {
            "tag": f"{registry.host}/{name}/builder",
            "serviceAccountRef": {"name": "default", "namespace": name},
            "stack": {"kind": "ClusterStack", "name": name},
            "store": {"kind": "ClusterStore", "name": name},
            "order": [{"group": [{"id": "paketo-buildpacks/procfile"}]}],
        }
        await _create(
            admin,
            r.CLUSTER_BUILDER,
            {"apiVersion": kpack, "kind": "ClusterBuilder", "metadata": {"name": name}, "spec": builder},
            created,
        )
        await eventually(
            lambda: _found(admin, r.SERVICE_ACCOUNT, "default", name), DEADLINE, "ServiceAccount default"
        )
        world = World(name, name, created)
        # kpack's webhook reads StorageClasses from an informer: the default one is seen a moment later.
        await eventually(
            lambda: dry_run(admin, image(world, "probe")),
            DEADLINE,
            "an Image defaulted with a volume cache",
            until=lambda o: isinstance(o, dict) and "cache" in o["spec"],
        )
        yield world
    finally:
        for res, obj_name in [*reversed(created), (r.NAMESPACE, name)]:
            with contextlib.suppress(errors.NotFound):
                await admin.delete(res, obj_name)


async def _found(client: KubeClient, res: Resource, name: str, namespace: str | None = None) -> Obj | None:
    try:
        return await client.get(res, name, namespace)
    except errors.NotFound:
        return None


async def dry_run(client: KubeClient, obj: Obj) -> Obj | errors.ApiError:
    """Create ``obj`` with dryRun (the cases reuse names): the object as it would be stored, or the error."""
    res = RESOURCES[obj["kind"]]
    status, headers, raw = await client.request(
        "POST", res.path(obj["metadata"].get("namespace")), params={"dryRun": "All"}, body=obj
    )
    if status >= 300:
        return errors.error_from_response(status, raw, headers)
    return orjson.loads(raw)  # type: ignore[no-any-return]


def image(world: World, name: str = "app", tag: str | None = None, **spec: object) -> Obj:
    return {
        "apiVersion": "kpack.io/v1alpha2",
        "kind": "Image",
        "metadata": {"name": name, "namespace": world.ns},
        "spec": {
            "tag": tag or f"registry.example.com/{world.ns}/{name}",
            "builder": {"kind": "ClusterBuilder", "name": world.builder},
            "source": {"registry": {"image": PACKAGE}},
            **spec,
        },
    }


async def test_the_webhook_configurations_are_kpacks_and_call_the_simulator(
    admin: KubeClient, simulator: Simulator
) -> None:
    mutating = await admin.get(MUTATING_WEBHOOK_CONFIGURATION, DEFAULTING)
    validating = await admin.get(VALIDATING_WEBHOOK_CONFIGURATION, VALIDATING)
    for config, name, path in ((mutating, DEFAULTING, "/defaults"), (validating, VALIDATING, "/validate")):
        [webhook] = config["webhooks"]
        assert webhook["name"] == name
        url = webhook["clientConfig"]["url"]
        assert url.startswith("https://127.0.0.1:") and url.endswith(path), url
        assert webhook["clientConfig"]["caBundle"]
        assert (webhook["failurePolicy"], webhook["matchPolicy"], webhook["sideEffects"]) == (
            "Fail",
            "Exact",
            "None",
        )
        assert url == simulator.webhooks + path  # the URL the process announced


async def test_an_image_gets_kpacks_defaults_through_kube_apiserver(admin: KubeClient, world: World) -> None:
    created = await admin.create(r.IMAGE, image(world, "defaults", serviceAccountName=""))
    spec = created["spec"]
    assert spec["serviceAccountName"] == "default"
    assert spec["imageTaggingStrategy"] == "BuildNumber"
    assert (spec["failedBuildHistoryLimit"], spec["successBuildHistoryLimit"]) == (10, 10)
    assert spec["cache"] == {"volume": {"size": "2G"}}
    builder = await admin.get(r.CLUSTER_BUILDER, world.builder)
    assert builder["spec"]["lifecycle"] == {"kind": "ClusterLifecycle", "name": "default-lifecycle"}


async def test_refusals_through_kube_apiserver_are_the_emulators(admin: KubeClient, world: World) -> None:
    differ = []
    for name, body, expected in CREATE_CASES:
        body = copy.deepcopy(body)
        if "namespace" in body["metadata"]:
            body["metadata"]["namespace"] = world.ns
        outcome = await dry_run(admin, body)
        if not (
            isinstance(outcome, errors.BadRequest)
            and outcome.code == 400
            and outcome.message == DENIED + expected
        ):
            differ.append((name, outcome if isinstance(outcome, dict) else outcome.message))
    assert differ == []
    assert len(CREATE_CASES) > 30

    stored = await admin.create(r.IMAGE, image(world, "immutable"))
    with pytest.raises(errors.BadRequest) as info:
        await admin.merge_patch(
            r.IMAGE, "immutable", {"spec": {"tag": "registry.example.com/other"}}, world.ns
        )
    assert info.value.message == (
        DENIED + f"Immutable field changed: spec.tag\ngot: registry.example.com/other, "
        f"want: {stored['spec']['tag']}"
    )


async def test_a_panic_in_kpacks_validation_is_kube_apiservers_eof(
    admin: KubeClient, world: World, simulator: Simulator
) -> None:
    # An Image stored without kpack's defaults (its namespace was excluded from the webhooks then) makes
    # kpack's Validate dereference nil on its next status write, which cannot change the spec.
    ns = f"{world.ns}-excluded"
    await admin.create(r.NAMESPACE, {"metadata": {"name": ns, "labels": {EXCLUDE_LABEL: "true"}}})
    try:
        undefaulted = await admin.create(
            r.IMAGE, {**image(world, "bare"), "metadata": {"name": "bare", "namespace": ns}}
        )
        assert "failedBuildHistoryLimit" not in undefaulted["spec"]
        await admin.merge_patch(r.NAMESPACE, ns, {"metadata": {"labels": {EXCLUDE_LABEL: None}}})

        async def status_write() -> errors.ApiError | None:
            try:
                await admin.patch_status(r.IMAGE, "bare", {"status": {"observedGeneration": 1}}, ns)
            except errors.ApiError as exc:
                return exc
            return None  # the namespace still excluded, as kube-apiserver's cache has it

        refused = await eventually(status_write, DEADLINE, "the status write refused")
        assert refused is not None
        inner = f'failed calling webhook "{VALIDATING}": failed to call webhook: Post "{simulator.webhooks}/validate?timeout=10s": EOF'
        assert (refused.code, refused.message) == (500, f"Internal error occurred: {inner}")
    finally:
        await admin.delete(r.NAMESPACE, ns)


async def test_an_image_builds_to_ready_with_a_succeeded_build(
    admin: KubeClient, world: World, registry: RunningRegistry
) -> None:
    tag = f"{registry.host}/{world.ns}/built"
    await admin.create(r.IMAGE, image(world, "built", tag=tag))
    ready = await eventually(
        lambda: admin.get(r.IMAGE, "built", world.ns),
        DEADLINE,
        "Image built Ready",
        until=lambda img: condition(img, "Ready").get("status") == "True",
    )
    build = await admin.get(r.BUILD, ready["status"]["latestBuildRef"], world.ns)
    assert condition(build, "Succeeded").get("status") == "True", build["status"]
    latest = ready["status"]["latestImage"]
    assert latest == build["status"]["latestImage"] and latest.startswith(f"{tag}@sha256:")
    # The registry has what the Build says it pushed.
    digest = latest.split("@", 1)[1]
    async with (
        aiohttp.ClientSession() as http,
        http.head(
            f"{registry.url}/v2/{world.ns}/built/manifests/{digest}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ) as resp,
    ):
        assert resp.status == 200
