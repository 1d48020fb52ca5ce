"""The manager in-process against the API emulator: probes, the start/stop order, graceful shutdown,
component failure, and leader election between two managers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import anyio
import pytest
from prometheus_client import CollectorRegistry

from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import explicit
from service.runtime import Request, Result
from service.runtime.controller import GateClosed
from service.runtime.leader import LeaderElectionConfig
from service.runtime.manager import Manager, ManagerOptions
from service.runtime.sidecar import BindAddress
from simcluster.faults import FaultRule
from simcluster.server import RunningApiServer
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

LOCAL = BindAddress("127.0.0.1", 0)


@pytest.fixture
def client_timeout() -> float:
    return 2.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Toy:
    """Reconciles ConfigMaps; tests hold a reconcile open with ``gate``."""

    seen: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    gate: anyio.Event | None = None
    entered: anyio.Event = field(default_factory=anyio.Event)

    async def reconcile(self, request: Request) -> Result | None:
        self.seen.append(request.name)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.finished.append(request.name)
        return None


def new_manager(client: KubeClient, toy: Toy, **options: object) -> Manager:
    manager = Manager(
        client,
        ManagerOptions(name="test", metrics_address=None, probe_address=LOCAL, **options),  # type: ignore[arg-type]
    )
    controller = manager.new_controller("toy", toy.reconcile)
    controller.watch(manager.informers.informers_for(r.CONFIG_MAP))
    return manager


@dataclass
class Exit:
    """The manager's exit code, once ``run`` returned."""

    codes: list[int] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)

    async def wait(self, within: float = 5.0) -> list[int]:
        with anyio.fail_after(within):
            await self.done.wait()
        return self.codes


@asynccontextmanager
async def running(manager: Manager) -> AsyncIterator[tuple[str, Exit]]:
    """Run the manager in the background; yields the probe URL and its ``Exit``."""
    codes = Exit()
    async with anyio.create_task_group() as tg:

        async def run(*, task_status: anyio.abc.TaskStatus[dict[str, int]]) -> None:
            codes.codes.append(await manager.run(task_status=task_status))
            codes.done.set()

        ports = await tg.start(run)
        yield f"http://127.0.0.1:{ports['probes']}", codes
        manager.shutdown()


async def status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        await resp.read()
        return resp.status


def configmap(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}


async def test_ready_only_after_informers_synced_and_not_while_stopping(
    api: RunningApiServer, client: KubeClient, http: aiohttp.ClientSession
) -> None:
    await client.create(r.CONFIG_MAP, configmap("one"))
    api.faults.add(FaultRule(method="GET", path="/configmaps$", status=0, latency=1.0, count=1))
    toy = Toy()
    manager = new_manager(client, toy)
    async with running(manager) as (probes, codes):
        assert await status(http, probes + "/healthz") == 200
        async with http.get(probes + "/readyz") as resp:
            body = await resp.text()
            assert resp.status == 500, body
            assert "[-]informers-synced failed: reason withheld" in body
        async with http.get(probes + "/readyz/informers-synced") as resp:
            assert "not synced: configmaps@*" in await resp.text()
        await eventually(lambda: _is(status(http, probes + "/readyz"), 200), within=5)
        await eventually(lambda: toy.finished == ["one"])
        manager.shutdown()
        await codes.wait()
    assert codes.codes == [0]


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_shutdown_lets_in_flight_reconciles_finish(
    client: KubeClient, http: aiohttp.ClientSession
) -> None:
    toy = Toy(gate=anyio.Event())
    manager = new_manager(client, toy, graceful_shutdown_timeout=5.0)
    await client.create(r.CONFIG_MAP, configmap("slow"))
    async with running(manager) as (probes, codes):
        with anyio.fail_after(5):
            await toy.entered.wait()
        manager.shutdown()
        # Readiness turns false at once, while the reconcile is still running.
        await eventually(lambda: _is(status(http, probes + "/readyz"), 500))
        assert toy.finished == [] and not codes.done.is_set()
        # New events are not taken any more.
        await client.create(r.CONFIG_MAP, configmap("late"))
        toy.gate.set()  # type: ignore[union-attr]
        await codes.wait()
    assert codes.codes == [0]
    assert toy.finished == ["slow"]
    assert "late" not in toy.seen


async def test_events_recorded_by_the_last_reconciles_are_written_before_it_stops(
    api: RunningApiServer, client: KubeClient
) -> None:
    """The Events of the reconciles a shutdown waited for say how things ended: they are written before
    ``run`` returns, not dropped with the writer (Event writes held back by the server meanwhile)."""
    toy = Toy(gate=anyio.Event())
    manager = new_manager(client, toy, graceful_shutdown_timeout=5.0)
    await client.create(r.CONFIG_MAP, configmap("last"))
    api.faults.add(FaultRule(method="POST", path="/events$", status=0, latency=0.3))
    async with running(manager) as (_, codes):
        with anyio.fail_after(5):
            await toy.entered.wait()
        obj = await client.get(r.CONFIG_MAP, "last", "default")
        for i in range(3):
            manager.events.record(obj, "Normal", f"Ending{i}", "the reconcile's outcome")
        manager.shutdown()
        toy.gate.set()  # type: ignore[union-attr]
        await codes.wait()
    assert codes.codes == [0]
    events = (await client.list(r.EVENT, "default"))["items"]
    assert sorted(e["reason"] for e in events if e["involvedObject"]["name"] == "last") == [
        "Ending0",
        "Ending1",
        "Ending2",
    ]


async def test_overrunning_the_grace_period_cancels_work_and_exits_1(client: KubeClient) -> None:
    toy = Toy(gate=anyio.Event())  # never set: the reconcile would wait for ever
    manager = new_manager(client, toy, graceful_shutdown_timeout=0.3)
    await client.create(r.CONFIG_MAP, configmap("stuck"))
    async with running(manager) as (_, codes):
        with anyio.fail_after(5):
            await toy.entered.wait()
        manager.shutdown()
        await codes.wait(within=3)
    assert codes.codes == [1]
    assert toy.finished == []


async def test_a_dead_component_fails_healthz_and_stops_the_manager(
    client: KubeClient, http: aiohttp.ClientSession
) -> None:
    toy = Toy()
    manager = new_manager(client, toy)
    broken = anyio.Event()

    async def explode() -> None:
        await broken.wait()
        raise RuntimeError("boom")

    async with running(manager) as (probes, codes):
        await eventually(lambda: _is(status(http, probes + "/readyz"), 200))
        # A component of the manager dies; health must say so and the process must end non-zero.
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager._guard, "exploding part", explode)
            broken.set()
        assert manager.dead == {"exploding part": "RuntimeError: boom"}
        async with http.get(probes + "/healthz/components") as resp:
            assert resp.status == 500
            assert "exploding part: RuntimeError: boom" in await resp.text()
        await codes.wait()
    assert codes.codes == [1]


def leader_options(identity: str) -> dict[str, object]:
    return {
        "leader_election": LeaderElectionConfig("toy-lock", "default", identity, 2.0, 1.0, 0.2),
        "graceful_shutdown_timeout": 2.0,
    }


async def test_only_the_leader_reconciles_and_a_clean_stop_hands_over(
    api: RunningApiServer, http: aiohttp.ClientSession
) -> None:
    async with (
        KubeClient(explicit(api.url), timeout=2.0) as c1,
        KubeClient(explicit(api.url), timeout=2.0) as c2,
    ):
        toy1, toy2 = Toy(), Toy()
        m1 = new_manager(c1, toy1, **leader_options("one"))
        m2 = new_manager(c2, toy2, **leader_options("two"))
        async with running(m1) as (_, codes1):
            with anyio.fail_after(3):
                await m1.leading.wait()
            async with running(m2) as (probes2, codes2):
                # The standby runs its informers (ready once synced) but no workers.
                await eventually(lambda: _is(status(http, probes2 + "/readyz"), 200))
                await c1.create(r.CONFIG_MAP, configmap("a"))
                await eventually(lambda: toy1.finished == ["a"])
                assert m2.elector is not None and m2.elector.attempts >= 1
                assert not m2.leading.is_set() and toy2.seen == []

                m1.shutdown()
                await codes1.wait()
                assert codes1.codes == [0]
                # The released lease lets the standby lead within a retry period, not a lease duration.
                with anyio.fail_after(1.5):
                    await m2.leading.wait()
                await c2.create(r.CONFIG_MAP, configmap("b"))
                # The new leader reconciles everything from its cache, including what the old one did.
                await eventually(lambda: "b" in toy2.finished and "a" in toy2.finished)
                m2.shutdown()
                await codes2.wait()
            assert codes2.codes == [0]


async def test_losing_the_lease_stops_work_at_once_and_exits_1(api: RunningApiServer) -> None:
    async with KubeClient(explicit(api.url), timeout=1.0, backoff_base=0.005, backoff_cap=0.02) as c:
        toy = Toy(gate=anyio.Event())
        manager = new_manager(c, toy, **leader_options("one"))
        await c.create(r.CONFIG_MAP, configmap("held"))
        async with running(manager) as (_, codes):
            with anyio.fail_after(5):
                await toy.entered.wait()
            api.faults.add(FaultRule(method="*", path="/leases", status=500))
            # Lost within the renew deadline; the in-flight reconcile is cancelled, not awaited.
            await codes.wait(within=1.0 + 2 * 0.44 + 2.0)
        assert codes.codes == [1]
        assert manager.lost_lease
        assert toy.finished == []


async def test_a_leader_frozen_mid_reconcile_writes_nothing_once_resumed(api: RunningApiServer) -> None:
    """A process frozen past its renew deadline in the middle of a reconcile resumes with its workers
    ready to run before the lease renewal loop notices: the rest of that reconcile's writes are refused
    before they are sent, its outcome is not counted as a reconcile, and no other reconcile starts."""
    refused: list[BaseException] = []
    entered = anyio.Event()

    async with KubeClient(explicit(api.url), timeout=2.0) as c:
        registry = CollectorRegistry()
        manager = Manager(
            c,
            ManagerOptions(name="test", metrics_address=None, probe_address=LOCAL, **leader_options("one")),  # type: ignore[arg-type]
            registry=registry,
        )

        async def reconcile(request: Request) -> Result | None:
            if request.name != "freeze":
                return None
            entered.set()
            time.sleep(1.2)  # noqa: ASYNC251 - the fault itself: the loop frozen past the 1 s renew deadline
            try:
                await c.create(r.CONFIG_MAP, configmap("after-freeze"))
            except GateClosed as exc:
                refused.append(exc)
                raise
            return None

        controller = manager.new_controller("toy", reconcile)
        controller.watch(manager.informers.informers_for(r.CONFIG_MAP))
        await c.create(r.CONFIG_MAP, configmap("freeze"))
        async with running(manager) as (_, codes):
            with anyio.fail_after(5):
                await entered.wait()
            await codes.wait(within=3.0)
        assert codes.codes == [1] and manager.lost_lease
        assert len(refused) == 1, refused
        names = [o["metadata"]["name"] for o in (await c.list(r.CONFIG_MAP, "default"))["items"]]
        assert "after-freeze" not in names
        total = sum(
            registry.get_sample_value(
                "controller_runtime_reconcile_total", {"controller": "toy", "result": x}
            )
            or 0.0
            for x in ("success", "error", "requeue", "requeue_after")
        )
        assert total == 0, total
