"""Convergence: how long, how much CPU and memory, and how many API requests N workloads cost a controller
(issue 10, sections 4 and 5), for the service and, with ``--peer kopf``, for the same core logic written with kopf.

Each controller gets a cluster of its own, of real processes: ``python -m simcluster devcluster`` (the
API emulator), ``benchmarks/standin.py`` (kpack reduced to Builds that succeed at once, with the one
registry) and the controller — ``python -m service run``, or ``benchmarks/peers/kopf_peer.py`` in a venv
of its own (``~/.cache/kpack-image-builder/bench-kopf-venv``, made with pip on first use; kopf is never a
dependency of the project). Then:

1. a canary workload is created and waited for: the controller has started, listed and is watching;
2. the controller's CPU time and the emulator's request count are taken;
3. N workloads (one app each, spread over M namespaces) are created as fast as the API takes them;
4. once the last has ``Succeeded=True`` (followed with one watch) and the Events the controller records
   about them are written (``--events``, the same for both; followed with another watch), the figures are
   taken again.

Seconds run from the first create to the last success. CPU is the controller process's user + system time from
the first create to the last of those Events (``/proc/<pid>/stat``): a controller that writes its Events in
the background, behind its workloads (kopf does), is charged for them too; start-up and imports excluded. Peak
RSS is its high-water mark (``VmHWM``), start-up included. API requests are counted by the emulator (a
latency-free fault rule that matches everything counts every request, ``/__sim__/faults``), less those of the
stand-in and of this driver, which have rules of their own; for the service its own
``rest_client_requests_total`` is shown beside it. On the real control plane (``--cluster real``)
kube-apiserver's ``apiserver_request_total`` counts them instead, every client's less the same writes of the
stand-in and the driver (kube-controller-manager's few stay in), and the run also prints the server's requests
by verb and resource with its mean time on each, and the watch events it sent by kind. The service runs
without its client-side rate limit (``--kube-api-qps``), as kopf has none.

    .venv/bin/python benchmarks/converge.py --workloads 1000 --namespaces 10 --peer kopf

Prints a table, then the figures as one JSON line. Timing depends on the machine and its load: the
emulator, the stand-in, this driver and the controller share its cores.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families
from requests import workload  # benchmarks/requests.py (sys.path: this folder, then the repository root)

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import explicit, load_kubeconfig
from service.reconcilers import korifi as k
from simcluster.demo import create_space

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
KOPF_VENV = Path.home() / ".cache" / "kpack-image-builder" / "bench-kopf-venv"
KOPF_PACKAGES = ("kopf", "kubernetes_asyncio", "uvloop")
CREATE_CONCURRENCY = 16
STARTUP_TIMEOUT = 120.0
TICKS = os.sysconf("SC_CLK_TCK")

# Matched in order, one rule per request: what the stand-in and the driver write, then everything else.
COUNTERS = {
    "driver_creates": {"method": "POST", "path": "/buildworkloads$"},
    "standin_creates": {"method": "POST", "path": "/builds$"},
    "standin_statuses": {"method": "PATCH", "path": "/builds/[^/]+/status$"},
    "all_others": {"method": "*", "path": ".*"},
}


@dataclass
class Figures:
    peer: str
    workloads: int
    namespaces: int
    succeeded: int
    failed: int
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    requests: int | None  # the controller's; on a real API server its whole count less the known others
    droplets: int  # workloads whose droplet is the stand-in's image, as the API has them at the end
    own_count: int | None  # the service's rest_client_requests_total over the same span
    own_by_method: dict[str, int] | None  # the same by method and answer
    own_reconciles: (
        dict[str, int] | None
    )  # the service's controller_runtime_reconcile_total by controller, result
    others_cpu_seconds: dict[str, float]  # the emulator's, the stand-in's and this driver's, same span
    events: int = 0  # Events about the N workloads written (as the API shows them) by the end
    events_expected: int = 0  # those the controller was told to record (``--events``)
    events_after: float = 0.0  # seconds from the last workload's success to the last of those Events
    # The real control plane only, from kube-apiserver's /metrics over the same span (every client's):
    # requests by verb and resource, the server's seconds on them, and watch events sent by kind.
    server_requests: dict[str, int] | None = None
    server_seconds: dict[str, float] | None = None
    watch_events: dict[str, int] | None = None

    @property
    def per_second(self) -> float:
        return self.workloads / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_workload(self) -> float:
        return 1000 * self.cpu_seconds / self.workloads

    @property
    def cpu_per_server_cpu(self) -> float | None:
        """The controller's CPU over the API server's (the emulator's, or the control plane's) for the
        same span: on a VM whose speed drifts from run to run, this compares two commits of the service
        where CPU seconds do not (the server's code and the requests it serves stay the same)."""
        server = self.others_cpu_seconds.get("emulator") or self.others_cpu_seconds.get("control plane")
        return self.cpu_seconds / server if server else None

    @property
    def requests_per_workload(self) -> float | None:
        count = self.requests if self.requests is not None else self.own_count
        return None if count is None else count / self.workloads


# ------------------------------------------------------------------------------ the controller process
def cpu_seconds(pid: int) -> float:
    """User + system time of a live process (fields 14 and 15 of ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def descendants(pid: int) -> list[int]:
    """The process's children, theirs, and so on (``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """``cpu_seconds`` of the process and its live descendants (for the real control plane's processes)."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(each)
        except OSError:
            continue  # gone meanwhile
    return total


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def kopf_python() -> Path:
    """The kopf peer's interpreter, in a venv made on first use (pip from PyPI)."""
    python = KOPF_VENV / "bin" / "python"
    probe = [str(python), "-c", "import " + ", ".join(KOPF_PACKAGES)]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    print(f"converge: installing {' '.join(KOPF_PACKAGES)} into {KOPF_VENV}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(KOPF_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *KOPF_PACKAGES], check=True)
    return python


def controller_command(
    peer: str,
    kubeconfig: Path,
    registry: str,
    workers: int | None,
    metrics_port: int,
    service_args: Sequence[str] = (),
    event_loop: str = "asyncio",
    events: str = "all",
    peer_args: Sequence[str] = (),
) -> list[str]:
    """Both controllers get the same event loop and record the same Events (``events``)."""
    prefix = f"{registry}/cf/"
    if peer == "kopf":
        command = [str(kopf_python()), str(PEERS / "kopf_peer.py"), f"--kubeconfig={kubeconfig}"]
        command += [f"--repository-prefix={prefix}", f"--event-loop={event_loop}", f"--events={events}"]
        if workers is not None:
            command.append(f"--workers={workers}")
        return [*command, *peer_args]
    return [
        sys.executable,
        "-m",
        "service",
        "run",
        f"--kubeconfig={kubeconfig}",
        f"--container-repository-prefix={prefix}",
        f"--metrics-bind-address=127.0.0.1:{metrics_port}",
        "--health-probe-bind-address=0",
        f"--workers={workers or 8}",
        "--kube-api-qps=100000",
        "--kube-api-burst=100000",
        "--log-level=warn",
        f"--event-loop={event_loop}",
        f"--events={events}",
        *service_args,
    ]


@asynccontextmanager
async def process(
    command: Sequence[str], log: Path, *, stdout: bool = False
) -> AsyncIterator[anyio.abc.Process]:
    """A child process with its stderr (and stdout unless read) in ``log``; SIGTERM at the end, then
    SIGKILL if it does not stop."""
    env = {key: v for key, v in os.environ.items() if not key.startswith("KPACK_IMAGE_BUILDER_")}
    with log.open("ab") as sink:
        proc = await anyio.open_process(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else sink,
            stderr=sink,
            cwd=ROOT,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            with anyio.move_on_after(15):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
        await proc.wait()
        await proc.aclose()


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def first_line(proc: anyio.abc.Process, what: str, log: Path) -> bytes:
    """The first stdout line of ``proc``, or SystemExit with its log."""
    assert proc.stdout is not None
    buffer = b""
    with anyio.move_on_after(STARTUP_TIMEOUT):
        async for chunk in proc.stdout:
            buffer += chunk
            if b"\n" in buffer:
                return buffer.split(b"\n", 1)[0]
    raise SystemExit(f"converge: {what} did not start:\n{tail(log)}")


async def wait_for_file(path: Path, proc: anyio.abc.Process, log: Path) -> None:
    with anyio.move_on_after(STARTUP_TIMEOUT):
        while not await anyio.Path(path).exists():
            if proc.returncode is not None:
                break
            await anyio.sleep(0.05)  # a child's start-up, polled: it has no other signal
        else:
            return
    raise SystemExit(f"converge: the API server did not start:\n{tail(log)}")


# ------------------------------------------------------------------------------ counting
async def add_counters(http: aiohttp.ClientSession, url: str) -> dict[str, int]:
    """The counting rules (status 0, no latency: only counted); their ids by name."""
    ids = {}
    for name, rule in COUNTERS.items():
        async with http.post(f"{url}/__sim__/faults", json={**rule, "status": 0}) as reply:
            reply.raise_for_status()
            ids[name] = (await reply.json())["id"]
    return ids


async def counts(http: aiohttp.ClientSession, url: str, ids: dict[str, int]) -> dict[str, int]:
    async with http.get(f"{url}/__sim__/faults") as reply:
        reply.raise_for_status()
        hits = {rule["id"]: rule["hits"] for rule in (await reply.json())["rules"]}
    return {name: hits[i] for name, i in ids.items()}


async def own_counts(http: aiohttp.ClientSession, port: int) -> tuple[Counter[str], Counter[str]]:
    """The service's ``rest_client_requests_total`` by method and answer (``PATCH 200``), and its
    ``controller_runtime_reconcile_total`` by controller and result (``buildworkload success``)."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as reply:
        text = await reply.text()
    requests: Counter[str] = Counter()
    reconciles: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rest_client_requests_total":
                requests[f"{sample.labels['method']} {sample.labels['code']}"] += int(sample.value)
            elif sample.name == "controller_runtime_reconcile_total" and sample.value:
                reconciles[f"{sample.labels['controller']} {sample.labels['result']}"] += int(sample.value)
    return requests, reconciles


# What the stand-in and the driver write, as kube-apiserver's metrics name them (``COUNTERS``' rules).
NOT_THE_CONTROLLERS = ("POST buildworkloads", "POST builds", "PATCH builds/status")


@dataclass
class ServerCounts:
    """kube-apiserver's own counters (``/metrics``), summed over every client: requests by verb and
    resource (``PATCH builds/status``), the server's seconds on them, and watch events sent by kind."""

    requests: Counter[str]
    seconds: Counter[str]
    watch_events: Counter[str]

    def __sub__(self, other: ServerCounts) -> ServerCounts:
        def less(a: Counter[str], b: Counter[str]) -> Counter[str]:
            return Counter({key: v - b.get(key, 0) for key, v in a.items() if v - b.get(key, 0) > 0})

        return ServerCounts(
            less(self.requests, other.requests),
            less(self.seconds, other.seconds),
            less(self.watch_events, other.watch_events),
        )


async def server_counts(client: KubeClient) -> ServerCounts:
    status, _, raw = await client.request("GET", "/metrics")
    if status != 200:
        raise SystemExit(f"converge: kube-apiserver's /metrics answered {status}")
    requests: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    watch_events: Counter[str] = Counter()
    for family in text_string_to_metric_families(raw.decode()):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "apiserver_request_total"
                or sample.name == "apiserver_request_duration_seconds_sum"
            ):
                resource = labels.get("resource", "") + (
                    f"/{labels['subresource']}" if labels.get("subresource") else ""
                )
                key = f"{labels.get('verb', '')} {resource}".strip()
                if sample.name == "apiserver_request_total":
                    requests[key] += int(sample.value)
                else:
                    seconds[key] += sample.value
            elif sample.name == "apiserver_watch_events_total":
                watch_events[labels.get("kind") or labels.get("resource") or "?"] += int(sample.value)
    return ServerCounts(requests, seconds, watch_events)


WATCH_COUNTED_WITHIN = 10.0


async def counted_watches(client: KubeClient, before: ServerCounts, progress: Progress) -> ServerCounts:
    """kube-apiserver's counts since ``before``, once they hold this driver's watches. The server counts a
    watch when it ends, and it notices the end of one the driver closed a little after the driver does:
    read at once, the driver's watches would be taken off a count that does not hold them yet."""
    with anyio.move_on_after(WATCH_COUNTED_WITHIN):
        while True:
            served = await server_counts(client) - before
            if all(served.requests[key] >= n for key, n in progress.watched.items()):
                return served
            await anyio.sleep(0.05)  # kube-apiserver tells no one when it counts; polled
    raise SystemExit(
        f"converge: kube-apiserver did not count the driver's watches in {WATCH_COUNTED_WITHIN} s"
    )


# ------------------------------------------------------------------------------ workloads
# The Events both controllers record about a workload on its way (``--events``): a workload has not cost
# its controller all it will until they are written, and kopf writes them in the background, behind.
RECORDED = {
    "all": (k.BUILD_RUNNING, k.BUILD_SUCCEEDED, k.BUILD_FAILED),
    "warnings": (k.BUILD_FAILED,),
    "none": (),
}


class Progress:
    """The workloads' outcomes as one watch shows them, and the Events about them as another shows them."""

    def __init__(self, keys: set[tuple[str, str]], events: str = "all") -> None:
        self.keys = keys
        self.unfinished = set(keys)  # a set kept, not a union taken on every wake-up: O(N) each at N = 10,000
        self.succeeded: set[tuple[str, str]] = set()
        self.failed: set[tuple[str, str]] = set()
        self.reasons = RECORDED[events]
        self.events: set[tuple[str, str, str]] = set()  # (namespace, workload, reason)
        self.finished_at = 0.0  # when the last of the workloads finished (monotonic)
        self.written_at = 0.0  # when the last of their Events was seen written
        self.changed = anyio.Event()
        self.watches = 0  # requests this driver made on the way (counted off the controller's)
        self.watched: Counter[str] = Counter()  # its watch requests by resource, as kube-apiserver keys them

    def expected_events(self) -> int:
        """A succeeded workload's BuildRunning and BuildSucceeded, a failed one's BuildRunning and
        BuildFailed: the ones of those the controllers are told to record."""

        def each(outcome: str) -> int:
            return sum(reason in self.reasons for reason in (k.BUILD_RUNNING, outcome))

        return len(self.succeeded) * each(k.BUILD_SUCCEEDED) + len(self.failed) * each(k.BUILD_FAILED)

    def see_event(self, event: dict[str, Any]) -> None:
        involved = event.get("involvedObject") or {}
        key = (involved.get("namespace", ""), involved.get("name", ""))
        if (
            involved.get("kind") == "BuildWorkload"
            and key in self.keys
            and event.get("reason") in self.reasons
        ):
            self.events.add((*key, event["reason"]))
            self.written_at = time.monotonic()
            self.changed.set()

    def see(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key not in self.keys:
            return  # the canary, changed after its own run
        for c in (obj.get("status") or {}).get("conditions") or ():
            if c.get("type") == k.SUCCEEDED and c.get("status") in ("True", "False"):
                (self.succeeded if c["status"] == "True" else self.failed).add(key)
                self.unfinished.discard(key)
                if not self.unfinished and not self.finished_at:
                    self.finished_at = time.monotonic()
                self.changed.set()

    async def follow(self, client: KubeClient, version: str, events: bool = False) -> None:
        """The workloads' changes (or, with ``events``, the Events written) from ``version`` on."""
        resource, kinds, see = (
            (r.EVENT, ("ADDED",), self.see_event)
            if events
            else (r.BUILD_WORKLOAD, ("ADDED", "MODIFIED"), self.see)
        )
        while True:
            self.watches += 1
            self.watched[f"WATCH {resource.plural}"] += 1
            try:
                async with client.watch(resource, resource_version=version) as stream:
                    async for kind, obj in stream:
                        version = obj["metadata"].get("resourceVersion", version)
                        if kind in kinds:
                            see(obj)
            except errors.Expired:
                raise SystemExit(f"converge: the {resource.plural} watch expired") from None

    async def until(self, within: float, controller: anyio.abc.Process) -> bool:
        """Whether every workload finished, and every Event about them was written, within the time (False
        at once if the controller exits: nothing would finish them)."""
        with anyio.move_on_after(within):
            while self.unfinished or len(self.events) < self.expected_events():
                if controller.returncode is not None:
                    return False
                self.changed = anyio.Event()
                with anyio.move_on_after(1.0):  # to notice a controller that died
                    await self.changed.wait()
            return True
        return False


async def converge(
    client: KubeClient,
    objects: list[tuple[str, dict[str, Any]]],
    within: float,
    controller: anyio.abc.Process,
    events: str = "all",
) -> tuple[float, Progress, bool]:
    """Create the workloads (``CREATE_CONCURRENCY`` at a time) and wait until each has finished and the
    Events about them are written; the seconds from the first create to the last workload's finish, the
    progress and whether all finished in time."""
    progress = Progress({(space, obj["metadata"]["name"]) for space, obj in objects}, events)
    listed = await client.list(r.BUILD_WORKLOAD, limit=1)
    progress.watches += 1
    async with anyio.create_task_group() as tg:
        tg.start_soon(progress.follow, client, listed["metadata"]["resourceVersion"])
        if progress.reasons:
            listed_events = await client.list(r.EVENT, limit=1)
            progress.watches += 1
            tg.start_soon(progress.follow, client, listed_events["metadata"]["resourceVersion"], True)
        todo = list(reversed(objects))
        start = time.monotonic()

        async def creator() -> None:
            while todo:
                space, obj = todo.pop()
                await client.create(r.BUILD_WORKLOAD, obj, space)

        async with anyio.create_task_group() as creators:
            for _ in range(CREATE_CONCURRENCY):
                creators.start_soon(creator)
        done = await progress.until(within, controller)
        seconds = (progress.finished_at or time.monotonic()) - start
        tg.cancel_scope.cancel()
    return seconds, progress, done


async def measure(
    peer: str,
    n: int,
    spaces: int,
    workers: int | None,
    within: float,
    logs: Path,
    cluster: str,
    service_args: Sequence[str] = (),
    event_loop: str = "asyncio",
    run: str | None = None,
    events: str = "all",
    peer_args: Sequence[str] = (),
) -> Figures:
    """``run`` names this run's files in ``logs`` (default: the peer's name); a later run must not find an
    earlier one's kubeconfig and take it for its own server's."""
    run = run or peer
    async with AsyncExitStack() as stack:
        kubeconfig = logs / f"{run}.kubeconfig"
        kubeconfig.unlink(missing_ok=True)
        if cluster == "real":
            # kube-apiserver, etcd and kube-controller-manager (tests/controlplane: built once with Go,
            # cached), with kpack's CRDs and the project's; the admin kubeconfig's client certificate.
            log = logs / f"{run}-controlplane.log"
            command = [sys.executable, "-m", "tests.controlplane", "run", f"--kubeconfig-out={kubeconfig}"]
            api_server = await stack.enter_async_context(process([*command, "--crds"], log))
            await wait_for_file(kubeconfig, api_server, log)
            config = await load_kubeconfig(str(kubeconfig))
            ids = None
        else:
            log = logs / f"{run}-devcluster.log"
            command = [sys.executable, "-m", "simcluster", "devcluster", f"--kubeconfig-out={kubeconfig}"]
            api_server = await stack.enter_async_context(process(command, log))
            await wait_for_file(kubeconfig, api_server, log)
            url = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
            config = explicit(url)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        if cluster != "real":
            ids = await add_counters(http, url)
        log = logs / f"{run}-standin.log"
        standin = await stack.enter_async_context(
            process(
                [sys.executable, str(ROOT / "benchmarks" / "standin.py"), f"--kubeconfig={kubeconfig}"],
                log,
                stdout=True,
            )
        )
        ready = orjson.loads(await first_line(standin, "the stand-in", log))
        registry, image = ready["registry"], ready["image"]
        client = await stack.enter_async_context(KubeClient(config, qps=100_000, burst=100_000))
        names = [f"space-{s}" for s in range(spaces)]
        for space in names:
            await create_space(client, space, registry)

        metrics_port = free_port()
        log = logs / f"{run}-controller.log"
        command = controller_command(
            peer, kubeconfig, registry, workers, metrics_port, service_args, event_loop, events, peer_args
        )
        controller = await stack.enter_async_context(process(command, log))
        pid = controller.pid
        _, _, started = await converge(
            client, [(names[0], workload(n, names[0], registry))], STARTUP_TIMEOUT, controller, events
        )
        if not started:
            raise SystemExit(f"converge: {peer} did not build the canary workload:\n{tail(log)}")

        server_name = "control plane" if cluster == "real" else "emulator"
        cpu_before = cpu_seconds(pid)
        others_before = {
            server_name: tree_cpu_seconds(api_server.pid),
            "standin": cpu_seconds(standin.pid),
            "driver": time.process_time(),
        }
        before = await counts(http, url, ids) if ids is not None else None
        server_before = await server_counts(client) if cluster == "real" else None
        own_before = await own_counts(http, metrics_port) if peer == "service" else None
        objects = [(names[i % spaces], workload(i, names[i % spaces], registry)) for i in range(n)]
        seconds, progress, done = await converge(client, objects, within, controller, events)
        cpu = cpu_seconds(pid) - cpu_before
        others = {
            server_name: tree_cpu_seconds(api_server.pid) - others_before[server_name],
            "standin": cpu_seconds(standin.pid) - others_before["standin"],
            "driver": time.process_time() - others_before["driver"],
        }
        rss = peak_rss_mib(pid)
        after = await counts(http, url, ids) if ids is not None else None
        # The service's count first: a request it makes between the two reads is then the server's alone,
        # and the server's count holds the service's.
        own_after = await own_counts(http, metrics_port) if peer == "service" else None
        served = await counted_watches(client, server_before, progress) if server_before is not None else None
        if not done:
            print(
                f"converge: {peer}: in {within:g} s only {len(progress.succeeded)} of {n} workloads "
                f"finished, and {len(progress.events)} of {progress.expected_events()} Events about them "
                "were written",
                file=sys.stderr,
            )
        if after is not None and before is not None:
            requests: int | None = after["all_others"] - before["all_others"] - progress.watches
        elif served is not None:
            # Every client's, less the stand-in's and this driver's writes and watches, as the emulator's
            # rules count; kube-controller-manager's few (its Lease, every 2 s) stay in.
            not_its = sum(served.requests[key] for key in NOT_THE_CONTROLLERS)
            requests = served.requests.total() - not_its - progress.watches
        else:
            requests = None
        droplets = 0
        for space in names:
            for w in (await client.list(r.BUILD_WORKLOAD, space))["items"]:
                droplet = (w.get("status") or {}).get("droplet") or {}
                droplets += droplet.get("registry", {}).get("image") == image
        own = own_after[0] - own_before[0] if own_after is not None and own_before is not None else None
        passes = own_after[1] - own_before[1] if own_after is not None and own_before is not None else None
        return Figures(
            peer,
            n,
            spaces,
            len(progress.succeeded),
            len(progress.failed),
            seconds,
            cpu,
            rss,
            requests,
            droplets - 1,  # the canary's
            own.total() if own is not None else None,
            dict(sorted(own.items())) if own is not None else None,
            dict(sorted(passes.items())) if passes is not None else None,
            {name: round(v, 2) for name, v in others.items()},
            len(progress.events),
            progress.expected_events(),
            max(0.0, progress.written_at - progress.finished_at) if progress.finished_at else 0.0,
            dict(served.requests.most_common()) if served is not None else None,
            {key: round(v, 3) for key, v in served.seconds.most_common()} if served is not None else None,
            dict(served.watch_events.most_common()) if served is not None else None,
        )


def table(results: list[Figures]) -> str:
    header = (
        "peer",
        "workloads",
        "succeeded",
        "droplets",
        "seconds",
        "workloads/s",
        "CPU s",
        "CPU ms/workload",
        "peak RSS MiB",
        "API requests/workload",
    )
    rows = [header]
    for f in results:
        per_workload = f.requests_per_workload
        requests = "not counted" if per_workload is None else f"{per_workload:.2f}"
        if f.own_count is not None and f.requests is not None:
            requests += f" (own count {f.own_count / f.workloads:.2f})"
        elif f.own_count is not None:
            requests += " (own count)"
        rows.append(
            (
                f.peer,
                str(f.workloads),
                str(f.succeeded),
                str(f.droplets),
                f"{f.seconds:.1f}",
                f"{f.per_second:.0f}",
                f"{f.cpu_seconds:.2f}",
                f"{f.cpu_ms_per_workload:.2f}",
                f"{f.peak_rss_mib:.0f}",
                requests,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for f in results:
        spent = ", ".join(f"{name} {v:.1f} s" for name, v in f.others_cpu_seconds.items())
        if f.cpu_per_server_cpu is not None:
            spent += f"; {f.peer}'s CPU per API server CPU second: {f.cpu_per_server_cpu:.3f}"
        lines.append(f"{f.peer} run, CPU of the other processes: {spent}")
        if f.events:
            lines.append(
                f"{f.peer} Events about the workloads: {f.events}, the last {f.events_after:.1f} s after the "
                "last workload's success (CPU counted until then)"
            )
        if f.own_by_method:
            each = ", ".join(f"{key} {v / f.workloads:.2f}" for key, v in f.own_by_method.items())
            lines.append(f"{f.peer} requests per workload by method and answer: {each}")
        if f.own_reconciles:
            each = ", ".join(f"{key} {v / f.workloads:.2f}" for key, v in f.own_reconciles.items())
            lines.append(f"{f.peer} reconciles per workload by controller and result: {each}")
        if f.server_requests:
            each = ", ".join(
                f"{key} {v / f.workloads:.2f} ({1000 * (f.server_seconds or {}).get(key, 0.0) / v:.1f} ms)"
                for key, v in f.server_requests.items()
                if key.split()[0] != "WATCH" and v >= f.workloads / 20
            )
            lines.append(
                f"{f.peer} run, kube-apiserver's requests per workload by verb and resource (every client's; "
                f"the server's mean time on one): {each}"
            )
        if f.watch_events:
            each = ", ".join(f"{key} {v / f.workloads:.2f}" for key, v in f.watch_events.items())
            lines.append(f"{f.peer} run, kube-apiserver's watch events sent per workload by kind: {each}")
    ours_all = [f for f in results if f.peer == "service"]
    theirs_all = [f for f in results if f.peer != "service"]
    if ours_all and len(theirs_all) == len(ours_all) and all(f.seconds and f.cpu_seconds for f in results):
        for ours, theirs in zip(ours_all, theirs_all, strict=True):
            line = (
                f"service vs {theirs.peer}: {ours.per_second / theirs.per_second:.1f}x the throughput, "
                f"{theirs.cpu_seconds / ours.cpu_seconds:.1f}x less CPU"
            )
            if ours.requests_per_workload is not None and theirs.requests_per_workload is not None:
                line += f", {ours.requests_per_workload:.2f} vs {theirs.requests_per_workload:.2f} requests per workload"
            lines.append(line)
        if len(ours_all) > 1:
            # Summed over rounds in alternating order: a VM whose speed drifts during the runs favours
            # neither peer (each round's own ratio above shows how much it drifted).
            seconds = sum(f.seconds for f in ours_all), sum(f.seconds for f in theirs_all)
            cpu = sum(f.cpu_seconds for f in ours_all), sum(f.cpu_seconds for f in theirs_all)
            lines.append(
                f"over {len(ours_all)} rounds: {seconds[1] / seconds[0]:.2f}x the throughput, "
                f"{cpu[1] / cpu[0]:.2f}x less CPU"
            )
    return "\n".join(lines)


def run_order(peers: list[str], rounds: int) -> list[str]:
    """Round by round in alternating order (service first, then the peer first, ...): the VM's speed
    drifts over minutes, and a fixed order would hand the drift to one of them."""
    return [peer for i in range(rounds) for peer in (peers if i % 2 == 0 else peers[::-1])]


async def main(args: argparse.Namespace) -> int:
    peers = ["service", *([args.peer] if args.peer else [])]
    order = run_order(peers, args.rounds)
    results = []
    with tempfile.TemporaryDirectory(prefix="converge-") as tmp:
        logs = Path(args.logs) if args.logs else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for i, peer in enumerate(order):
            results.append(
                await measure(
                    peer,
                    args.workloads,
                    args.namespaces,
                    args.workers,
                    args.timeout,
                    logs,
                    args.cluster,
                    args.service_arg,
                    args.event_loop,
                    run=peer if args.rounds == 1 else f"{peer}-round{i // len(peers) + 1}",
                    events=args.events,
                    peer_args=args.peer_arg,
                )
            )
    print(table(results))
    summary = [
        {
            **asdict(f),
            "workloads_per_s": round(f.per_second, 1),
            "cpu_ms_per_workload": round(f.cpu_ms_per_workload, 3),
            "cpu_per_server_cpu": (
                round(f.cpu_per_server_cpu, 3) if f.cpu_per_server_cpu is not None else None
            ),
            "requests_per_workload": (
                round(f.requests_per_workload, 2) if f.requests_per_workload is not None else None
            ),
        }
        for f in results
    ]
    print(orjson.dumps(summary).decode())
    whole = all(f.succeeded == f.droplets == f.workloads and f.events == f.events_expected for f in results)
    return 0 if whole else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=1000, help="workloads to converge (default 1000)")
    parser.add_argument("--namespaces", type=int, default=10, help="spaces they are spread over (default 10)")
    parser.add_argument("--peer", choices=["kopf"], help="also measure this implementation of the same logic")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each this many times, in alternating order (default 1); the ratios summed over them",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="the service's --workers (default 8); kopf's worker limit (default: kopf's, unlimited)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds allowed to converge (default 900)"
    )
    parser.add_argument(
        "--service-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for the service's run (repeatable), e.g. --service-arg=--rate-limiter=classic",
    )
    parser.add_argument(
        "--peer-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for the peer (repeatable), e.g. --peer-arg=--consistency-timeout=60",
    )
    parser.add_argument(
        "--events",
        choices=["all", "warnings", "none"],
        default="all",
        help="the Events both controllers record: all (default, the service's default), warnings (failures "
        "only: two fewer writes per workload) or none",
    )
    parser.add_argument(
        "--event-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="both controllers' event loop: asyncio (default, the service's) or uvloop (the service's "
        "eventLoop; kopf's CLI picks it wherever it is installed)",
    )
    parser.add_argument("--logs", help="keep the processes' logs in this folder (default: a temporary one)")
    parser.add_argument(
        "--cluster",
        choices=["emulator", "real"],
        default="emulator",
        help="the API server: the emulator (default) or a real kube-apiserver with etcd and "
        "kube-controller-manager (tests/controlplane; needs its binaries built, `make realcluster` once)",
    )
    arguments = parser.parse_args()
    if arguments.rounds < 1:
        parser.error("--rounds: at least 1")
    for given in (arguments.service_arg, arguments.peer_arg):
        if any(a.startswith("--events") for a in given):
            parser.error("the Events are chosen with --events, for both controllers")
    sys.exit(anyio.run(main, arguments, backend_options={"use_uvloop": True}))
