"""The soak's processes, as a cluster runs them: the ``devcluster --kpack`` process, the ``run`` replicas
kept by a kubelet-like supervisor, and a registry that never answers.

Design: real processes, not tasks, so that SIGKILL, SIGTERM and SIGSTOP mean what they mean in a pod.
Each writes its log to a file in the work directory (the replicas in JSON, one file per process), which
outlives the run for a developer and is where the checks look for tracebacks; a replica's ports are read
from its ``serving`` log lines, since it binds port 0. The supervisor plays kubelet: a replica that exits,
for any reason, is started again after ``restart_delay`` under a new name (``replica-<slot>-<restart>``),
as a restarted pod is a new leader-election candidate. Process exits are recorded even when the run is
cancelled, so a replica that ignored SIGTERM is killed and still counted.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import orjson

from simcluster.registry import RunningRegistry
from tests.chaos.soak.record import Record, Replica
from tests.chaos.soak.scenario import LEASE_NAMESPACE
from tests.helpers import child_env, eventually

SERVICE = (sys.executable, "-m", "service")
SIMCLUSTER = (sys.executable, "-m", "simcluster")


def _serving_ports(log_path: Path) -> dict[str, int]:
    """The ports a replica announced in its ``serving`` log lines so far."""
    ports: dict[str, int] = {}
    try:
        text = log_path.read_bytes()
    except FileNotFoundError:
        return ports
    for line in text.splitlines():
        if b'"serving"' not in line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if entry.get("msg") == "serving":
            port = int(str(entry["address"]).rpartition(":")[2])
            for role in str(entry["serves"]).split("+"):
                ports[role] = port
    return ports


class Supervisor:
    """Starts the devcluster and the replicas, restarts replicas that exit, and stops them all at the end;
    every replica process it started is in ``record.replicas``."""

    def __init__(self, record: Record, registry: RunningRegistry) -> None:
        self.record = record
        self.s = record.s
        self.workdir = record.workdir
        self.registry = registry

    @asynccontextmanager
    async def devcluster(self) -> AsyncIterator[anyio.abc.Process]:
        kubeconfig = self.workdir / "kubeconfig"
        log = (self.workdir / "devcluster.log").open("wb")
        proc = await anyio.open_process(
            [
                *SIMCLUSTER,
                "devcluster",
                "--port=0",
                f"--kubeconfig-out={kubeconfig}",
                "--bookmark-interval=1",
                "--kpack",
                f"--kpack-build-seconds={self.s.build_seconds}",
                f"--kpack-registry={self.registry.url}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=child_env(),
        )
        try:
            await eventually(kubeconfig.exists, 30, "the devcluster's kubeconfig")
            yield proc
            proc.send_signal(signal.SIGTERM)
            with anyio.move_on_after(15):
                self.record.devcluster_exit = await proc.wait()
        finally:
            with anyio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                await proc.aclose()
                log.close()

    async def start_replica(self, slot: int, incarnation: int) -> Replica:
        log_path = self.workdir / f"replica-{slot}-{incarnation}.log"
        s = self.s
        with log_path.open("wb") as log:
            process = await anyio.open_process(
                [
                    *SERVICE,
                    "run",
                    f"--kubeconfig={self.workdir / 'kubeconfig'}",
                    f"--container-repository-prefix={self.registry.host}/cf/",
                    "--metrics-bind-address=127.0.0.1:0",
                    "--health-probe-bind-address=127.0.0.1:0",
                    "--leader-elect",
                    f"--leader-election-namespace={LEASE_NAMESPACE}",
                    f"--lease-duration={s.lease_duration}s",
                    f"--renew-deadline={s.renew_deadline}s",
                    f"--retry-period={s.retry_period}s",
                    f"--graceful-shutdown-timeout={s.graceful_shutdown}s",
                    f"--registry-timeout={s.registry_timeout}s",
                    f"--workers={s.workers}",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--log-format=json",
                    "--log-level=info",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=child_env(POD_NAME=f"replica-{slot}-{incarnation}"),
            )
        replica = Replica(slot, incarnation, process, log_path, self.record.now())
        self.record.replicas.append(replica)
        return replica

    async def run_slot(
        self,
        slot: int,
        tg: anyio.abc.TaskGroup,
        first: anyio.Event,
        scrape: Callable[[Replica], Coroutine[Any, Any, None]],
    ) -> None:
        """One replica's place, as kubelet keeps it: started, watched (``scrape`` in ``tg`` once it serves),
        started again when it exits."""
        rec = self.record
        incarnation = 0
        while not rec.stopping_replicas:
            replica = await self.start_replica(slot, incarnation)
            incarnation += 1
            try:
                with anyio.move_on_after(30):
                    while (
                        not {"metrics", "probes"} <= replica.ports.keys()
                        and replica.process.returncode is None
                    ):
                        replica.ports = _serving_ports(replica.log_path)
                        await anyio.sleep(0.05)
                if "metrics" in replica.ports:
                    tg.start_soon(scrape, replica)
                    first.set()
                else:
                    rec.say(f"{replica.pod_name} announced no metrics port within 30 s")
                replica.up.set()
                await replica.process.wait()
            finally:
                # Also when cancelled (a replica that ignored SIGTERM): killed, and its exit recorded.
                with anyio.CancelScope(shield=True):
                    if replica.process.returncode is None:
                        replica.process.kill()
                    code = await replica.process.wait()
                    await replica.process.aclose()
                replica.exit_code, replica.exited_at = code, rec.now()
                replica.exited.set()
                replica.up.set()
                sent = ",".join(name for _, name in replica.signals) or "no signal"
                rec.say(f"{replica.pod_name} exited {code} ({sent})")
            if not rec.stopping_replicas:
                await anyio.sleep(self.s.restart_delay)

    async def stop_replicas(self) -> None:
        """SIGTERM every replica, as a rollout does; they must exit 0 within the graceful period."""
        rec = self.record
        rec.stopping_replicas = True
        live = [rep for rep in rec.replicas if rep.alive]
        # One still starting would die of the signal's default action before its handler is installed.
        with anyio.move_on_after(35):
            for rep in live:
                await rep.up.wait()
        live = [rep for rep in live if rep.alive]
        for rep in live:
            if rep.frozen:
                rep.signal(signal.SIGCONT, rec.now())  # a frozen one could not act on the SIGTERM
            rep.signal(signal.SIGTERM, rec.now())
        with anyio.move_on_after(self.s.graceful_shutdown + 15):
            for rep in live:
                await rep.exited.wait()
