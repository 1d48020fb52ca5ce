"""Leader election between real ``run`` processes on a real ``coordination.k8s.io/v1`` Lease.

Each test runs twice: against the session's kube-apiserver (kpack's and the project's CRDs installed) and,
for comparison, against the API emulator; the same assertions must hold on both. The replicas are the
``run`` processes of ``tests/test_run_process.py`` (its ``replicas`` helper), pointed at a Lease in a
namespace of the test's own, with short timings (``TIMINGS``).

What the Lease itself shows is recorded by a watch opened before the first replica starts: every write
to it, in order, so that a test asserts on the history — who held it, the release on a clean shutdown
(empty holder, one-second duration, as client-go's ``ReleaseOnCancel``), the takeover's transition count,
and that a leader resumed from SIGSTOP wrote nothing — not on a snapshot that a quick successor may
already have overwritten. The replicas' own view (``leader_election_master_status``, ``/readyz``) is
polled; no test sleeps for a fixed time.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from service.kube.timestamps import MICRO_TIME
from simcluster.crds import bundled_crd_dirs, read_documents
from simcluster.devcluster import kubeconfig, write_kubeconfig
from simcluster.server import RunningApiServer
from tests.controlplane.build import binaries
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.helpers import eventually
from tests.test_run_process import Replica, replicas

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]
LEASE = "kpack-image-builder-leader-election"  # the default --leader-election-id
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 4, 3, 0.5
TIMINGS = [
    f"--lease-duration={LEASE_DURATION}s",
    f"--renew-deadline={RENEW_DEADLINE}s",
    f"--retry-period={RETRY_PERIOD}s",
]
# A candidate retries every retry period plus up to 1.2 of it in jitter (client-go's JitterFactor).
RETRY_MAX = RETRY_PERIOD * 2.2
# metav1.MicroTime as kube-apiserver writes it (RFC3339Micro, UTC): six digits, always.
MICRO_TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

EMULATOR, REAL = "emulator", "kube-apiserver"


@dataclass
class Cluster:
    kubeconfig: Path  # an administrator's: the replicas' and the test's
    client: KubeClient


@pytest.fixture(scope="session")
async def real_with_crds(real_control_plane: ControlPlane) -> ControlPlane:
    """The session's kube-apiserver with what ``run`` watches installed: kpack's CRDs and the project's."""
    async with KubeClient(await load_kubeconfig(str(real_control_plane.kubeconfig))) as client:
        await apply_crds(client, read_documents(bundled_crd_dirs()))
    return real_control_plane


@pytest.fixture(
    params=[
        pytest.param(REAL, marks=pytest.mark.timeout(3600 if binaries().missing() else 120)),
        EMULATOR,
    ]
)
def kubeconfig_path(request: pytest.FixtureRequest) -> Path:
    # Synchronous, so that it may ask for the (async) server fixtures by name: only the one it needs.
    if request.param == REAL:
        control_plane: ControlPlane = request.getfixturevalue("real_with_crds")
        return control_plane.kubeconfig
    api: RunningApiServer = request.getfixturevalue("api")  # the root conftest's: the CRDs loaded
    path: Path = request.getfixturevalue("tmp_path") / "emulator.kubeconfig"
    write_kubeconfig(path, kubeconfig(api.url))
    return path


@pytest.fixture
async def cluster(kubeconfig_path: Path) -> AsyncIterator[Cluster]:
    """The kubeconfig the replicas use, and a client of the same server for the test."""
    async with KubeClient(await load_kubeconfig(str(kubeconfig_path)), timeout=10) as client:
        yield Cluster(kubeconfig_path, client)


@pytest.fixture
async def namespace(cluster: Cluster) -> AsyncIterator[str]:
    """A namespace of the test's own for the Lease (the real server is shared by the session)."""
    name = f"le-{uuid.uuid4().hex[:8]}"
    await cluster.client.create(
        r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    with contextlib.suppress(errors.NotFound):
        await cluster.client.delete(r.NAMESPACE, name)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# ---------------------------------------------------------------------------------------------- the Lease
@dataclass
class History:
    """Every version of the Lease the watch delivered, in order: (resourceVersion, spec)."""

    writes: list[tuple[str, Obj]] = field(default_factory=list)

    def specs(self) -> list[Obj]:
        return [spec for _, spec in self.writes]

    def holders(self) -> list[str]:
        """The holders in turn, a run of renewals by one holder counted once."""
        out: list[str] = []
        for spec in self.specs():
            holder = spec.get("holderIdentity") or ""
            if not out or out[-1] != holder:
                out.append(holder)
        return out

    def seen(self, resource_version: str) -> bool:
        return any(rv == resource_version for rv, _ in self.writes)


@contextlib.asynccontextmanager
async def lease_history(client: KubeClient, namespace: str) -> AsyncIterator[History]:
    """Watch the test's namespace (empty: the Lease does not exist yet) from its list's resourceVersion, so
    that the Lease's creation and each write after it arrive."""
    history = History()
    _, version = await client.list_all(r.LEASE, namespace)

    async def record() -> None:
        async with client.watch(r.LEASE, namespace, resource_version=version) as events:
            async for kind, obj in events:
                if kind in ("ADDED", "MODIFIED") and obj["metadata"]["name"] == LEASE:
                    history.writes.append((obj["metadata"]["resourceVersion"], obj["spec"]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(record)
        try:
            yield history
        finally:
            tg.cancel_scope.cancel()


async def caught_up(client: KubeClient, namespace: str, history: History) -> Obj:
    """The Lease as it is now, once the watch has delivered that version: the history is complete up to
    here (a watch delivers in order)."""
    lease = await client.get(r.LEASE, LEASE, namespace)
    version = lease["metadata"]["resourceVersion"]
    await eventually(lambda: history.seen(version), 5, f"the watch delivers version {version}")
    spec: Obj = lease["spec"]
    return spec


def moment(micro_time: str) -> float:
    return datetime.strptime(micro_time, MICRO_TIME).replace(tzinfo=UTC).timestamp()


def assert_well_formed(spec: Obj) -> None:
    """Every field client-go's resource lock writes, in the API's formats."""
    assert set(spec) >= {
        "holderIdentity",
        "leaseDurationSeconds",
        "acquireTime",
        "renewTime",
        "leaseTransitions",
    }, spec
    for key in ("acquireTime", "renewTime"):
        assert MICRO_TIME_FORMAT.match(spec[key]), (key, spec[key], MICRO_TIME)
    assert isinstance(spec["leaseDurationSeconds"], int) and spec["leaseDurationSeconds"] > 0, spec
    assert isinstance(spec["leaseTransitions"], int) and spec["leaseTransitions"] >= 0, spec


# ---------------------------------------------------------------------------------------------- replicas
def identity(replica: Replica) -> str:
    """The candidate's identity, as its ``starting`` line says (POD_NAME and a random suffix)."""
    [starting] = [e for e in replica.logs if e.get("msg") == "starting"]
    return str(starting["identity"])


async def exits(replica: Replica, code: int, within: float = 15) -> None:
    """The replica exits with ``code``; if not, its warnings and errors say why."""
    got = await replica.exit_code(within)
    said = [e for e in replica.logs if e.get("level") in ("warn", "error", "raw")]
    assert got == code, f"{identity(replica)} exited {got}: {said}"


async def states(http: aiohttp.ClientSession, group: list[Replica]) -> list[tuple[bool, int]]:
    """Each replica's (leading, /readyz status)."""
    return [(await rep.leading(http), await rep.probe(http, "/readyz")) for rep in group]


async def one_leader_and_ready_standbys(
    http: aiohttp.ClientSession, group: list[Replica], client: KubeClient, namespace: str
) -> Replica:
    """Wait until exactly one replica says it leads, the Lease names it, and every other replica is ready
    (warm caches) but not leading; return the leader."""

    async def settled() -> Replica | None:
        seen = await states(http, group)
        if [leading for leading, _ in seen].count(True) != 1 or any(code != 200 for _, code in seen):
            return None
        leader = group[[leading for leading, _ in seen].index(True)]
        try:
            lease = await client.get(r.LEASE, LEASE, namespace)
        except errors.NotFound:
            return None
        return leader if lease["spec"].get("holderIdentity") == identity(leader) else None

    leader = await eventually(settled, 15, "one leader named by the Lease, the others ready standbys")
    assert leader is not None
    return leader


# ---------------------------------------------------------------------------------------------- tests
async def test_one_of_three_replicas_leads_and_a_clean_shutdown_hands_over_at_once(
    cluster: Cluster, namespace: str, http: aiohttp.ClientSession
) -> None:
    flags = ["--leader-elect", f"--leader-election-namespace={namespace}", *TIMINGS]
    async with lease_history(cluster.client, namespace) as history, replicas(cluster.kubeconfig) as start:
        group = [await start(*flags) for _ in range(3)]
        leader = await one_leader_and_ready_standbys(http, group, cluster.client, namespace)
        standbys = [rep for rep in group if rep is not leader]
        for rep in group:
            assert await rep.probe(http, "/healthz") == 200
        before = await caught_up(cluster.client, namespace, history)
        assert_well_formed(before)
        assert before["holderIdentity"] == identity(leader)
        assert before["leaseDurationSeconds"] == LEASE_DURATION
        # The first holder created it: no transition yet; and nobody else ever held it.
        assert before["leaseTransitions"] == 0
        assert history.holders() == [identity(leader)]

        # SIGTERM: the leader stops its controllers, then gives the Lease up before it exits.
        leader.signal(signal.SIGTERM)
        await exits(leader, 0, 15)
        assert "released leader lease" in leader.messages()

        async def successor() -> Replica | None:
            for rep in standbys:
                if await rep.leading(http):
                    return rep
            return None

        new_leader = await eventually(successor, LEASE_DURATION + 2, "a standby leading after the release")
        assert new_leader is not None
        after = await caught_up(cluster.client, namespace, history)
        assert_well_formed(after)

        # The history: the old holder, the release (no holder, a 1 s lease), the successor.
        assert history.holders() == [identity(leader), "", identity(new_leader)], history.specs()
        # As client-go's ReleaseOnCancel writes it: an empty holder (present, not omitted), a 1 s lease.
        [release] = [spec for spec in history.specs() if spec["holderIdentity"] == ""]
        assert release["leaseDurationSeconds"] == 1
        assert release["leaseTransitions"] == 0  # a release is not a transition
        assert MICRO_TIME_FORMAT.match(release["renewTime"]), release
        assert after["holderIdentity"] == identity(new_leader)
        assert after["leaseTransitions"] == 1
        assert after["leaseDurationSeconds"] == LEASE_DURATION
        # Taken over at the successor's next retry (0.5-1.1 s), not once the lease (4 s) would have expired:
        # measured on the Lease itself, from the release to the takeover (both stamped by this machine's
        # clock), with room for a loaded machine.
        handover = moment(after["acquireTime"]) - moment(release["renewTime"])
        assert 0 <= handover < LEASE_DURATION - 1, f"took over {handover:.2f} s after the release"

        # The third replica stays a ready standby.
        [other] = [rep for rep in standbys if rep is not new_leader]
        assert not await other.leading(http)
        assert await other.probe(http, "/readyz") == 200
        for rep in (new_leader, other):
            rep.signal(signal.SIGTERM)
        for rep in (new_leader, other):
            await exits(rep, 0, 15)


async def test_a_frozen_leader_is_replaced_after_the_lease_expires_and_steps_down_without_writing(
    cluster: Cluster, namespace: str, http: aiohttp.ClientSession
) -> None:
    flags = ["--leader-elect", f"--leader-election-namespace={namespace}", *TIMINGS]
    async with lease_history(cluster.client, namespace) as history, replicas(cluster.kubeconfig) as start:
        group = [await start(*flags) for _ in range(2)]
        frozen = await one_leader_and_ready_standbys(http, group, cluster.client, namespace)
        [successor] = [rep for rep in group if rep is not frozen]

        frozen.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            await eventually(
                lambda: successor.leading(http),
                LEASE_DURATION + RETRY_MAX + 3,
                "the standby takes over the frozen leader's lease",
            )
            took = time.monotonic() - stopped
            taken = await caught_up(cluster.client, namespace, history)
        finally:
            frozen.signal(signal.SIGCONT)
            resumed = datetime.now(UTC).timestamp()
        # It can have renewed at most a retry period (and a request) before it froze, and the standby
        # measures the lease from when it saw that renewal: it waited out (nearly) the whole lease.
        assert took >= LEASE_DURATION - RETRY_PERIOD - 0.5, f"took over {took:.2f} s after the freeze"
        # On the Lease: the takeover was written a lease duration after the frozen leader's last renewal
        # (both stamped by this machine's clock; a candidate stamps its write when the attempt starts, before
        # the read that finds the lease expired, hence the retry period's slack); a transition, no release.
        frozen_specs = [s for s in history.specs() if s.get("holderIdentity") == identity(frozen)]
        assert history.holders() == [identity(frozen), identity(successor)], history.specs()
        assert taken["holderIdentity"] == identity(successor)
        assert taken["leaseTransitions"] == frozen_specs[-1]["leaseTransitions"] + 1
        gap = moment(taken["acquireTime"]) - moment(frozen_specs[-1]["renewTime"])
        assert gap >= LEASE_DURATION - RETRY_PERIOD, f"taken {gap:.2f} s after the last renewal"

        # Resumed: its renew deadline passed long ago, so it steps down before any request and exits 1 —
        # at once, not after another renew deadline of attempts, any of which could take the Lease back.
        # Timed by its own log line (milliseconds), not by its exit, which a loaded machine may slow.
        await exits(frozen, 1, 10)
        lost = next(e for e in frozen.logs if "not renewed within the renew deadline" in str(e.get("msg")))
        stepped_down = moment(str(lost["ts"]).replace("Z", "000Z")) - resumed
        assert stepped_down < 1.0, f"the resumed leader went on for {stepped_down:.2f} s"
        assert "released leader lease" not in frozen.messages()
        # Its exit is final: once the watch has caught up, everything since the freeze is the successor's.
        final = await caught_up(cluster.client, namespace, history)
        assert history.holders() == [identity(frozen), identity(successor)], history.specs()
        assert final["holderIdentity"] == identity(successor)
        assert final["leaseTransitions"] == taken["leaseTransitions"]
        assert await successor.leading(http)
        assert await successor.probe(http, "/healthz") == 200
        successor.signal(signal.SIGTERM)
        await exits(successor, 0, 15)
