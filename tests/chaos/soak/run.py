"""The run, phase by phase: set-up, the replicas and observers started, the chaos, a quiet late phase
with a hanging registry, settling, the end snapshot, the replicas stopped, then the checks.

Design: ``Soak`` only orders the phases and owns what they share (the registry, the clients, the
supervisor, the observers, the chaos); each part writes to the run's ``Record``. The phases after the
chaos wait with deadlines, never forever: the late phase starts once the system is quiet (a leader, every
replica ready, every workload finished, every watch open again; at most 30 s), so that it measures the hanging registry and not
the chaos's aftermath; settling lists everything twice a second until nothing is pending, or records what
is stuck at ``settle_seconds``. The run's files (report.txt, figures.json, the logs) stay in the work
directory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import anyio
import orjson

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from service.reconcilers import korifi as k
from simcluster.demo import SERVICE_ACCOUNT, create_space
from simcluster.registry import OciRegistry, RunningRegistry, running_registry
from tests.chaos.soak.chaos import Chaos
from tests.chaos.soak.checks import check
from tests.chaos.soak.cluster import Cluster
from tests.chaos.soak.observe import Observers, state, succeeded
from tests.chaos.soak.processes import Supervisor
from tests.chaos.soak.record import Record, Snapshot
from tests.chaos.soak.report import SoakReport
from tests.chaos.soak.scenario import (
    CLUSTER_BUILDER,
    DELETE_DONE,
    DOOMED_SPACE,
    HANG_SPACE,
    PROBE,
    REGISTRY_USERS,
    Obj,
    SoakSettings,
    spaces,
)
from tests.helpers import eventually, hanging_server


class Soak:
    """One run: its record (the plan and schedule, fixed at construction, and all that is seen), the
    processes, the observers and the chaos. ``run()`` does it all and returns the report."""

    registry: RunningRegistry
    cluster: Cluster
    observers: Observers

    def __init__(
        self, settings: SoakSettings, workdir: Path, say: Callable[[str], None] | None = None
    ) -> None:
        self.s = settings
        self.workdir = workdir
        self.record = Record(settings, workdir, say)
        self.hang_host: str | None = None

    async def run(self) -> SoakReport:
        rec = self.record
        self.workdir.mkdir(parents=True, exist_ok=True)
        rec.say(
            f"soak: seed {self.s.seed}, {len(rec.workloads)} workloads, {self.s.replicas} replicas, "
            f"workdir {self.workdir}"
        )
        async with AsyncExitStack() as stack:
            self.registry = await stack.enter_async_context(
                running_registry(OciRegistry(auth="basic", users=REGISTRY_USERS))
            )
            if self.s.hanging_registry:
                self.hang_host = (await stack.enter_async_context(hanging_server())).address
            http = await stack.enter_async_context(aiohttp.ClientSession())
            supervisor = Supervisor(rec, self.registry)
            await stack.enter_async_context(supervisor.devcluster())
            config = await load_kubeconfig(str(self.workdir / "kubeconfig"))
            client = await stack.enter_async_context(
                KubeClient(config, qps=0, timeout=10.0, max_retry_after=2.0)
            )
            self.cluster = Cluster(rec, client, http, config.host, self.registry.host)
            self.observers = Observers(rec, client, http)
            await self.set_up()
            snapshot: Snapshot | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.observers.watch_lease)
                tg.start_soon(self.observers.track_workloads)
                firsts = [anyio.Event() for _ in range(self.s.replicas)]
                for slot in range(self.s.replicas):
                    tg.start_soon(supervisor.run_slot, slot, tg, firsts[slot], self.observers.scrape)
                with anyio.fail_after(60):
                    for event in firsts:
                        await event.wait()
                if await self.observers.wait_for_leader(30.0) is None:
                    raise RuntimeError(f"no leader within 30 s of start; logs in {self.workdir}")
                rec.say("replicas up, a leader elected")
                watches_before = await self.open_watches()
                chaos_started = rec.now()
                await Chaos(rec, self.cluster, self.observers).run()
                chaos_ended = rec.now()
                await self.late_phase(watches_before)
                await self.settle()
                snapshot = await self.snapshot()
                await supervisor.stop_replicas()
                tg.cancel_scope.cancel()
        assert snapshot is not None
        report = check(rec, snapshot, self.registry, chaos_ended - chaos_started)
        (self.workdir / "report.txt").write_text(report.full_text())
        (self.workdir / "figures.json").write_bytes(orjson.dumps(report.figures, option=orjson.OPT_INDENT_2))
        return report

    async def set_up(self) -> None:
        api, client = self.cluster.api, self.cluster.client
        for space in (*spaces(self.s), DOOMED_SPACE):
            await api(lambda space=space: create_space(client, space, self.registry.host))
        if self.hang_host is None:
            return
        await api(lambda: create_space(client, HANG_SPACE, str(self.hang_host)))
        for j in range(self.s.hang_builds):
            image = {
                "apiVersion": k.KPACK_API_VERSION,
                "kind": "Image",
                "metadata": {
                    "name": f"hang-{j}",
                    "namespace": HANG_SPACE,
                    "labels": {k.BUILD_WORKLOAD_LABEL: f"hang-{j}"},
                },
                "spec": {
                    "tag": f"{self.hang_host}/cf/hang-{j}-droplets",
                    "builder": {"kind": k.CLUSTER_BUILDER_KIND, "name": CLUSTER_BUILDER},
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "source": {"registry": {"image": f"{self.hang_host}/packages/hang-{j}:1"}},
                },
            }
            await api(lambda image=image: client.create(r.IMAGE, image))

    # ----------------------------------------------------------------------------- the late phase
    async def open_watches(self) -> dict[str, int]:
        return dict((await self.cluster.sim("GET", "/__sim__/watches"))["open"])

    async def quiesce(self, watches_before: dict[str, int], within: float = 30.0) -> None:
        """Wait for a leader, every replica ready (caches synced again after the chaos's last 410), the
        chaos's workloads finished and as many watches open as before the chaos, so that the late phase
        measures the hanging registry, not the chaos's aftermath; after ``within`` seconds it goes on
        anyway (the settle deadline still holds).

        The watches: an informer relists after a 410 only after its backoff (0.8 s doubling, reset after two
        calm minutes, as client-go's reflector), and the chaos's several 410s leave some of them, the kpack
        simulator's too, unwatched for seconds after it ends while their caches still count as synced; a
        probe created then waited for them, not for the registry."""
        rec = self.record
        deadline = time.monotonic() + within
        while True:
            leader = await self.observers.wait_for_leader(0.0)
            alive = [rep for rep in rec.replicas if rep.alive]
            ready = [await self.observers.replica_ready(rep) for rep in alive]
            busy = [
                w.name
                for w in rec.workloads
                if w.name in rec.created and not w.deleted and w.name not in rec.first_terminal
            ]
            watches = await self.open_watches()
            unwatched = sorted(kind for kind, n in watches_before.items() if watches.get(kind, 0) < n)
            if (
                leader is not None
                and all(ready)
                and len(alive) == self.s.replicas
                and not (busy or unwatched)
            ):
                rec.say(
                    "quiet: a leader, every replica ready, every workload finished, every watch open again"
                )
                return
            if time.monotonic() > deadline:
                rec.say(
                    f"not quiet after {within:g} s (leader: {leader is not None}, ready: {sum(ready)}/"
                    f"{self.s.replicas}, busy: {len(busy)}, fewer watches than before on: {unwatched}); going on"
                )
                return
            await anyio.sleep(0.2)

    async def late_phase(self, watches_before: dict[str, int]) -> None:
        """With every fault gone and the system quiet: the registry hangs for the hang namespace's droplet
        deletions while unrelated workloads are deleted and created; none of those may wait for it."""
        rec, cluster = self.record, self.cluster
        await self.quiesce(watches_before)
        if self.hang_host is not None:
            try:
                await eventually(
                    self.hang_builds_ready,
                    30,
                    "the hang namespace's Builds built and finalized",
                    interval=0.3,
                )
            except AssertionError as exc:
                rec.say(f"hang phase: {exc}")
            for j in range(self.s.hang_builds):
                with contextlib.suppress(errors.NotFound):
                    await cluster.api(lambda j=j: cluster.client.delete(r.IMAGE, f"hang-{j}", HANG_SPACE))
            rec.hang_started = rec.now()
            rec.say(f"hang phase: {self.s.hang_builds} Images with droplets on the silent registry deleted")
        late_deletions = [w for w in rec.workloads if w.kind == DELETE_DONE]
        for w in late_deletions:
            with contextlib.suppress(AssertionError):
                await eventually(
                    lambda w=w: cluster.get_workload(w),
                    20,
                    until=lambda obj: obj is None or succeeded(obj).get("status") in ("True", "False"),
                    interval=0.2,
                )
        rec.late_started = rec.now()
        async with anyio.create_task_group() as tg:
            for w in late_deletions:
                obj = await cluster.get_workload(w)
                status = succeeded(obj).get("status")
                tg.start_soon(
                    cluster.delete_workload, w, "after finishing" if status else "before its build started"
                )
            for w in rec.workloads:
                if w.kind == PROBE:
                    tg.start_soon(cluster.create_workload, w)
        rec.say("late phase: finished workloads deleted, probes created")

    async def hang_builds_ready(self) -> bool:
        builds = (await self.cluster.api(lambda: self.cluster.client.list(r.BUILD, HANG_SPACE)))["items"]
        finalized = [
            b
            for b in builds
            if succeeded(b).get("status") == "True"
            and k.KPACK_BUILD_FINALIZER in (b["metadata"].get("finalizers") or ())
        ]
        return len(finalized) >= self.s.hang_builds

    # ----------------------------------------------------------------------------- settling
    async def pending(self) -> dict[str, str]:
        """What has not reached its end state yet: item -> what it looks like now."""
        rec, api, client = self.record, self.cluster.api, self.cluster.client
        items, _ = await api(lambda: client.list_all(r.BUILD_WORKLOAD))
        builds, _ = await api(lambda: client.list_all(r.BUILD))
        namespaces, _ = await api(lambda: client.list_all(r.NAMESPACE))
        found = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in items}
        out: dict[str, str] = {}
        for w in rec.workloads:
            if w.name in rec.not_created:
                continue
            obj = found.get((w.namespace, w.name))
            if w.deleted:
                if obj is not None:
                    meta = obj["metadata"]
                    out[f"workload {w.name}"] = (
                        f"{w.describe()} deleted {rec.deleted_while.get(w.name, '?')} but still there "
                        f"(deletionTimestamp {meta.get('deletionTimestamp')}, finalizers {meta.get('finalizers')}, "
                        f"{state(obj)})"
                    )
            elif w.name in rec.created and succeeded(obj).get("status") not in ("True", "False"):
                out[f"workload {w.name}"] = f"{w.describe()}: {state(obj) if obj else 'missing'}"
        gone_apps = {(w.namespace, w.app) for w in rec.workloads if w.deleted and w.name in rec.created}
        for b in builds:
            meta = b["metadata"]
            app = (meta.get("labels") or {}).get(k.KPACK_IMAGE_LABEL, "")
            if (meta["namespace"], app) in gone_apps or meta["namespace"] == HANG_SPACE:
                out[f"build {meta['namespace']}/{meta['name']}"] = (
                    f"Build {meta['namespace']}/{meta['name']} of a deleted Image still there "
                    f"(deletionTimestamp {meta.get('deletionTimestamp')}, finalizers {meta.get('finalizers')})"
                )
        if any(n["metadata"]["name"] == DOOMED_SPACE for n in namespaces):
            ns = next(n for n in namespaces if n["metadata"]["name"] == DOOMED_SPACE)
            out["namespace"] = (
                f"namespace {DOOMED_SPACE} still there ({(ns.get('status') or {}).get('phase')})"
            )
        return out

    async def settle(self) -> None:
        rec = self.record
        deadline = time.monotonic() + self.s.settle_seconds
        # Every workload counts as pending until a listing shows it done, so that one done before the first
        # listing gets that listing's time, not none.
        seen_pending = {f"workload {w.name}" for w in rec.workloads}
        while True:
            try:
                pending = await self.pending()
            except errors.ApiError as exc:
                rec.say(f"settle: listing failed: {exc}")
                pending = None
            if pending is not None:
                now = rec.now()
                for item in seen_pending - pending.keys():
                    rec.done_at.setdefault(item, now)
                seen_pending |= pending.keys()
                hang_builds = [i for i in pending if i.startswith(f"build {HANG_SPACE}/")]
                if rec.hang_started is not None and rec.hang_released is None and not hang_builds:
                    rec.hang_released = now
                    rec.say("hang phase: the silent registry's Builds are gone")
                if not pending:
                    rec.say("settled")
                    return
            if time.monotonic() > deadline:
                rec.stuck = pending or {"everything": "the API could not be listed"}
                rec.say(f"not settled after {self.s.settle_seconds:g} s: {len(rec.stuck)} items")
                return
            await anyio.sleep(0.5)

    async def snapshot(self) -> Snapshot:
        async def everything(res: r.Resource) -> list[Obj]:
            items, _ = await self.cluster.api(lambda: self.cluster.client.list_all(res))
            return items

        return Snapshot(
            workloads={
                (o["metadata"]["namespace"], o["metadata"]["name"]): o
                for o in await everything(r.BUILD_WORKLOAD)
            },
            images=await everything(r.IMAGE),
            builds=await everything(r.BUILD),
            builders=await everything(r.BUILDER),
            namespaces={n["metadata"]["name"] for n in await everything(r.NAMESPACE)},
        )


async def run_soak(
    settings: SoakSettings, workdir: Path, say: Callable[[str], None] | None = None
) -> SoakReport:
    """Run the whole soak (minutes) and check its invariants; never raises for a broken invariant."""
    return await Soak(settings, workdir, say).run()
