"""The chaos: the schedule's actions, run at their times against the live system.

Design: the schedule (scenario.py) says what happens when; this says how each action is done and records
what it met: which replica led when it was hit and how long the handover took, how far a workload had
got when it was deleted, which fault rules were added and how often they hit. Actions run concurrently,
each started at its time whatever the earlier ones are still doing (a freeze lasts longer than the gap
to the next fault); an action that fails in the harness is recorded and the run goes on, and the
``chaos-actions-ran`` invariant reports it, since the run then tested less than planned. Waits within
an action poll with deadlines; a restage waits for its first build, since creating it earlier could make
kpack skip that build.
"""

from __future__ import annotations

import contextlib
import signal
import time

import aiohttp
import anyio

from service.kube import errors
from service.kube import resources as r
from tests.chaos.soak.cluster import Cluster
from tests.chaos.soak.observe import Observers, succeeded
from tests.chaos.soak.record import Handover, Record, Replica
from tests.chaos.soak.scenario import (
    BUILDER_LAG_SECONDS,
    DOOMED,
    DOOMED_SPACE,
    PROCESS_KINDS,
    Action,
    Workload,
    restaged,
)
from tests.helpers import eventually


class Chaos:
    """Runs the record's schedule (``run()``), with the cluster's client and the observers' view of the
    Lease."""

    def __init__(self, record: Record, cluster: Cluster, observers: Observers) -> None:
        self.record = record
        self.s = record.s
        self.cluster = cluster
        self.observers = observers

    async def run(self) -> None:
        rec = self.record
        rec.say(f"chaos: {len(rec.actions)} actions over {self.s.chaos_seconds:g} s")
        start = time.monotonic()
        rec.chaos_started = rec.now()
        async with anyio.create_task_group() as actions:
            for action in rec.actions:
                await anyio.sleep(max(0.0, start + action.at - time.monotonic()))
                rec.say(action.describe())
                actions.start_soon(self.act, action)
        try:
            listed = await self.cluster.sim("GET", "/__sim__/faults")
            rec.fault_rules = listed["rules"]
            await self.cluster.sim("DELETE", "/__sim__/faults")
        except (aiohttp.ClientError, RuntimeError) as exc:
            rec.say(f"could not read or clear the fault rules: {exc}")
        rec.say("chaos over: faults cleared")

    async def act(self, action: Action) -> None:
        """One action; a failure is recorded (the run's results then say less), not raised."""
        try:
            await self._act(action)
        except Exception as exc:
            self.record.action_errors.append(f"{action.describe()}: {type(exc).__name__}: {exc}")
            self.record.say(f"action failed: {action.describe()}: {exc}")

    async def _act(self, action: Action) -> None:
        rec = self.record
        kind = action.kind
        if kind == "create":
            async with anyio.create_task_group() as tg:
                for name in action.detail:
                    tg.start_soon(self.cluster.create_workload, rec.by_name[name])
        elif kind == "restage":
            await self.restage(rec.by_name[action.detail[0]])
        elif kind == "delete-mid-build":
            await self.delete_mid_build(rec.by_name[action.detail[0]])
        elif kind == "delete-namespace":
            await self.delete_namespace([rec.by_name[n] for n in action.detail])
        elif kind == "builder-lag":
            await self.builder_lag([rec.by_name[n] for n in action.detail])
        elif kind in PROCESS_KINDS:
            await self.hit_leader(kind)
        elif kind == "drop-watches":
            await self.cluster.sim("POST", "/__sim__/drop-watches")
            rec.fault_hits[kind] += 1
        elif kind == "gone":
            # Forget the history, then end every watch: every informer's resume answers 410 Expired.
            await self.cluster.sim("POST", "/__sim__/compact")
            await self.cluster.sim("POST", "/__sim__/drop-watches")
            rec.fault_hits[kind] += 1
        else:
            await self.cluster.sim("POST", "/__sim__/faults", action.detail)

    async def restage(self, w: Workload) -> None:
        original = restaged(self.record.workloads)[w.name]
        try:
            await eventually(
                lambda: self.cluster.get_workload(original),
                30,
                until=lambda obj: succeeded(obj).get("status") in ("True", "False"),
                interval=0.2,
            )
        except AssertionError:
            # Created now, it could make kpack skip the first one's build (KpackMissedBuild): leave it out.
            self.record.not_created[w.name] = f"{original.name} had not finished 30 s later"
            return
        await self.cluster.create_workload(w)

    async def builder_lag(self, new: list[Workload]) -> None:
        # Every client's Builder list and watch (``…/builders`` without a name) answers late for a while.
        watchers = self.s.replicas + 1  # the replicas and the kpack simulator
        await self.cluster.sim(
            "POST",
            "/__sim__/faults",
            {
                "method": "GET",
                "path": "/builders$",
                "status": 0,
                "latency": BUILDER_LAG_SECONDS,
                "count": 2 * watchers,
            },
        )
        await self.cluster.sim("POST", "/__sim__/drop-watches")
        self.record.fault_hits["drop-watches"] += 1
        async with anyio.create_task_group() as tg:
            for w in new:
                tg.start_soon(self.cluster.create_workload, w)

    async def delete_mid_build(self, w: Workload) -> None:
        await self.cluster.create_workload(w)
        how_far = "before its build started"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            obj = await self.cluster.get_workload(w)
            status = succeeded(obj).get("status")
            if status == "Unknown":
                how_far = "mid-build"
                break
            if status in ("True", "False"):
                how_far = "after finishing"
                break
            await anyio.sleep(0.05)
        await self.cluster.delete_workload(w, how_far)

    async def delete_namespace(self, late: list[Workload]) -> None:
        rec = self.record
        async with anyio.create_task_group() as tg:
            for w in late:
                tg.start_soon(self.cluster.create_workload, w)
        # Delete once one of them is mid-build, so the namespace goes with builds running.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [succeeded(await self.cluster.get_workload(w)).get("status") for w in late]
            if "Unknown" in states:
                break
            await anyio.sleep(0.1)
        doomed = [w for w in rec.workloads if w.kind == DOOMED]
        for w in doomed:
            status = succeeded(await self.cluster.get_workload(w)).get("status")
            rec.deleted_while[w.name] = {
                "Unknown": "mid-build",
                "True": "after finishing",
                "False": "after finishing",
            }.get(str(status), "before its build started")
        with contextlib.suppress(errors.NotFound):
            await self.cluster.api(lambda: self.cluster.client.delete(r.NAMESPACE, DOOMED_SPACE))
        for w in doomed:
            rec.deleted_at[w.name] = rec.now()
        rec.say(
            f"namespace {DOOMED_SPACE} deleted: "
            + ", ".join(f"{w.name} {rec.deleted_while[w.name]}" for w in doomed)
        )

    async def hit_leader(self, kind: str) -> None:
        rec = self.record
        leader = await self.observers.wait_for_leader(8.0)
        if leader is None:
            rec.skipped_actions.append(f"{kind}: no leader to hit at t+{rec.now():.1f}s")
            rec.say(f"{kind} skipped: no live leader")
            return
        at = rec.now()
        if kind == "kill":
            leader.signal(signal.SIGKILL, at)
        elif kind == "term":
            leader.signal(signal.SIGTERM, at)
        else:
            leader.frozen = True
            leader.signal(signal.SIGSTOP, at)
        rec.say(f"{kind}: {leader.pod_name}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.measure_handover, kind, leader, at)
            if kind == "freeze":
                await anyio.sleep(self.s.freeze_seconds)
                leader.signal(signal.SIGCONT, rec.now())
                leader.frozen = False
                rec.freezes.append((leader.pod_name, at, rec.now()))
                rec.say(f"resumed {leader.pod_name} after {rec.now() - at:.1f} s")

    async def measure_handover(self, cause: str, old: Replica, at: float) -> None:
        rec = self.record
        deadline = time.monotonic() + self.s.handover_bound + 10.0
        while time.monotonic() < deadline:
            holder = rec.holder_at(float("inf"))
            if holder and not old.owns(holder):
                when = next(t for t, h in reversed(rec.lease_history) if h == holder)
                new = rec.owner(holder)
                rec.handovers.append(
                    Handover(cause, old.pod_name, new.pod_name if new else holder, at, round(when - at, 2))
                )
                return
            await anyio.sleep(0.05)
        rec.handovers.append(Handover(cause, old.pod_name, "", at, None))
