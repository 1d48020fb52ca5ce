"""Leader election on a Lease in the API emulator, with short durations (2 s lease, 0.2 s retry)."""

from __future__ import annotations

import time

import anyio
import pytest
from prometheus_client import CollectorRegistry

from service.kube import resources as r
from service.kube.client import KubeClient
from service.runtime.leader import LeaderElectionConfig, LeaderElector, LeadershipLost
from service.runtime.metrics import RuntimeMetrics
from simcluster.faults import FaultRule
from simcluster.server import RunningApiServer
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

LEASE_NAME = "test-lock"


@pytest.fixture
def client_timeout() -> float:
    return 2.0


def elector(client: KubeClient, identity: str, metrics: RuntimeMetrics | None = None) -> LeaderElector:
    config = LeaderElectionConfig(LEASE_NAME, "default", identity, 2.0, 1.0, 0.2)
    return LeaderElector(client, config, metrics=metrics)


async def lease_spec(client: KubeClient) -> dict[str, object]:
    spec: dict[str, object] = (await client.get(r.LEASE, LEASE_NAME, "default"))["spec"]
    return spec


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="lease duration > renew deadline"):
        LeaderElectionConfig("x", "default", "me", 10.0, 10.0, 2.0)
    with pytest.raises(ValueError, match="namespace"):
        LeaderElectionConfig("x", "", "me")


async def test_first_candidate_creates_the_lease(client: KubeClient) -> None:
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    a = elector(client, "a", metrics)
    assert registry.get_sample_value("leader_election_master_status", {"name": LEASE_NAME}) == 0
    with anyio.fail_after(2):
        await a.acquire()
    assert a.leading
    spec = await lease_spec(client)
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 2
    assert spec["leaseTransitions"] == 0
    assert str(spec["renewTime"]).endswith("Z") and "." in str(spec["renewTime"])
    assert registry.get_sample_value("leader_election_master_status", {"name": LEASE_NAME}) == 1


async def test_second_candidate_waits_then_takes_over_at_once_after_release(client: KubeClient) -> None:
    a, b = elector(client, "a"), elector(client, "b")
    await a.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.hold)
        b_leads = anyio.Event()

        async def run_b() -> None:
            await b.acquire()
            b_leads.set()

        tg.start_soon(run_b)
        # b keeps trying while a renews; a valid lease held by another is never taken.
        await eventually(lambda: b.attempts >= 5, within=5)
        assert not b.leading and not b_leads.is_set()
        assert (await lease_spec(client))["holderIdentity"] == "a"

        released_at = time.monotonic()
        tg.cancel_scope.cancel()  # stops a's renewals and b's attempt
    await a.release()
    assert not a.leading
    spec = await lease_spec(client)
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1

    with anyio.fail_after(2):  # one retry period with jitter, not a whole lease duration
        await b.acquire()
    assert time.monotonic() - released_at < 2.0
    spec = await lease_spec(client)
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1


async def test_a_silent_leader_is_replaced_after_one_lease_duration(client: KubeClient) -> None:
    a, b = elector(client, "a"), elector(client, "b")
    await a.acquire()
    # a dies without releasing: no hold(), no release(); b must wait for the record to go stale.
    started = time.monotonic()
    with anyio.fail_after(2.0 + 2 * 0.44 + 1.0):
        await b.acquire()
    waited = time.monotonic() - started
    assert waited >= 2.0 * 0.9, f"took over after {waited:.2f} s, before the lease could expire"
    spec = await lease_spec(client)
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1


async def test_renewal_failures_lose_leadership_within_the_renew_deadline(
    api: RunningApiServer, client: KubeClient
) -> None:
    registry = CollectorRegistry()
    a = elector(client, "a", RuntimeMetrics(registry))
    await a.acquire()
    api.faults.add(FaultRule(method="PUT", path="/leases/", status=500))
    api.faults.add(FaultRule(method="GET", path="/leases/", status=500))
    with anyio.fail_after(1.0 + 2 * 0.2 + 2.0), pytest.raises(LeadershipLost):
        await a.hold()
    # It kept trying for the whole renew deadline, counted from its last renewal.
    assert time.monotonic() - a.last_renewal >= 1.0
    assert not a.leading
    assert registry.get_sample_value("leader_election_master_status", {"name": LEASE_NAME}) == 0


async def test_renewals_keep_acquire_time_and_move_renew_time(client: KubeClient) -> None:
    a = elector(client, "a")
    await a.acquire()
    first = await lease_spec(client)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.hold)

        async def renewed() -> bool:
            return (await lease_spec(client))["renewTime"] != first["renewTime"]

        await eventually(renewed, within=3)
        tg.cancel_scope.cancel()
    later = await lease_spec(client)
    assert later["acquireTime"] == first["acquireTime"]
    assert later["leaseTransitions"] == 0
    assert a.healthy()


async def test_a_conflicting_write_is_not_leadership(api: RunningApiServer, client: KubeClient) -> None:
    """Two candidates see a free lease at once: the API server's optimistic lock lets exactly one win."""
    a = elector(client, "a")
    await a.acquire()
    await a.release()
    b, c = elector(client, "b"), elector(client, "c")
    results: dict[str, bool] = {}

    async def attempt(e: LeaderElector) -> None:
        results[e.config.identity] = await e._try_acquire_or_renew()

    # Both read the released lease before either writes: the second write carries a stale resourceVersion.
    api.faults.add(FaultRule(method="PUT", path="/leases/", status=0, latency=0.2, count=2))
    async with anyio.create_task_group() as tg:
        tg.start_soon(attempt, b)
        tg.start_soon(attempt, c)
    assert sorted(results.values()) == [False, True], results
    winner = next(name for name, won in results.items() if won)
    assert (await lease_spec(client))["holderIdentity"] == winner


async def test_health_fails_when_a_leader_stops_renewing(client: KubeClient) -> None:
    from service.runtime.clock import FakeClock

    clock = FakeClock()
    a = LeaderElector(client, LeaderElectionConfig(LEASE_NAME, "default", "a", 2.0, 1.0, 0.2), clock=clock)
    assert a.healthy()  # not leading: nothing to say
    await a.acquire()
    assert a.healthy()
    clock.advance(2.5)
    assert a.healthy(tolerance=1.0)
    clock.advance(1.0)
    assert not a.healthy(tolerance=1.0)


async def take_over(client: KubeClient, identity: str) -> None:
    """Another replica's valid takeover, written as it would write it."""
    lease = await client.get(r.LEASE, LEASE_NAME, "default")
    lease["spec"] = {**lease["spec"], "holderIdentity": identity, "renewTime": lease["spec"]["renewTime"]}
    await client.update(r.LEASE, lease)


async def test_a_leader_that_reads_another_holder_steps_down_at_once(client: KubeClient) -> None:
    """The split brain the chaos soak found: after reading the successor's Lease, the next renewal was
    built from that object and took the lease back. Now the first read of another holder ends leadership
    (within one retry period), and the successor's lease is left alone."""
    registry = CollectorRegistry()
    a = elector(client, "a", RuntimeMetrics(registry))
    await a.acquire()
    await take_over(client, "b")
    taken = await lease_spec(client)
    started = time.monotonic()
    with anyio.fail_after(2.0), pytest.raises(LeadershipLost, match="held by b"):
        await a.hold()
    assert time.monotonic() - started < 0.2 + 0.3  # one retry period, and the read
    assert not a.leading
    assert registry.get_sample_value("leader_election_master_status", {"name": LEASE_NAME}) == 0
    assert await lease_spec(client) == taken


async def test_a_leader_resumed_after_its_renew_deadline_steps_down_without_writing(
    api: RunningApiServer, client: KubeClient
) -> None:
    """Frozen (SIGSTOP, a stalled loop) past its renew deadline, a leader gives up before any request: a
    successor may hold the lease by now, and a write could only take it back."""
    a = elector(client, "a")
    await a.acquire()
    time.sleep(1.2)  # noqa: ASYNC251 - the fault itself: the loop frozen past the 1 s renew deadline
    puts = api.faults.add(FaultRule(method="PUT", path="/leases/", status=0))
    gets = api.faults.add(FaultRule(method="GET", path="/leases/", status=0))
    with anyio.fail_after(1.0), pytest.raises(LeadershipLost, match="renew deadline"):
        await a.hold()
    assert puts.hits == 0 and gets.hits == 0
    assert not a.leading


async def test_a_renewal_answered_after_a_freeze_does_not_count_as_fresh(
    api: RunningApiServer, client: KubeClient
) -> None:
    """Others measure a lease from when it was written, so a renewal counts from when it was sent: one
    whose answer comes back after the renew deadline does not extend leadership."""
    a = elector(client, "a")
    await a.acquire()
    sent = time.monotonic()
    api.faults.add(FaultRule(method="PUT", path="/leases/", status=0, latency=1.2, count=1))
    assert await a._try_acquire_or_renew()
    assert a.last_renewal <= sent + 0.1
    with anyio.fail_after(1.0), pytest.raises(LeadershipLost, match="renew deadline"):
        await a.hold()
