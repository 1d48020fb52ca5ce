"""Fixtures every suite shares: the API emulator and a client of it, and the switch that points the
integration suites at another cluster.

A suite changes what it needs by overriding a small fixture (``bookmark_interval``, ``client_timeout``)
in its conftest or module, never by defining ``api`` or ``client`` again.

The switch: with ``TEST_KUBECONFIG=<path>`` in the environment, suites written against ``target`` (the
reconcilers' suite) talk to the cluster that kubeconfig names instead of a fresh emulator, and tests
marked ``emulator`` (they inject faults or read the emulator's state) are skipped, saying why. Without it
(as in CI) everything runs against the emulator and nothing is skipped.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest

from service.kube.client import KubeClient
from service.kube.config import ClusterConfig, explicit, load_kubeconfig
from simcluster.crds import new_cluster
from simcluster.server import RunningApiServer, running_apiserver
from tests.controlplane.build import ensure_built
from tests.controlplane.cluster import ControlPlane, control_plane
from tests.controlplane.conftest import skip_unless_available
from tests.helpers import ASYNCIO, fast_client


@pytest.fixture(scope="session")
def anyio_backend() -> tuple[str, dict[str, bool]]:
    # anyio's own fixture runs every test once per installed backend; this service is asyncio-only, on
    # asyncio's own loop by default (eventLoop). The modules closest to the transports
    # (tests/test_http_pool.py, tests/test_kube_client.py) also run on uvloop, the opt-in loop.
    return ASYNCIO


@pytest.fixture
def bookmark_interval() -> float:
    """Seconds between the emulator's watch bookmarks."""
    return 0.2


@pytest.fixture
def client_timeout() -> float:
    """The test client's per-request timeout."""
    return 5.0


@pytest.fixture
async def api(bookmark_interval: float) -> AsyncIterator[RunningApiServer]:
    """The API emulator with the standard namespaces and every CRD the service needs."""
    async with running_apiserver(new_cluster(), bookmark_interval=bookmark_interval) as server:
        yield server


@pytest.fixture
async def client(api: RunningApiServer, client_timeout: float) -> AsyncIterator[KubeClient]:
    async with fast_client(api.url, timeout=client_timeout) as c:
        yield c


TARGET_ENV = "TEST_KUBECONFIG"


SERVICE_ENV = "TEST_SERVICE_KUBECONFIG"


@dataclass(frozen=True)
class Target:
    """The cluster an integration suite runs against: the emulator (``emulator`` set), or another one.
    ``service`` is the identity the service under test uses there: the test's own (an administrator)
    unless ``TEST_SERVICE_KUBECONFIG`` names another one (the chart's RBAC, in the least-privilege run)."""

    cluster: ClusterConfig
    emulator: RunningApiServer | None
    service: ClusterConfig


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("emulator") and os.environ.get(TARGET_ENV):
        pytest.skip(
            f"needs the API emulator (fault injection or its state); {TARGET_ENV} names another cluster"
        )


@pytest.fixture
async def target(bookmark_interval: float) -> AsyncIterator[Target]:
    path = os.environ.get(TARGET_ENV)
    if path:
        cluster = await load_kubeconfig(path)
        service = os.environ.get(SERVICE_ENV)
        yield Target(cluster, None, await load_kubeconfig(service) if service else cluster)
        return
    async with running_apiserver(new_cluster(), bookmark_interval=bookmark_interval) as server:
        cluster = explicit(server.url)
        yield Target(cluster, server, cluster)


@pytest.fixture(scope="session")
async def real_control_plane() -> AsyncIterator[ControlPlane]:
    """kube-apiserver, etcd and kube-controller-manager, built if missing (minutes, once per machine) and
    started once per test session (seconds), shared by every test that asks for it; tests isolate by
    namespace. Skips where it cannot be had (an error under ``CI=true``)."""
    skip_unless_available()
    bins = await anyio.to_thread.run_sync(ensure_built)
    async with control_plane(bins) as cp:
        yield cp
