"""The real ``kpack-image-builder run`` process against the API emulator: probes, metrics (checked by
Debian's promtool), SIGTERM drain, leader election between replicas, and one line with exit status 2 for
bad input."""

from __future__ import annotations

import os
import signal
import socket
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
from simcluster.devcluster import kubeconfig, write_kubeconfig
from simcluster.faults import FaultRule
from simcluster.server import RunningApiServer
from tests.helpers import child_env, eventually, promtool_check

pytestmark = pytest.mark.anyio

ELECTION = [
    "--leader-elect",
    "--leader-election-namespace=default",
    "--lease-duration=3s",
    "--renew-deadline=2s",
    "--retry-period=0.5s",
]


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
                    **child_env(),
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


@pytest.mark.parametrize(
    ("flags", "event_loop"),
    [
        pytest.param([], "asyncio", id="default-asyncio"),
        pytest.param(["--event-loop=uvloop"], "uvloop", id="uvloop"),
    ],
)
async def test_run_serves_probes_and_metrics_and_drains_on_sigterm(
    api: RunningApiServer,
    kubeconfig_file: Path,
    http: aiohttp.ClientSession,
    flags: list[str],
    event_loop: str,
) -> None:
    # The first list of BuildWorkloads is slow, so the process is seen unready before its caches sync.
    api.faults.add(FaultRule(method="GET", path="/buildworkloads$", status=0, latency=2.0, count=1))
    async with replicas(kubeconfig_file) as start:
        replica = await start(*flags)
        # The loop that runs, as the process itself reports it.
        assert [e.get("eventLoop") for e in replica.logs if e.get("msg") == "starting"] == [event_loop]
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


async def test_a_frozen_leader_steps_down_when_it_resumes_and_the_successor_keeps_leading(
    api: RunningApiServer, kubeconfig_file: Path, http: aiohttp.ClientSession
) -> None:
    """SIGSTOP past the lease, then SIGCONT: the resumed replica must not take the Lease back (it used to
    renew on the successor's Lease object) — it steps down at once and exits 1; the successor leads on."""
    async with replicas(kubeconfig_file) as start, KubeClient(explicit(api.url)) as client:
        a, b = await start(*ELECTION), await start(*ELECTION)

        async def one_leader() -> bool:
            return [await a.leading(http), await b.leading(http)].count(True) == 1

        await eventually(one_leader, 8, "exactly one leader")
        frozen, successor = (a, b) if await a.leading(http) else (b, a)
        frozen.signal(signal.SIGSTOP)

        async def successor_leads() -> bool:
            return await successor.leading(http)

        await eventually(successor_leads, 3.0 + 1.1 + 3.0, "the standby takes over the frozen leader's lease")
        holder = (await client.get(r.LEASE, "kpack-image-builder-leader-election", "default"))["spec"]
        resumed = time.monotonic()
        frozen.signal(signal.SIGCONT)
        # It finds its renew deadline long passed and stops before trying again: at once, not after
        # another renew deadline (2 s) of attempts, any of which could take the Lease back.
        assert await frozen.exit_code(within=5.0) == 1
        took = time.monotonic() - resumed
        assert took < 1.5, f"the resumed leader went on for {took:.1f} s"
        assert any("not renewed within the renew deadline" in m for m in frozen.messages())
        lease = (await client.get(r.LEASE, "kpack-image-builder-leader-election", "default"))["spec"]
        assert lease["holderIdentity"] == holder["holderIdentity"]
        assert lease["leaseTransitions"] == holder["leaseTransitions"]
        assert await successor.leading(http)
        successor.signal(signal.SIGTERM)
        assert await successor.exit_code(within=10) == 0


# ---------------------------------------------------------------------------------------------- bad input
async def run_to_exit(
    kubeconfig_path: Path, *flags: str, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """A ``run`` process that is expected to stop by itself, with its output."""
    with anyio.fail_after(30):
        return await anyio.run_process(
            [
                sys.executable,
                "-m",
                "service",
                "run",
                f"--kubeconfig={kubeconfig_path}",
                "--metrics-bind-address=127.0.0.1:0",
                "--health-probe-bind-address=127.0.0.1:0",
                "--container-repository-prefix=registry.example.com/cf/",
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            check=False,
            env={
                **child_env(),
                **(environ or {}),
            },
        )


def count_requests(api: RunningApiServer) -> FaultRule:
    """A rule that fails and delays nothing: its ``hits`` count every request the emulator gets."""
    return api.faults.add(FaultRule(status=0))


def assert_one_line(result: subprocess.CompletedProcess[bytes], expected: str) -> None:
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert result.returncode == 2, stderr
    assert result.stdout == b""
    assert stderr.splitlines() == [f"kpack-image-builder: {expected}"]


QPS_ERROR = "kubeAPIQPS (from {source}): expected a finite number, got {value}"
SECTION_ERROR = "cfStagingResources (from config {file}): expected a mapping with buildCacheMB, diskMB or memoryMB, got {value}"


@pytest.mark.parametrize(
    ("flags", "environ", "file_text", "expected"),
    [
        pytest.param(
            ["--kube-api-qps", "inf"], {}, None,
            QPS_ERROR.format(source="flag --kube-api-qps", value="'inf'"), id="qps-inf-flag",
        ),
        pytest.param(
            ["--kube-api-qps=nan"], {}, None,
            QPS_ERROR.format(source="flag --kube-api-qps", value="'nan'"), id="qps-nan-flag",
        ),
        pytest.param(
            [], {"KPACK_IMAGE_BUILDER_KUBE_API_QPS": "inf"}, None,
            QPS_ERROR.format(source="environment KPACK_IMAGE_BUILDER_KUBE_API_QPS", value="'inf'"),
            id="qps-inf-environment",
        ),
        pytest.param(
            [], {}, "kubeAPIQPS: .nan\n", QPS_ERROR.format(source="config {file}", value="nan"), id="qps-nan-file",
        ),
        pytest.param(
            [], {}, "kubeAPIQPS: .inf\n", QPS_ERROR.format(source="config {file}", value="inf"), id="qps-inf-file",
        ),
        pytest.param([], {}, "cfStagingResources: 5\n", SECTION_ERROR.format(file="{file}", value="5"), id="section-5"),
        pytest.param(
            [], {}, "cfStagingResources: [1, 2]\n", SECTION_ERROR.format(file="{file}", value="[1, 2]"),
            id="section-list",
        ),
        pytest.param(
            [], {}, 'cfStagingResources: "x"\n', SECTION_ERROR.format(file="{file}", value="'x'"),
            id="section-string",
        ),
        pytest.param(
            [], {}, "cfStagingResources: {buildCacheMB: lots}\n",
            "cfStagingResources.buildCacheMB (from config {file}): expected a whole number, got 'lots'",
            id="section-nested-value",
        ),
        pytest.param(
            ["--lease-duration", "-3s"], {}, None,
            "leaseDuration (from flag --lease-duration): must be more than 0, got '-3s'", id="lease-duration--3s",
        ),
        pytest.param(
            ["--renew-deadline", "-1s"], {}, None,
            "renewDeadline (from flag --renew-deadline): must be more than 0, got '-1s'", id="renew-deadline--1s",
        ),
        pytest.param(
            ["--event-loop", "tokio"], {}, None,
            "eventLoop (from flag --event-loop): expected one of asyncio, uvloop, got 'tokio'", id="event-loop-tokio",
        ),
        pytest.param(
            ["--kube-api-qps", "-1x"], {}, None,
            "kubeAPIQPS (from flag --kube-api-qps): expected a number, got '-1x'", id="qps--1x",
        ),
    ],
)  # fmt: skip
async def test_run_exits_2_with_one_line_on_bad_input(
    api: RunningApiServer,
    kubeconfig_file: Path,
    tmp_path: Path,
    flags: list[str],
    environ: dict[str, str],
    file_text: str | None,
    expected: str,
) -> None:
    requests = count_requests(api)
    file = tmp_path / "config.yaml"
    if file_text is not None:
        file.write_text(file_text, encoding="utf-8")
        flags = [f"--config={file}", *flags]
    result = await run_to_exit(kubeconfig_file, *flags, environ=environ)
    assert_one_line(result, expected.format(file=file))
    assert requests.hits == 0


async def test_run_exits_2_with_one_line_when_uvloop_is_not_installed(
    api: RunningApiServer, kubeconfig_file: Path, tmp_path: Path
) -> None:
    requests = count_requests(api)
    # A None entry in sys.modules is how Python marks a module as not importable: ``import uvloop`` fails
    # and find_spec answers None, as on an interpreter without the package.
    (tmp_path / "sitecustomize.py").write_text('import sys\nsys.modules["uvloop"] = None\n', encoding="utf-8")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    result = await run_to_exit(kubeconfig_file, "--event-loop=uvloop", environ={"PYTHONPATH": path})
    assert_one_line(
        result,
        "eventLoop uvloop (flag --event-loop): the uvloop package is not installed; install it or set "
        "eventLoop to asyncio",
    )
    assert requests.hits == 0
    # The default, the way out the message names, works on the same interpreter: the loop starts and the
    # service gets as far as binding its metrics port (taken here, so that the process stops by itself).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run_to_exit(
            kubeconfig_file,
            f"--metrics-bind-address=127.0.0.1:{port}",
            environ={"PYTHONPATH": path},
        )
    assert b'"eventLoop": "asyncio"' in result.stderr or b'"eventLoop":"asyncio"' in result.stderr, (
        result.stderr
    )
    assert result.stderr.decode().splitlines()[-1] == (
        f"kpack-image-builder: metrics server: cannot listen on 127.0.0.1:{port}: address already in use "
        "(metricsBindAddress, flag --metrics-bind-address)"
    )


METRICS = ("--metrics-bind-address", "metricsBindAddress")
PROBES = ("--health-probe-bind-address", "healthProbeBindAddress")


@pytest.mark.parametrize(
    ("on_port", "server"),
    [
        pytest.param([METRICS], "metrics server", id="metrics"),
        pytest.param([PROBES], "health probe server", id="probes"),
        pytest.param([METRICS, PROBES], "metrics and health probe server", id="both-on-one-port"),
    ],
)
async def test_run_exits_2_with_one_line_when_its_port_is_taken(
    api: RunningApiServer, kubeconfig_file: Path, on_port: list[tuple[str, str]], server: str
) -> None:
    requests = count_requests(api)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = [f"{flag}=127.0.0.1:{port}" for flag, _ in on_port]
        # At the error level: the "starting" line logged before the manager binds is not what is judged.
        result = await run_to_exit(kubeconfig_file, "--log-level=error", *flags)
    settings = "; ".join(f"{key}, flag {flag}" for flag, key in on_port)
    assert_one_line(
        result, f"{server}: cannot listen on 127.0.0.1:{port}: address already in use ({settings})"
    )
    # The sidecar binds first: no informer, elector or event recorder has reached the cluster yet.
    assert requests.hits == 0


async def test_a_negative_graceful_shutdown_timeout_after_a_space_means_no_limit(
    api: RunningApiServer, kubeconfig_file: Path, http: aiohttp.ClientSession
) -> None:
    requests = count_requests(api)
    async with replicas(kubeconfig_file) as start:
        replica = await start("--graceful-shutdown-timeout", "-1s")  # after the fixture's =5s: it wins

        async def ready() -> bool:
            return await replica.probe(http, "/readyz") == 200

        await eventually(ready, 10, "/readyz 200 once informers synced")
        assert requests.hits > 0  # the counter the tests above rely on does count
        replica.signal(signal.SIGTERM)
        assert await replica.exit_code(within=10) == 0
    [stopping] = [e for e in replica.logs if e.get("msg") == "stopping controllers"]
    assert stopping["gracePeriodSeconds"] is None  # infinity, which JSON has no number for
