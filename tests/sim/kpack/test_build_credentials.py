"""A build's registry credentials, read as kpack reads them: when the build pod is made, retried while the
API fails (a fault must not turn into a push without credentials and a false export failure), without
holding one of the controller's few workers; a service account that does not exist still means none.

The registry here requires Basic authentication, so a push that succeeds is one that carried the service
account's credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from simcluster.demo import create_space
from simcluster.faults import FaultRule
from simcluster.kpack import KpackSimulator, running_kpack
from simcluster.registry import OciRegistry, RunningRegistry, running_registry
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

# The default objects' Secret holds user/password; create_space's holds demo/demo.
USERS = {"user": "password", "demo": "demo"}
SERVICE_ACCOUNT = "kpack-service-account"


@pytest.fixture
async def locked_registry() -> AsyncIterator[RunningRegistry]:
    async with running_registry(OciRegistry(auth="basic", users=USERS)) as reg:
        yield reg


@pytest.fixture
async def one_worker(
    api: RunningApiServer, client: KubeClient, locked_registry: RunningRegistry
) -> AsyncIterator[KpackSimulator]:
    """The simulator with a single worker per controller: a reconcile that waited for credentials would
    stop every other build."""
    async with running_kpack(api, options(registry=locked_registry.host, workers=1), seed=True) as sim:
        await builder_ready(client)
        yield sim


async def finished_build(client: KubeClient, name: str, namespace: str = NS, within: float = 10.0) -> Obj:
    return await eventually(
        lambda: get_or_none(client, r.BUILD, name, namespace),
        within,
        f"build {namespace}/{name} finished",
        until=lambda b: b is not None and condition(b, "Succeeded").get("status") in ("True", "False"),
    )


async def test_a_failing_credentials_read_is_retried_and_the_build_pushes_with_them(
    api: RunningApiServer,
    one_worker: KpackSimulator,
    client: KubeClient,
    locked_registry: RunningRegistry,
) -> None:
    account = api.faults.add(
        FaultRule(
            method="GET", path=f"/namespaces/{NS}/serviceaccounts/{SERVICE_ACCOUNT}$", status=503, count=2
        )
    )
    secret = api.faults.add(
        FaultRule(method="GET", path=f"/namespaces/{NS}/secrets/image-registry-credentials$", count=2)
    )
    tag = f"{locked_registry.host}/cf/app-droplets"
    await client.create(r.IMAGE, image(tag=tag))
    build = await finished_build(client, "app-build-1")
    assert condition(build, "Succeeded")["status"] == "True", condition(build, "Succeeded")
    assert (account.hits, secret.hits) == (2, 2), "the faults never hit the build's reads"
    assert build["status"]["latestImage"].startswith(f"{tag}@sha256:")
    assert "latest" in locked_registry.registry.tags("cf/app-droplets")
    assert not one_worker.builds.credential_failures, "a finished build's retry state is kept"


async def test_a_build_waiting_for_credentials_holds_no_worker(
    api: RunningApiServer,
    one_worker: KpackSimulator,
    client: KubeClient,
    locked_registry: RunningRegistry,
) -> None:
    await create_space(client, "space-x", locked_registry.host)
    # Every read of space-x's service account fails until the rule is cleared.
    api.faults.add(FaultRule(method="GET", path="/namespaces/space-x/serviceaccounts/", status=500))
    await client.create(r.IMAGE, image(namespace="space-x", tag=f"{locked_registry.host}/cf/stuck-droplets"))
    await eventually(
        lambda: one_worker.builds.credential_failures.get(("space-x", "app-build-1"), ("", 0))[1] >= 2,
        what="the space-x build retrying its credentials",
    )
    await client.create(r.IMAGE, image(name="other", tag=f"{locked_registry.host}/cf/other-droplets"))
    other = await finished_build(client, "other-build-1")
    assert condition(other, "Succeeded")["status"] == "True", condition(other, "Succeeded")
    stuck = await client.get(r.BUILD, "app-build-1", "space-x")
    assert condition(stuck, "Succeeded").get("status") in (None, "Unknown"), "built without credentials"

    api.faults.clear()
    built = await finished_build(client, "app-build-1", "space-x")
    assert condition(built, "Succeeded")["status"] == "True", condition(built, "Succeeded")
    assert "latest" in locked_registry.registry.tags("cf/stuck-droplets")


async def test_a_missing_service_account_still_means_no_credentials(
    one_worker: KpackSimulator, client: KubeClient, locked_registry: RunningRegistry
) -> None:
    await client.create(
        r.IMAGE, image(tag=f"{locked_registry.host}/cf/anon-droplets", serviceAccountName="nobody")
    )
    build = await finished_build(client, "app-build-1")
    succeeded = condition(build, "Succeeded")
    assert succeeded["status"] == "False", succeeded
    assert "failed to write image" in succeeded["message"], succeeded["message"]
    assert build["status"]["stepStates"][5]["terminated"]["exitCode"] == 62
    assert not locked_registry.registry.tags("cf/anon-droplets")
