"""Builds that push: the image a successful Build pushes to the registry (its config as Korifi reads it,
every tag), per-app processes and ports, a push failure as an export failure, the completion metadata, and
the failure rate's determinism."""

from __future__ import annotations

import base64
import gzip
from collections.abc import AsyncIterator

import orjson
import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from service.registry.client import RegistryClient
from simcluster.kpack import KpackSimulator, running_kpack
from simcluster.kpack.base import Shared
from simcluster.kpack.builds import BuildController
from simcluster.registry import RunningRegistry
from simcluster.server import RunningApiServer
from tests.sim.kpack.conftest import (
    NS,
    Obj,
    builder_ready,
    condition,
    eventually,
    get_or_none,
    image,
    options,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pushing(
    api: RunningApiServer, client: KubeClient, registry: RunningRegistry
) -> AsyncIterator[KpackSimulator]:
    async with running_kpack(api, options(registry=registry.host), seed=True) as sim:
        await builder_ready(client)
        yield sim


async def finished_build(client: KubeClient, name: str) -> Obj:
    return await eventually(
        lambda: get_or_none(client, r.BUILD, name, NS),
        until=lambda b: b is not None and condition(b, "Succeeded").get("status") in ("True", "False"),
        what=f"build {name} finished",
    )


async def test_a_successful_build_pushes_its_image_to_every_tag(
    pushing: KpackSimulator, client: KubeClient, registry: RunningRegistry
) -> None:
    tag = f"{registry.host}/cf/app-droplets"
    await client.create(r.IMAGE, image(tag=tag, additionalTags=[f"{registry.host}/cf/app-droplets:extra"]))
    build = await finished_build(client, "app-build-1")
    latest = build["status"]["latestImage"]
    assert latest.startswith(f"{tag}@sha256:")
    async with RegistryClient() as reg:
        config = await reg.image_config(latest)
        tags = await reg.list_tags(tag)
    metadata = orjson.loads(config.labels["io.buildpacks.build.metadata"])
    assert metadata["processes"] == [
        {
            "type": "web",
            "command": "/workspace/start",
            "args": ["--port", "8080"],
            "direct": False,
            "default": True,
            "buildpackID": metadata["buildpacks"][-1]["id"],
        }
    ]
    assert metadata["buildpacks"] == build["status"]["buildMetadata"]
    assert config.labels["io.buildpacks.stack.id"] == "io.buildpacks.stacks.jammy"
    assert config.exposed_ports == [8080]
    assert config.digest == latest.rpartition("@")[2]
    build_tag = build["spec"]["tags"][1].rpartition(":")[2]
    assert sorted(tags) == sorted(["latest", build_tag, "extra"])
    completion = build["status"]["stepStates"][-1]["terminated"]["message"]
    assert orjson.loads(gzip.decompress(base64.b64decode(completion))) == {
        "buildpackMetadata": build["status"]["buildMetadata"],
        "latestCacheImage": "",
        "latestImage": latest,
        "stackID": "io.buildpacks.stacks.jammy",
        "stackRunImage": build["status"]["stack"]["runImage"],
        "lifecycleVersion": build["status"]["lifecycleVersion"],
    }


async def test_processes_ports_and_detection_per_app(
    pushing: KpackSimulator, client: KubeClient, registry: RunningRegistry
) -> None:
    body = image(tag=f"{registry.host}/cf/node-droplets")
    body["metadata"]["annotations"] = {
        "sim.kpack.io/processes": '[{"type": "web", "command": "node", "args": ["server.js"]}, '
        '{"type": "worker", "command": "node worker.js"}]',
        "sim.kpack.io/ports": "3000/tcp,9000/udp",
        "sim.kpack.io/detect": "paketo-buildpacks/nodejs",
    }
    await client.create(r.IMAGE, body)
    build = await finished_build(client, "app-build-1")
    async with RegistryClient() as reg:
        config = await reg.image_config(build["status"]["latestImage"])
    processes = orjson.loads(config.labels["io.buildpacks.build.metadata"])["processes"]
    assert [(p["type"], p["command"], p["args"]) for p in processes] == [
        ("web", "node", ["server.js"]),
        ("worker", "node worker.js", []),
    ]
    assert config.exposed_ports == [3000, 9000]
    ids = [m["id"] for m in build["status"]["buildMetadata"]]
    assert ids == [
        "paketo-buildpacks/node-engine",
        "paketo-buildpacks/nodejs",
    ]  # required children, then the meta


async def test_a_push_that_fails_is_an_export_failure(api: RunningApiServer, client: KubeClient) -> None:
    async with running_kpack(api, options(registry="127.0.0.1:1"), seed=True):
        await builder_ready(client)
        await client.create(r.IMAGE, image(tag="127.0.0.1:1/cf/app"))
        build = await finished_build(client, "app-build-1")
    assert condition(build, "Succeeded")["status"] == "False"
    assert build["status"]["stepsCompleted"] == ["prepare", "analyze", "detect", "restore", "build"]
    assert build["status"]["stepStates"][5]["terminated"]["exitCode"] == 62
    message = condition(build, "Succeeded")["message"]
    assert message.startswith(
        "Error:  Container export terminated with error ERROR: failed to export: failed to write image to the "
        "following tags: [127.0.0.1:1/cf/app: "
    )
    assert message.endswith("`kubectl logs -n cf app-build-1-build-pod -c export`")


def test_the_failure_rate_fails_the_same_builds_every_time() -> None:
    def controller(seed: int) -> BuildController:
        return BuildController(Shared(client=None, options=options(failure_rate=0.3, seed=seed)))  # type: ignore[arg-type]

    def build(n: int) -> Obj:
        return {"metadata": {"name": f"app-build-{n}", "namespace": NS, "uid": str(n)}}

    steps = ("prepare", "analyze", "detect", "restore", "build", "export")
    first = [controller(7)._fail_step(build(n), steps) for n in range(200)]
    assert first == [controller(7)._fail_step(build(n), steps) for n in range(200)]
    assert first != [controller(8)._fail_step(build(n), steps) for n in range(200)]
    assert set(first) == {None, "build"} and 40 <= first.count("build") <= 80
    forced = {"metadata": {**build(1)["metadata"], "annotations": {"sim.kpack.io/fail": "false"}}}
    assert all(controller(s)._fail_step(forced, steps) is None for s in range(20))


async def test_an_app_can_ask_for_its_build_to_fail_through_its_build_env(
    pushing: KpackSimulator, client: KubeClient, registry: RunningRegistry
) -> None:
    body = image(tag=f"{registry.host}/cf/broken-droplets")
    body["spec"]["build"] = {"env": [{"name": "SIM_KPACK_FAIL", "value": "detect"}]}
    await client.create(r.IMAGE, body)
    build = await finished_build(client, "app-build-1")
    assert condition(build, "Succeeded")["status"] == "False"
    assert build["status"]["stepsCompleted"] == ["prepare", "analyze"]
    assert build["status"]["stepStates"][2]["terminated"]["exitCode"] == 20
