"""Objects read by name through a short-lived cache: one request per TTL, one for concurrent misses, none
kept for absences, and an entry a caller found wrong read anew at once. Requests are counted by the
emulator (a fault rule that fails nothing counts what it matches)."""

from __future__ import annotations

import anyio
import pytest

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.resources import SECRET
from service.runtime import TTLReads
from service.runtime.clock import FakeClock
from simcluster.faults import FaultRule
from simcluster.server import RunningApiServer
from tests.helpers import eventually
from tests.runtime.conftest import DEADLINE

pytestmark = pytest.mark.anyio


def secret(name: str, value: str, namespace: str = "default") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"value": value},
    }


def reads_of(api: RunningApiServer, name: str, latency: float = 0.0) -> FaultRule:
    """Counts the GETs of one Secret (and delays each by ``latency``)."""
    return api.faults.add(FaultRule(method="GET", path=f"/secrets/{name}$", status=0, latency=latency))


async def data(reads: TTLReads, name: str) -> dict[str, str]:
    return dict((await reads.get(name, "default")).get("data") or {})


async def test_a_fresh_entry_is_served_without_a_request_and_an_old_one_is_read_again(
    api: RunningApiServer, client: KubeClient
) -> None:
    await client.create(SECRET, secret("pull", "one"), "default")
    counted = reads_of(api, "pull")
    clock = FakeClock()
    reads = TTLReads(client, SECRET, 30.0, clock=clock)
    first = await data(reads, "pull")
    await client.merge_patch(SECRET, "pull", {"stringData": {"value": "two"}}, "default")
    clock.advance(29.9)
    assert await data(reads, "pull") == first  # still fresh: the change is not seen yet
    assert counted.hits == 1
    clock.advance(0.2)
    assert await data(reads, "pull") != first  # past the TTL: read again
    assert counted.hits == 2


async def test_concurrent_misses_share_one_request(api: RunningApiServer, client: KubeClient) -> None:
    await client.create(SECRET, secret("pull", "one"), "default")
    counted = reads_of(api, "pull", latency=0.2)  # long enough for all of them to ask while it is read
    reads = TTLReads(client, SECRET, 30.0)
    got: list[dict[str, object]] = []

    async def get() -> None:
        got.append(await reads.get("pull", "default"))

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(get)
    assert counted.hits == 1
    assert len(got) == 8 and all(g is got[0] for g in got)


async def test_ttl_zero_reads_every_time_but_still_shares_a_read_in_flight(
    api: RunningApiServer, client: KubeClient
) -> None:
    await client.create(SECRET, secret("pull", "one"), "default")
    counted = reads_of(api, "pull")
    reads = TTLReads(client, SECRET, 0.0)
    await reads.get("pull", "default")
    await reads.get("pull", "default")
    assert counted.hits == 2
    assert len(reads) == 0


async def test_a_forgotten_entry_is_read_at_once(api: RunningApiServer, client: KubeClient) -> None:
    await client.create(SECRET, secret("pull", "old"), "default")
    reads = TTLReads(client, SECRET, 3600.0)
    old = await data(reads, "pull")
    await client.merge_patch(SECRET, "pull", {"stringData": {"value": "rotated"}}, "default")
    assert await data(reads, "pull") == old
    reads.forget("pull", "default")
    assert await data(reads, "pull") != old


async def test_an_absence_is_not_kept(api: RunningApiServer, client: KubeClient) -> None:
    counted = reads_of(api, "late", latency=0.1)
    reads = TTLReads(client, SECRET, 3600.0)
    failures: list[BaseException] = []

    async def get() -> None:
        try:
            await reads.get("late", "default")
        except errors.NotFound as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(get)
    assert len(failures) == 3 and counted.hits == 1  # every waiter hears of the one read's answer
    await client.create(SECRET, secret("late", "here"), "default")
    assert await data(reads, "late")  # created since: found on the next read, not after the TTL
    assert counted.hits == 2


async def test_a_cancelled_read_leaves_its_waiters_to_read_for_themselves(
    api: RunningApiServer, client: KubeClient
) -> None:
    await client.create(SECRET, secret("pull", "one"), "default")
    counted = reads_of(api, "pull", latency=0.3)
    reads = TTLReads(client, SECRET, 30.0)
    got: list[dict[str, object]] = []
    asked = anyio.Event()

    async def first() -> None:
        with anyio.CancelScope() as scope:
            leader_scope.append(scope)
            asked.set()
            await reads.get("pull", "default")

    async def second() -> None:
        got.append(await reads.get("pull", "default"))

    leader_scope: list[anyio.CancelScope] = []
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await asked.wait()
            await anyio.lowlevel.checkpoint()  # the first is in its request
            tg.start_soon(second)
            await eventually(lambda: counted.hits == 1, what="the first read reached the emulator")
            leader_scope[0].cancel()
    assert len(got) == 1 and got[0]["metadata"]["name"] == "pull"
    assert counted.hits == 2


async def test_the_cache_holds_at_most_its_bound_dropping_the_oldest_read(
    api: RunningApiServer, client: KubeClient
) -> None:
    for name in ("a", "b", "c"):
        await client.create(SECRET, secret(name, name), "default")
    counted = reads_of(api, "[abc]")
    reads = TTLReads(client, SECRET, 3600.0, max_entries=2)
    for name in ("a", "b", "c"):
        await reads.get(name, "default")
    assert len(reads) == 2
    await reads.get("c", "default")
    await reads.get("b", "default")
    assert counted.hits == 3
    await reads.get("a", "default")  # the oldest read went first
    assert counted.hits == 4
