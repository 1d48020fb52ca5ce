"""Pull Secrets are read by name and kept for a short while (``registrySecretCacheTTL``): a burst of
workloads in one space reads each once, and credentials rotated meanwhile are read again as soon as the
registry refuses the ones kept — a build never fails for the cache's sake."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from service.kube import resources as r
from service.reconcilers import korifi as k
from service.registry.auth import docker_config_secret
from service.registry.client import Keychain
from simcluster.faults import FaultRule
from simcluster.registry import OciRegistry, RunningRegistry, running_registry
from tests.reconcilers.conftest import APP_GUID, BUILD_METADATA, PULL_SECRET, Env

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]


async def push_droplet(env: Env, registry: RunningRegistry, password: str) -> str:
    keychain = Keychain.from_docker_config(
        {"auths": {registry.host: {"username": "demo", "password": password}}}
    )
    repo = f"{registry.host}/droplets/{APP_GUID}"
    config = {"config": {"Labels": {k.BUILD_METADATA_LABEL: orjson.dumps(BUILD_METADATA).decode()}}}
    digest = await env.images.push_image(f"{repo}:latest", config, [uuid.uuid4().bytes], keychain=keychain)
    return f"{repo}@{digest}"


async def set_credentials(env: Env, registry: RunningRegistry, password: str) -> None:
    secret = docker_config_secret(PULL_SECRET, env.namespace, registry.host, "demo", password)
    await env.client.merge_patch(r.SECRET, PULL_SECRET, {"data": secret["data"]}, env.namespace)


async def build_and_succeed(env: Env, image: str, source: str) -> str:
    """A workload whose kpack Build succeeds with ``image``; its name once it has Succeeded=True."""
    workload = await env.create_workload(env.workload_body(source=source))
    name = workload["metadata"]["name"]
    generation = await env.generation_label(name)
    status = {
        "conditions": [{"type": "Succeeded", "status": "True"}],
        "latestImage": image,
        "stack": {"id": "s"},
    }
    await env.build(f"build-{generation}", generation, "1", status=status)
    await env.wait_succeeded(name, "True")
    return name


async def test_rotated_credentials_are_read_again_when_the_registry_refuses_the_kept_ones(env: Env) -> None:
    locked = OciRegistry(auth="basic", users={"demo": "before"})
    async with running_registry(locked) as registry:
        await set_credentials(env, registry, "before")
        first = await build_and_succeed(env, await push_droplet(env, registry, "before"), "PACKAGE_IMAGE")
        # The operator rotates the password: the registry first, then the Secret. The service still keeps
        # the old Secret (the default TTL is 30 s, far beyond this test's 10 s wait).
        locked.users["demo"] = "after"
        await set_credentials(env, registry, "after")
        second = await build_and_succeed(env, await push_droplet(env, registry, "after"), "PACKAGE_IMAGE2")
        assert (await env.workload(second))["status"]["droplet"]["registry"]["image"].startswith(
            registry.host
        )
        assert first != second


@pytest.mark.emulator
async def test_the_workloads_of_one_space_read_its_pull_secret_once_within_the_ttl(env: Env) -> None:
    assert env.api is not None
    reads = env.api.faults.add(
        FaultRule(method="GET", path=f"/namespaces/{env.namespace}/secrets/{PULL_SECRET}$", status=0)
    )
    image = await env.push_droplet()
    names = [await build_and_succeed(env, image, f"PACKAGE_IMAGE{i}") for i in range(4)]
    assert len(names) == 4
    # Each workload checks its source's pull Secret (begin) and reads its account's for the droplet
    # (track): 8 reads without the cache, 1 with it.
    assert reads.hits == 1
