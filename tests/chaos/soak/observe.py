"""Watching the running system, and the arithmetic on what was seen.

Design: observers, not sleeps. Every replica's ``/metrics`` is scraped every ``scrape_interval`` for
``leader_election_master_status`` and its reconcile count; a failed scrape (a frozen or dying replica) is
recorded as unknown, never as "leading", so an overlap of two replicas' runs of "leading" scrapes is a
lower bound of a split brain (the truth may be up to one scrape longer at each end). The Lease is watched
for its holder history (whom the chaos hits, when a handover happened, whose reconciles were
legitimate); the workloads are listed twice a second for when each started and finished. The pure
functions (leadership runs and overlaps, the metrics scan, conditions, percentiles) sit beside the
observers that feed them; the overlaps and the metrics scan are unit-tested on their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp
import anyio

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.conditions import condition_of
from service.reconcilers import korifi as k
from tests.chaos.soak.record import Record, Replica, Sample
from tests.chaos.soak.scenario import LEASE_NAME, LEASE_NAMESPACE, Obj
from tests.helpers import eventually


@dataclass(frozen=True)
class Overlap:
    a: str
    b: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def leading_runs(samples: list[Sample]) -> list[tuple[float, float]]:
    """Spans ``[first, last]`` of consecutive scrapes that all said "leading"; a failed scrape is unknown
    and ends a span (a frozen replica is not counted as leading)."""
    runs: list[tuple[float, float]] = []
    start: float | None = None
    last = 0.0
    for s in samples:
        if s.leading:
            if start is None:
                start = s.t
            last = s.t
        elif start is not None:
            runs.append((start, last))
            start = None
    if start is not None:
        runs.append((start, last))
    return runs


def overlaps(timelines: dict[str, list[Sample]]) -> list[Overlap]:
    """Every span in which two replicas both said they lead (a lower bound: the truth may be up to one
    scrape interval longer at each end)."""
    runs = {name: leading_runs(samples) for name, samples in timelines.items()}
    names = sorted(runs)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for a0, a1 in runs[a]:
                for b0, b1 in runs[b]:
                    start, end = max(a0, b0), min(a1, b1)
                    if end >= start:
                        out.append(Overlap(a, b, start, end))
    return sorted(out, key=lambda o: o.start)


def parse_metrics(text: str) -> tuple[bool | None, float | None]:
    """``leader_election_master_status`` and the sum of ``controller_runtime_reconcile_total`` from an
    exposition (a line scan: a full parse every 0.2 s per replica costs more than the replicas can spare)."""
    leading: bool | None = None
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("leader_election_master_status{"):
            leading = float(line.rpartition(" ")[2]) == 1.0
        elif line.startswith("controller_runtime_reconcile_total{"):
            total += float(line.rpartition(" ")[2])
            seen = True
    return leading, (total if seen else None)


def succeeded(obj: Obj | None) -> Obj:
    return dict(condition_of(obj, k.SUCCEEDED) or {})


def ready(obj: Obj | None) -> Obj:
    return dict(condition_of(obj, k.READY) or {})


def state(obj: Obj | None) -> str:
    c = succeeded(obj)
    if not c:
        return "no Succeeded condition"
    text = f"{c.get('status')}/{c.get('reason')}"
    if c.get("status") != "True" and c.get("message"):
        text += f' "{c["message"]}"'
    r_ = ready(obj)
    if r_.get("status") == "False":
        text += f'; Ready=False "{r_.get("message", "")}"'
    return text


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class Observers:
    """The soak's watchers: each replica's ``/metrics`` (started by the supervisor once the replica serves),
    the Lease, the workloads; and the questions the chaos and the phases ask of what they saw."""

    def __init__(self, record: Record, client: KubeClient, http: aiohttp.ClientSession) -> None:
        self.record = record
        self.s = record.s
        self.client = client
        self.http = http

    async def scrape(self, replica: Replica) -> None:
        url = f"http://127.0.0.1:{replica.ports['metrics']}/metrics"
        while replica.alive and not self.record.stopping_replicas:
            started = time.monotonic()
            leading = reconciles = None
            try:
                with anyio.fail_after(self.s.scrape_timeout):
                    async with self.http.get(url) as resp:
                        text = await resp.text()
                leading, reconciles = parse_metrics(text)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                pass
            replica.samples.append(Sample(self.record.now(), leading, reconciles))
            await anyio.sleep(max(0.0, self.s.scrape_interval - (time.monotonic() - started)))

    def _lease_seen(self, lease: Obj) -> None:
        if lease["metadata"]["name"] != LEASE_NAME:
            return
        rec = self.record
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        rec.lease_transitions = max(rec.lease_transitions, int(spec.get("leaseTransitions") or 0))
        if not rec.lease_history or rec.lease_history[-1][1] != holder:
            rec.lease_history.append((rec.now(), holder))
            owner = rec.owner(holder)
            rec.say(f"Lease holder: {owner.pod_name if owner else holder or '(none)'}")

    async def watch_lease(self) -> None:
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    listed = await self.client.list(r.LEASE, LEASE_NAMESPACE)
                    rv = str(listed["metadata"]["resourceVersion"])
                    for lease in listed.get("items") or ():
                        self._lease_seen(lease)
                async with self.client.watch(r.LEASE, LEASE_NAMESPACE, resource_version=rv) as stream:
                    async for kind, obj in stream:
                        rv = obj.get("metadata", {}).get("resourceVersion") or rv
                        if kind in ("ADDED", "MODIFIED"):
                            self._lease_seen(obj)
            except errors.Expired:
                rv = None
            except errors.ApiError:
                await anyio.sleep(0.1)

    async def track_workloads(self) -> None:
        rec = self.record
        while True:
            try:
                items, _ = await self.client.list_all(r.BUILD_WORKLOAD)
            except errors.ApiError:
                items = None
            now = rec.now()
            for obj in items or ():
                name = obj["metadata"]["name"]
                status = succeeded(obj).get("status")
                if status == "Unknown":
                    rec.first_running.setdefault(name, now)
                elif status in ("True", "False"):
                    rec.first_terminal.setdefault(name, now)
            await anyio.sleep(0.5)

    def leader(self) -> Replica | None:
        """The replica the Lease names last, if it is alive and not frozen."""
        history = self.record.lease_history
        rep = self.record.owner(history[-1][1] if history else "")
        return rep if rep is not None and rep.alive and not rep.frozen else None

    async def wait_for_leader(self, within: float = 30.0) -> Replica | None:
        try:
            return await eventually(self.leader, within, "a live leader", interval=0.1)
        except AssertionError:
            return None

    async def replica_ready(self, replica: Replica) -> bool:
        try:
            with anyio.fail_after(1.0):
                async with self.http.get(f"http://127.0.0.1:{replica.ports['probes']}/readyz") as resp:
                    return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError, KeyError):
            return False
