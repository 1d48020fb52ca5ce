"""The real ``kpack-image-builder run`` process against the API emulator: probes, metrics (checked by
Debian's promtool), SIGTERM drain, and leader election between replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import explicit
from service.sim.crds import new_cluster
from service.sim.devcluster import kubeconfig, write_kubeconfig
from service.sim.faults import FaultRule
from service.sim.server import RunningApiServer, running_apiserver
from tests.helpers import eventually, promtool_check

pytestmark = pytest.mark.anyio

ELECTION = [
    "--leader-elect",
    "--leader-election-namespace=default",
    "--lease-duration=3s",
    "--renew-deadline=2s",
    "--retry-period=0.5s",
]


@pytest.fixture
async def api() -> AsyncIterator[RunningApiServer]:
    async with running_apiserver(new_cluster()) as server:
        yield server


@pytest.fixture
def kubeconfig_file(api: RunningApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, kubeconfig(api.url))
    return path


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Replica:
    """One ``run`` process; its JSON log lines are collected as they come."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.logs: list[dict[str, Any]] = []
        self.ports: dict[str, int] = {}
        self.listening = anyio.Event()

    async def read_logs(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    entry = {"msg": line.decode(errors="replace"), "level": "raw"}
                self.logs.append(entry)
                if entry.get("msg") == "serving":
                    port = int(entry["address"].rpartition(":")[2])
                    for role in entry["serves"].split("+"):
                        self.ports[role] = port
                    if {"metrics", "probes"} <= self.ports.keys():
                        self.listening.set()

    def url(self, role: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[role]}{path}"

    async def metrics(self, http: aiohttp.ClientSession) -> str:
        async with http.get(self.url("metrics", "/metrics")) as resp:
            assert resp.status == 200
            return await resp.text()

    async def sample(self, http: aiohttp.ClientSession, name: str, **labels: str) -> float | None:
        for family in text_string_to_metric_families(await self.metrics(http)):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

    async def probe(self, http: aiohttp.ClientSession, path: str) -> int:
        async with http.get(self.url("probes", path)) as resp:
            await resp.read()
            return resp.status

    async def leading(self, http: aiohttp.ClientSession) -> bool:
        value = await self.sample(http, "leader_election_master_status")
        return value == 1.0

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, within: float) -> int:
        with anyio.fail_after(within):
            return await self.process.wait()

    def messages(self) -> list[str]:
        return [str(entry.get("msg")) for entry in self.logs]


@asynccontextmanager
async def replicas(kubeconfig_path: Path) -> AsyncIterator[Callable[..., Awaitable[Replica]]]:
    """Start ``run`` processes with ``start(*flags)``; any still running at the end are killed."""
    started: list[Replica] = []
    async with anyio.create_task_group() as tg:

        async def start(*flags: str) -> Replica:
            process = await anyio.open_process(
                [
                    sys.executable,
                    "-m",
                    "service",
                    "run",
                    f"--kubeconfig={kubeconfig_path}",
                    "--metrics-bind-address=127.0.0.1:0",
                    "--health-probe-bind-address=127.0.0.1:0",
                    "--log-level=debug",
                    "--graceful-shutdown-timeout=5s",
                    "--container-repository-prefix=registry.example.com/cf/",
                    *flags,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("KPACK_IMAGE_BUILDER_")},
                    "POD_NAME": f"replica-{len(started)}",
                },
            )
            replica = Replica(process)
            started.append(replica)
            tg.start_soon(replica.read_logs)
            with anyio.fail_after(15):
                await replica.listening.wait()
            return replica

        try:
            yield start
        finally:
            for replica in started:
                if replica.process.returncode is None:
                    replica.process.kill()
                await replica.process.wait()
                await replica.process.aclose()


WORKLOAD = {
    "apiVersion": "korifi.cloudfoundry.org/v1alpha1",
    "kind": "BuildWorkload",
    "metadata": {
        "name": "wl-1",
        "namespace": "default",
        "labels": {"korifi.cloudfoundry.org/app-guid": "app-1"},
    },
    "spec": {"buildRef": {"name": "wl-1-build"}, "builderName": "kpack-image-builder"},
}


async def test_run_serves_probes_and_metrics_and_drains_on_sigterm(
    api: RunningApiServer, kubeconfig_file: Path, http: aiohttp.ClientSession
) -> None:
    # The first list of BuildWorkloads is slow, so the process is seen unready before its caches sync.
    api.faults.add(FaultRule(method="GET", path="/buildworkloads$", status=0, latency=2.0, count=1))
    async with replicas(kubeconfig_file) as start:
        replica = await start()
        assert await replica.probe(http, "/healthz") == 200
        assert await replica.probe(http, "/readyz") == 500

        async def ready() -> bool:
            return await replica.probe(http, "/readyz") == 200

        await eventually(ready, 10, "/readyz 200 once informers synced")

        async with KubeClient(explicit(api.url)) as client:
            await client.create(r.BUILD_WORKLOAD, WORKLOAD)

        async def reconciled() -> bool:
            value = await replica.sample(
                http, "controller_runtime_reconcile_total", controller="buildworkload", result="success"
            )
            return (value or 0) >= 1

        await eventually(reconciled, 10, "the workload reconciled")

        exposition = await replica.metrics(http)
        for name in (
            "workqueue_depth",
            "workqueue_adds_total",
            "workqueue_queue_duration_seconds_bucket",
            "workqueue_work_duration_seconds_bucket",
            "workqueue_unfinished_work_seconds",
            "workqueue_longest_running_processor_seconds",
            "workqueue_retries_total",
            "controller_runtime_reconcile_total",
            "controller_runtime_reconcile_errors_total",
            "controller_runtime_reconcile_time_seconds_bucket",
            "controller_runtime_active_workers",
            "controller_runtime_max_concurrent_reconciles",
            "rest_client_requests_total",
            "process_resident_memory_bytes",
        ):
            assert f"\n{name}{{" in exposition or f"\n{name} " in exposition, name
        assert "_created" not in exposition
        assert 'workqueue_depth{controller="buildworkload",name="buildworkload",priority=""}' in exposition
        replica.signal(signal.SIGTERM)
        assert await replica.exit_code(within=10) == 0
        messages = replica.messages()
        assert "shutting down" in messages and "manager stopped" in messages
        assert not [e for e in replica.logs if e.get("level") == "raw"], "every log line is JSON"
        await promtool_check(exposition)  # last: it skips where promtool is missing


async def test_replicas_elect_one_leader_and_hand_over(
    kubeconfig_file: Path, http: aiohttp.ClientSession
) -> None:
    async with replicas(kubeconfig_file) as start:
        a, b = await start(*ELECTION), await start(*ELECTION)

        async def one_leader() -> bool:
            return [await a.leading(http), await b.leading(http)].count(True) == 1

        await eventually(one_leader, 8, "exactly one leader")
        leader, standby = (a, b) if await a.leading(http) else (b, a)

        async def standby_ready() -> bool:
            return await standby.probe(http, "/readyz") == 200

        await eventually(standby_ready, 8, "the standby ready (warm caches, no workers)")
        assert not await standby.leading(http)

        # A clean stop releases the lease: the standby leads within about a retry period.
        leader.signal(signal.SIGTERM)
        assert await leader.exit_code(within=10) == 0
        assert "released leader lease" in leader.messages()

        async def standby_leads() -> bool:
            return await standby.leading(http)

        # Within a retry period and its jitter (0.5 s x 2.2), well before the 3 s lease could expire.
        await eventually(standby_leads, 2.0, "the standby leading after a clean handover")

        # A killed leader cannot release: a new standby takes over once the lease has gone stale.
        third = await start(*ELECTION)

        async def third_ready() -> bool:
            return await third.probe(http, "/readyz") == 200

        await eventually(third_ready, 8, "the new standby ready")
        standby.signal(signal.SIGKILL)
        await standby.exit_code(within=5)

        async def third_leads() -> bool:
            return await third.leading(http)

        started = time.monotonic()
        await eventually(third_leads, 3.0 + 1.1 + 3.0, "a new leader after the old one was killed")
        took = time.monotonic() - started
        assert took >= 1.0, "took over while the killed leader's lease was still valid"
        third.signal(signal.SIGTERM)
        assert await third.exit_code(within=10) == 0
