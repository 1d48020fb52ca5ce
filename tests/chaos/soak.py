"""A chaos soak of the whole system, with real processes: what an operator runs before trusting a release,
and what CI runs at a smaller size (``tests/chaos/test_chaos_soak.py``; by hand: ``benchmarks/chaos.py``).

Design:

- **Processes as in a cluster.** One ``devcluster --kpack`` process (the API emulator and the kpack
  simulator) pushing to an OCI registry in this process that requires credentials, so every push and
  every droplet deletion needs the right Secret; N ``run`` replicas with leader election and short lease
  timings, each logging JSON to its own file. A supervisor plays kubelet: a replica that exits, for any
  reason, is started again (a new identity, as a restarted pod gets).
- **A plan and a schedule, both from the seed.** The workloads (every kind: default builder, custom
  builders, failing builds, unknown buildpacks, restages, workloads deleted mid-build or after finishing,
  a namespace deleted mid-build, probes for the hanging-registry phase) and the chaos schedule (API
  faults of every kind the emulator has, over its HTTP API; leaders SIGKILLed, SIGTERMed and frozen with
  SIGSTOP for longer than the lease) are fixed by the seed, so a failing run can be repeated. What the
  schedule meets at run time (which replica leads, how far a build got) is not, and is recorded.
- **Observers, not sleeps.** Every replica's ``/metrics`` is scraped every ``scrape_interval`` for
  ``leader_election_master_status`` and its reconcile count (a failed scrape, as of a frozen replica, is
  unknown, never "leading"); the Lease is watched for its holder history; the workloads are listed
  twice a second for their progress. Waits poll with deadlines; the pauses between chaos actions are the
  schedule itself.
- **Invariants at the end**, each failure naming the objects and the evidence (conditions, kpack's
  message, registry tags, log file and line) so a developer can act on it without rerunning:
  terminal states as planned and nothing stuck; one kpack Image per app and one Builder per buildpack
  list; no Build and no droplet left for what was deleted; every droplet present; no traceback in any
  replica's log; SIGTERMed replicas exit 0; never two leaders for longer than a retry period, and no
  reconciles by a replica the Lease does not name; handover after SIGKILL within its bound; a registry
  that never answers does not stall unrelated work.
- **A hanging registry** is a TCP server here that accepts connections and never answers. The service
  talks to one registry only (its repository prefix), so it is reached through kpack Images made for it
  in their own namespace, labelled as Korifi's: their Builds get the service's droplet finalizer, and
  deleting them makes the service call the silent registry, while workloads elsewhere are created and
  deleted and must not wait for it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio
import anyio.abc
import orjson

from service.demo import PULL_SECRET, SERVICE_ACCOUNT, create_space
from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from service.reconcilers import korifi as k
from service.runtime.leader import JITTER
from service.sim.kpack.options import ENV_FAIL
from service.sim.registry import OciRegistry, RunningRegistry, running_registry
from tests.helpers import eventually

Obj = dict[str, Any]
T = TypeVar("T")

SERVICE = (sys.executable, "-m", "service")
LEASE_NAMESPACE = "default"
LEASE_NAME = "kpack-image-builder-leader-election"
CLUSTER_BUILDER = "cf-kpack-cluster-builder"
# The default objects' Secret (namespace cf) holds user/password; create_space's hold demo/demo.
REGISTRY_USERS = {"user": "password", "demo": "demo"}
DOOMED_SPACE = "space-doomed"
HANG_SPACE = "space-hang"
MIN_WORKLOADS = 40

# Workload kinds.
DEFAULT = "default"
CUSTOM = "custom"
NEW_BUILDER = "new-builder"  # custom, the first of its buildpack list, created while Builder watches lag
FAILING = "failing"
INVALID = "invalid"
RESTAGE = "restage"  # a second workload of an app, with a new package, once the first has finished
DELETE_MID = "delete-mid-build"
DELETE_DONE = "delete-after-finishing"  # deleted in the late phase, while the registry hangs
DOOMED = "doomed"  # in the namespace deleted mid-build
PROBE = "probe"  # created in the late phase, while the registry hangs
DELETED_KINDS = frozenset({DELETE_MID, DELETE_DONE, DOOMED})

BUILDPACK_LISTS = (
    ("paketo-buildpacks/go",),
    ("paketo-buildpacks/nodejs", "paketo-buildpacks/procfile"),
    ("paketo-buildpacks/java",),
    ("paketo-buildpacks/ruby", "paketo-buildpacks/procfile"),
)
# Lists no other workload uses: each new-builder workload makes a Builder nobody has seen yet.
NEW_BUILDPACK_LISTS = (
    ("paketo-buildpacks/procfile",),
    ("paketo-buildpacks/go", "paketo-buildpacks/procfile"),
    ("paketo-buildpacks/java", "paketo-buildpacks/procfile"),
    ("paketo-buildpacks/nodejs",),
    ("paketo-buildpacks/ruby",),
)
UNKNOWN_BUILDPACKS = (("paketo-buildpacks/rubyy",), ("paketo-buildpacks/go", "paketo-buildpacks/cobol"))

FAULT_KINDS = ("drop-watches", "gone", "5xx", "429", "conflict", "latency")
# Builder lists and watches slowed, then every watch dropped: the replicas' Builder caches lag behind
# the Builders they create for the new-builder workloads made right then.
BUILDER_LAG_SECONDS = 2.0
PROCESS_KINDS = ("kill", "term", "freeze")
# Paths API faults aim at, with weights: the Lease is hit rarely, since each hit can cost a leader.
FAULT_PATHS = (
    ("/buildworkloads", 4),
    ("/images", 3),
    ("/builds", 3),
    ("/builders", 2),
    ("/secrets/", 2),
    ("/serviceaccounts/", 2),
    ("/leases/", 1),
)
CONFLICT_PATHS = ("/buildworkloads/", "/builds/", "/images/", "/builders/")


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SoakSettings:
    workloads: int = 80
    replicas: int = 3
    spaces: int = 4
    seed: int = 1
    chaos_seconds: float = 40.0  # the schedule's length (its last actions may finish a little later)
    settle_seconds: float = 75.0  # deadline for everything to reach its end state once the chaos stops
    build_seconds: float = 0.8
    lease_duration: float = 3.0
    renew_deadline: float = 2.0
    retry_period: float = 0.5
    scrape_interval: float = 0.2
    scrape_timeout: float = 0.5
    workers: int = 4
    registry_timeout: float = 12.0  # the replicas' --registry-timeout
    hanging_registry: bool = True
    hang_builds: int = 6  # more than the workers: a worker held per hung call would starve the rest
    graceful_shutdown: float = 5.0
    restart_delay: float = 0.5  # kubelet's restart of an exited container, shortened

    @property
    def freeze_seconds(self) -> float:
        """How long a leader stays SIGSTOPped: past its lease, so a standby takes over meanwhile."""
        return self.lease_duration + 1.5

    @property
    def handover_bound(self) -> float:
        """A standby takes over at most a lease duration after last seeing the lease change, and sees it
        at most one jittered retry period late, then tries every jittered retry period; plus a second for
        the API and the watch."""
        return self.lease_duration + 2 * (1 + JITTER) * self.retry_period + 1.0

    @property
    def stall_bound(self) -> float:
        """Unrelated work that takes longer than this while the registry hangs waited for it."""
        return max(self.build_seconds + 5.0, self.registry_timeout * 2 / 3)


# ------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Workload:
    name: str
    namespace: str
    app: str
    kind: str
    buildpacks: tuple[str, ...] = ()
    fail: bool = False
    package: int = 1  # the source image's tag: a restage pushes a new package

    @property
    def deleted(self) -> bool:
        return self.kind in DELETED_KINDS

    @property
    def expected(self) -> tuple[str, str] | None:
        """``(Succeeded status, reason)`` at the end, or None for a workload that must be gone."""
        if self.deleted:
            return None
        if self.kind == INVALID:
            return ("False", k.INVALID_BUILDPACKS)
        if self.fail:
            return ("False", k.BUILD_FAILED)
        return ("True", k.BUILD_SUCCEEDED)

    @property
    def makes_image(self) -> bool:
        return self.kind != INVALID

    def describe(self) -> str:
        what = self.kind + (" (SIM_KPACK_FAIL)" if self.fail else "")
        if self.buildpacks:
            what += " [" + ", ".join(b.rpartition("/")[2] for b in self.buildpacks) + "]"
        return f"{self.namespace}/{self.name} {what}"

    def body(self, registry: str) -> Obj:
        spec: Obj = {
            "buildRef": {"name": self.name},
            "builderName": k.BUILDER_NAME,
            "source": {
                "registry": {
                    "image": f"{registry}/packages/{self.app}:{self.package}",
                    "imagePullSecrets": [{"name": PULL_SECRET}],
                }
            },
            "env": [{"name": ENV_FAIL, "value": "true"}] if self.fail else [],
        }
        if self.buildpacks:
            spec["buildpacks"] = list(self.buildpacks)
        return {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {k.APP_GUID_LABEL: self.app, k.BUILD_GUID_LABEL: self.name},
            },
            "spec": spec,
        }


def spaces(settings: SoakSettings) -> list[str]:
    return [f"space-{i}" for i in range(settings.spaces)]


def plan(settings: SoakSettings) -> list[Workload]:
    """Every workload of the soak, in the order the seed gives them."""
    w = settings.workloads
    if w < MIN_WORKLOADS:
        raise ValueError(f"a soak needs at least {MIN_WORKLOADS} workloads, not {w}")
    rng = random.Random(f"{settings.seed}/plan")
    names = spaces(settings)
    counts = {
        NEW_BUILDER: 3,
        DOOMED: max(4, w // 12),
        DELETE_MID: max(3, w // 12),
        DELETE_DONE: 3,
        PROBE: 3,
        RESTAGE: max(3, w // 10),
        INVALID: max(2, w // 20),
        FAILING: max(3, w // 10),
    }
    rest = w - sum(counts.values())
    counts[CUSTOM] = rest * 2 // 5
    counts[DEFAULT] = rest - counts[CUSTOM]
    firsts: list[tuple[str, tuple[str, ...], bool]] = []
    for kind in (DEFAULT, CUSTOM, NEW_BUILDER, FAILING, INVALID, DELETE_MID, DELETE_DONE, DOOMED, PROBE):
        for n in range(counts[kind]):
            buildpacks: tuple[str, ...] = ()
            if kind == NEW_BUILDER:
                buildpacks = NEW_BUILDPACK_LISTS[n % len(NEW_BUILDPACK_LISTS)]
            elif kind == CUSTOM or (kind in (DOOMED, DELETE_MID) and n % 2):
                buildpacks = rng.choice(BUILDPACK_LISTS)
            elif kind == INVALID:
                buildpacks = rng.choice(UNKNOWN_BUILDPACKS)
            firsts.append((kind, buildpacks, kind == FAILING))
    rng.shuffle(firsts)
    out: list[Workload] = []
    for i, (kind, buildpacks, fail) in enumerate(firsts, start=1):
        namespace = DOOMED_SPACE if kind == DOOMED else rng.choice(names)
        out.append(Workload(f"wl-{i:03d}", namespace, f"app-{i:03d}", kind, buildpacks, fail))
    # Restages go to apps that keep their Image: default, custom and failing ones (a failing app's
    # restage is its fix: a new package that builds).
    candidates = [x for x in out if x.kind in (DEFAULT, CUSTOM, FAILING)]
    for original in rng.sample(candidates, counts[RESTAGE]):
        out.append(
            Workload(
                f"{original.name}-r",
                original.namespace,
                original.app,
                RESTAGE,
                original.buildpacks,
                fail=False,
                package=2,
            )
        )
    return out


def restaged(workloads: Iterable[Workload]) -> dict[str, Workload]:
    """The first workload of each restaged app, by the restage's name."""
    items = list(workloads)
    by_app = {(w.namespace, w.app): w for w in items if w.kind != RESTAGE}
    return {w.name: by_app[(w.namespace, w.app)] for w in items if w.kind == RESTAGE}


# ------------------------------------------------------------------------------------------- the schedule
@dataclass(frozen=True)
class Action:
    at: float  # seconds after the chaos starts
    kind: str
    detail: Any = None  # workload names, a fault rule, ...

    def describe(self) -> str:
        detail = self.detail
        if isinstance(detail, tuple):
            detail = ", ".join(str(d) for d in detail)
        elif isinstance(detail, dict):
            detail = orjson.dumps(detail).decode()
        return f"t+{self.at:5.1f}s {self.kind}{' ' + str(detail) if detail else ''}"


def fault_rule(kind: str, rng: random.Random) -> Obj:
    """An emulator fault rule (docs/emulator.md) of one kind, its parameters drawn from ``rng``."""
    paths, weights = zip(*FAULT_PATHS, strict=True)

    def path() -> str:
        return str(rng.choices(paths, weights)[0])

    if kind == "5xx":
        return {
            "method": rng.choice(("*", "GET")),
            "path": path(),
            "status": rng.choice((500, 503, 504)),
            "count": rng.randint(3, 10),
            "probability": 0.5,
        }
    if kind == "429":
        return {
            "path": path(),
            "status": 429,
            "retryAfter": round(rng.uniform(0.2, 1.0), 2),
            "count": rng.randint(4, 12),
            "probability": 0.7,
        }
    if kind == "conflict":
        return {
            "method": rng.choice(("PATCH", "PUT")),
            "path": rng.choice(CONFLICT_PATHS),
            "status": 409,
            "reason": "Conflict",
            "message": "injected conflict: the object has been modified",
            "count": rng.randint(3, 8),
        }
    if kind == "latency":
        return {
            "path": path(),
            "status": 0,
            "latency": round(rng.uniform(0.3, 1.5), 2),
            "count": rng.randint(5, 15),
            "probability": 0.5,
        }
    raise ValueError(f"not a fault rule kind: {kind}")


def schedule(settings: SoakSettings, workloads: list[Workload]) -> list[Action]:
    """The chaos, in time order: creations, restages, deletions, API faults and process signals."""
    rng = random.Random(f"{settings.seed}/schedule")
    d = settings.chaos_seconds
    actions: list[Action] = []
    created_at: dict[str, float] = {}
    waves: dict[float, list[str]] = defaultdict(list)
    doomed = [w for w in workloads if w.kind == DOOMED]
    early_doomed = {w.name for w in doomed[: (len(doomed) + 1) // 2]}
    for w in workloads:
        if w.kind in (DEFAULT, CUSTOM, FAILING, INVALID, DELETE_DONE) or w.name in early_doomed:
            at = round(rng.uniform(0.0, 0.3 * d if w.kind == DOOMED else 0.6 * d))
            created_at[w.name] = at
            waves[at].append(w.name)
    actions += [Action(at, "create", tuple(names)) for at, names in waves.items()]
    for name, original in restaged(workloads).items():
        when = max(rng.uniform(0.45 * d, 0.9 * d), created_at[original.name] + 3.0)
        actions.append(Action(round(when, 1), "restage", (name,)))
    for w in workloads:
        if w.kind == DELETE_MID:
            actions.append(Action(round(rng.uniform(0.05 * d, 0.85 * d), 1), "delete-mid-build", (w.name,)))
    new_builders = tuple(w.name for w in workloads if w.kind == NEW_BUILDER)
    actions.append(Action(round(rng.uniform(0.2 * d, 0.4 * d), 1), "builder-lag", new_builders))
    late_doomed = tuple(w.name for w in doomed if w.name not in early_doomed)
    actions.append(Action(round(rng.uniform(0.4 * d, 0.6 * d), 1), "delete-namespace", late_doomed))

    kinds = list(PROCESS_KINDS)
    rng.shuffle(kinds)
    t, n = 2.0, 0
    gaps = {
        "kill": settings.lease_duration + 3.0,
        "term": 3.0,
        "freeze": settings.freeze_seconds + settings.lease_duration + 2.0,
    }
    while n < len(kinds) or t < d - 4.0:
        kind = kinds[n] if n < len(kinds) else rng.choice(PROCESS_KINDS)
        actions.append(Action(round(t, 1), kind))
        t += gaps[kind] + rng.uniform(0.5, 2.0)
        n += 1

    t = 1.0
    cycle: list[str] = []
    while t < d:
        if not cycle:
            cycle = list(FAULT_KINDS)
            rng.shuffle(cycle)
        kind = cycle.pop()
        rule = fault_rule(kind, rng) if kind not in ("drop-watches", "gone") else None
        actions.append(Action(round(t, 1), kind, rule))
        t += rng.uniform(1.5, 3.0)
    return sorted(actions, key=lambda a: (a.at, a.kind))


# ------------------------------------------------------------------------------------------- observations
@dataclass
class Sample:
    t: float
    leading: bool | None  # None: the scrape failed (a frozen or dying replica)
    reconciles: float | None


@dataclass
class Replica:
    slot: int
    incarnation: int
    process: anyio.abc.Process
    log_path: Path
    started: float
    ports: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    signals: list[tuple[float, str]] = field(default_factory=list)
    exit_code: int | None = None
    exited_at: float | None = None
    exited: anyio.Event = field(default_factory=anyio.Event)
    # Set once it serves (its signal handlers are in place by then), or once it never will.
    up: anyio.Event = field(default_factory=anyio.Event)
    frozen: bool = False

    @property
    def pod_name(self) -> str:
        return f"replica-{self.slot}-{self.incarnation}"

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    def owns(self, identity: str) -> bool:
        return identity.startswith(self.pod_name + "_")

    def signal(self, signum: signal.Signals, at: float) -> None:
        self.signals.append((at, signum.name))
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)


@dataclass(frozen=True)
class Handover:
    cause: str  # kill, term, freeze
    old: str
    new: str
    at: float  # when the old leader was hit
    seconds: float | None  # None: no other holder within the deadline


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
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == k.SUCCEEDED:
            return dict(c)
    return {}


def ready(obj: Obj | None) -> Obj:
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == k.READY:
            return dict(c)
    return {}


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


# ------------------------------------------------------------------------------------------- the report
@dataclass
class Violation:
    invariant: str
    summary: str
    details: list[str] = field(default_factory=list)


@dataclass
class SoakReport:
    settings: SoakSettings
    workdir: Path
    violations: list[Violation]
    checked: list[str]  # the invariants evaluated
    figures: dict[str, Any]
    timeline: list[str]

    def explain(self, limit: int = 25) -> str:
        s = self.settings
        head = (
            f"chaos soak (seed {s.seed}, {s.workloads} workloads, {s.replicas} replicas): "
            f"{len(self.violations)} of {len(self.checked)} invariants failed"
        )
        lines = [head, f"logs, timeline and figures in {self.workdir}"]
        for v in self.violations:
            lines.append(f"[{v.invariant}] {v.summary}")
            lines += [f"    - {d}" for d in v.details[:limit]]
            if len(v.details) > limit:
                lines.append(f"    ... and {len(v.details) - limit} more (see {self.workdir / 'report.txt'})")
        return "\n".join(lines)

    def figures_text(self) -> str:
        return "\n".join(f"{key}: {value}" for key, value in self.figures.items())

    def full_text(self) -> str:
        return "\n\n".join(
            [
                self.explain(limit=10_000),
                "figures:\n" + self.figures_text(),
                "timeline:\n" + "\n".join(self.timeline),
            ]
        )


# ------------------------------------------------------------------------------------------- helpers
def _child_env(**extra: str) -> dict[str, str]:
    env = {k_: v for k_, v in os.environ.items() if not k_.startswith("KPACK_IMAGE_BUILDER_")}
    env.update(extra)
    return env


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


@asynccontextmanager
async def hanging_server() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers (a registry behind a dead proxy); yields
    its ``host:port``."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:  # read what comes, so the client's writes never block; answer nothing
                    await stream.receive()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        try:
            yield f"127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


TRANSIENT_CODES = frozenset({0, 410, 429, 500, 502, 503, 504})


# ------------------------------------------------------------------------------------------- the soak
class Soak:
    """One run: its plan and schedule (fixed at construction), the processes, the observers and what
    they recorded. ``run()`` does it all and returns the report; the records stay for ``check``."""

    def __init__(
        self, settings: SoakSettings, workdir: Path, say: Callable[[str], None] | None = None
    ) -> None:
        self.s = settings
        self.workdir = workdir
        self._say = say
        self.workloads = plan(settings)
        self.by_name = {w.name: w for w in self.workloads}
        self.actions = schedule(settings, self.workloads)
        self.t0 = time.monotonic()
        self.timeline: list[str] = []
        # filled while running
        self.replicas: list[Replica] = []
        self.stopping_replicas = False
        self.lease_history: list[tuple[float, str]] = []  # (time, holder) at each change of holder
        self.lease_transitions = 0
        self.handovers: list[Handover] = []
        self.freezes: list[tuple[str, float, float]] = []
        self.created: dict[str, float] = {}  # workload name -> when it was created
        self.deleted_at: dict[str, float] = {}
        self.deleted_while: dict[str, str] = {}  # how far a deleted workload had got
        self.not_created: dict[str, str] = {}  # planned workloads the schedule had to leave out, and why
        self.first_running: dict[str, float] = {}
        self.first_terminal: dict[str, float] = {}
        self.done_at: dict[str, float] = {}  # settle items: when first seen done
        self.stuck: dict[str, str] = {}
        self.fault_hits: Counter[str] = Counter()
        self.fault_rules: list[Obj] = []
        self.skipped_actions: list[str] = []
        self.action_errors: list[str] = []
        self.late_started: float | None = None
        self.chaos_started = 0.0
        self.hang_started: float | None = None
        self.hang_released: float | None = None
        self.hang_host: str | None = None
        self.devcluster_exit: int | None = None

    # ----------------------------------------------------------------------------- small things
    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, message: str) -> None:
        line = f"{self.now():7.2f}s {message}"
        self.timeline.append(line)
        if self._say is not None:
            self._say(line)

    async def api(self, call: Callable[[], Awaitable[T]], within: float = 30.0) -> T:
        """A harness call, retried through the faults the soak injects (they hit every client alike)."""
        deadline = time.monotonic() + within
        delay = 0.05
        while True:
            try:
                return await call()
            except errors.ApiError as exc:
                injected = exc.code == 409 and "injected" in exc.message
                if (exc.code not in TRANSIENT_CODES and not injected) or time.monotonic() > deadline:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def create_workload(self, w: Workload) -> None:
        # AlreadyExists: an earlier attempt got through before its answer was lost.
        with contextlib.suppress(errors.AlreadyExists):
            await self.api(lambda: self.client.create(r.BUILD_WORKLOAD, w.body(self.registry.host)))
        self.created[w.name] = self.now()

    async def get_workload(self, w: Workload) -> Obj | None:
        try:
            return await self.api(lambda: self.client.get(r.BUILD_WORKLOAD, w.name, w.namespace))
        except errors.NotFound:
            return None

    async def delete_workload(self, w: Workload, how_far: str) -> None:
        with contextlib.suppress(errors.NotFound):
            await self.api(lambda: self.client.delete(r.BUILD_WORKLOAD, w.name, w.namespace))
        self.deleted_at[w.name] = self.now()
        self.deleted_while[w.name] = how_far

    async def sim(self, method: str, path: str, body: Obj | None = None) -> Any:
        """The emulator's ``/__sim__`` controls."""
        async with self.http.request(method, self.api_url + path, json=body) as resp:
            payload = await resp.json(content_type=None)
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {payload}")
            return payload

    # ----------------------------------------------------------------------------- processes
    @asynccontextmanager
    async def devcluster(self) -> AsyncIterator[anyio.abc.Process]:
        kubeconfig = self.workdir / "kubeconfig"
        log = (self.workdir / "devcluster.log").open("wb")
        proc = await anyio.open_process(
            [
                *SERVICE,
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
            env=_child_env(),
        )
        try:
            await eventually(kubeconfig.exists, 30, "the devcluster's kubeconfig")
            yield proc
            proc.send_signal(signal.SIGTERM)
            with anyio.move_on_after(15):
                self.devcluster_exit = await proc.wait()
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
                env=_child_env(POD_NAME=f"replica-{slot}-{incarnation}"),
            )
        replica = Replica(slot, incarnation, process, log_path, self.now())
        self.replicas.append(replica)
        return replica

    async def run_slot(self, slot: int, tg: anyio.abc.TaskGroup, first: anyio.Event) -> None:
        """One replica's place, as kubelet keeps it: started, watched, started again when it exits."""
        incarnation = 0
        while not self.stopping_replicas:
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
                    tg.start_soon(self.scrape, replica)
                    first.set()
                else:
                    self.say(f"{replica.pod_name} announced no metrics port within 30 s")
                replica.up.set()
                await replica.process.wait()
            finally:
                # Also when cancelled (a replica that ignored SIGTERM): killed, and its exit recorded.
                with anyio.CancelScope(shield=True):
                    if replica.process.returncode is None:
                        replica.process.kill()
                    code = await replica.process.wait()
                    await replica.process.aclose()
                replica.exit_code, replica.exited_at = code, self.now()
                replica.exited.set()
                replica.up.set()
                sent = ",".join(name for _, name in replica.signals) or "no signal"
                self.say(f"{replica.pod_name} exited {code} ({sent})")
            if not self.stopping_replicas:
                await anyio.sleep(self.s.restart_delay)

    async def stop_replicas(self) -> None:
        """SIGTERM every replica, as a rollout does; they must exit 0 within the graceful period."""
        self.stopping_replicas = True
        live = [rep for rep in self.replicas if rep.alive]
        # One still starting would die of the signal's default action before its handler is installed.
        with anyio.move_on_after(35):
            for rep in live:
                await rep.up.wait()
        live = [rep for rep in live if rep.alive]
        for rep in live:
            if rep.frozen:
                rep.signal(signal.SIGCONT, self.now())  # a frozen one could not act on the SIGTERM
            rep.signal(signal.SIGTERM, self.now())
        with anyio.move_on_after(self.s.graceful_shutdown + 15):
            for rep in live:
                await rep.exited.wait()

    # ----------------------------------------------------------------------------- observers
    async def scrape(self, replica: Replica) -> None:
        url = f"http://127.0.0.1:{replica.ports['metrics']}/metrics"
        while replica.alive and not self.stopping_replicas:
            started = time.monotonic()
            leading = reconciles = None
            try:
                with anyio.fail_after(self.s.scrape_timeout):
                    async with self.http.get(url) as resp:
                        text = await resp.text()
                leading, reconciles = parse_metrics(text)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                pass
            replica.samples.append(Sample(self.now(), leading, reconciles))
            await anyio.sleep(max(0.0, self.s.scrape_interval - (time.monotonic() - started)))

    def holder_at(self, t: float) -> str:
        holder = ""
        for at, who in self.lease_history:
            if at > t:
                break
            holder = who
        return holder

    def owner(self, identity: str) -> Replica | None:
        return next((rep for rep in self.replicas if identity and rep.owns(identity)), None)

    def _lease_seen(self, lease: Obj) -> None:
        if lease["metadata"]["name"] != LEASE_NAME:
            return
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        self.lease_transitions = max(self.lease_transitions, int(spec.get("leaseTransitions") or 0))
        if not self.lease_history or self.lease_history[-1][1] != holder:
            self.lease_history.append((self.now(), holder))
            owner = self.owner(holder)
            self.say(f"Lease holder: {owner.pod_name if owner else holder or '(none)'}")

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
        while True:
            try:
                items, _ = await self.client.list_all(r.BUILD_WORKLOAD)
            except errors.ApiError:
                items = None
            now = self.now()
            for obj in items or ():
                name = obj["metadata"]["name"]
                status = succeeded(obj).get("status")
                if status == "Unknown":
                    self.first_running.setdefault(name, now)
                elif status in ("True", "False"):
                    self.first_terminal.setdefault(name, now)
            await anyio.sleep(0.5)

    # ----------------------------------------------------------------------------- set-up
    async def set_up(self) -> None:
        for space in (*spaces(self.s), DOOMED_SPACE):
            await self.api(lambda space=space: create_space(self.client, space, self.registry.host))
        if self.hang_host is None:
            return
        await self.api(lambda: create_space(self.client, HANG_SPACE, str(self.hang_host)))
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
            await self.api(lambda image=image: self.client.create(r.IMAGE, image))

    async def wait_for_leader(self, within: float = 30.0) -> Replica | None:
        deadline = time.monotonic() + within
        while True:
            holder = self.lease_history[-1][1] if self.lease_history else ""
            rep = self.owner(holder)
            if rep is not None and rep.alive and not rep.frozen:
                return rep
            if time.monotonic() > deadline:
                return None
            await anyio.sleep(0.1)

    # ----------------------------------------------------------------------------- chaos
    async def chaos(self) -> None:
        self.say(f"chaos: {len(self.actions)} actions over {self.s.chaos_seconds:g} s")
        start = time.monotonic()
        self.chaos_started = self.now()
        async with anyio.create_task_group() as actions:
            for action in self.actions:
                await anyio.sleep(max(0.0, start + action.at - time.monotonic()))
                self.say(action.describe())
                actions.start_soon(self.act, action)
        try:
            listed = await self.sim("GET", "/__sim__/faults")
            self.fault_rules = listed["rules"]
            await self.sim("DELETE", "/__sim__/faults")
        except (aiohttp.ClientError, RuntimeError) as exc:
            self.say(f"could not read or clear the fault rules: {exc}")
        self.say("chaos over: faults cleared")

    async def act(self, action: Action) -> None:
        """One action; a failure is recorded (the run's results then say less), not raised."""
        try:
            await self._act(action)
        except Exception as exc:
            self.action_errors.append(f"{action.describe()}: {type(exc).__name__}: {exc}")
            self.say(f"action failed: {action.describe()}: {exc}")

    async def _act(self, action: Action) -> None:
        kind = action.kind
        if kind == "create":
            async with anyio.create_task_group() as tg:
                for name in action.detail:
                    tg.start_soon(self.create_workload, self.by_name[name])
        elif kind == "restage":
            await self.restage(self.by_name[action.detail[0]])
        elif kind == "delete-mid-build":
            await self.delete_mid_build(self.by_name[action.detail[0]])
        elif kind == "delete-namespace":
            await self.delete_namespace([self.by_name[n] for n in action.detail])
        elif kind == "builder-lag":
            await self.builder_lag([self.by_name[n] for n in action.detail])
        elif kind in PROCESS_KINDS:
            await self.hit_leader(kind)
        elif kind == "drop-watches":
            await self.sim("POST", "/__sim__/drop-watches")
            self.fault_hits[kind] += 1
        elif kind == "gone":
            # Forget the history, then end every watch: every informer's resume answers 410 Expired.
            await self.sim("POST", "/__sim__/compact")
            await self.sim("POST", "/__sim__/drop-watches")
            self.fault_hits[kind] += 1
        else:
            await self.sim("POST", "/__sim__/faults", action.detail)

    async def restage(self, w: Workload) -> None:
        original = restaged(self.workloads)[w.name]
        try:
            await eventually(
                lambda: self.get_workload(original),
                30,
                until=lambda obj: succeeded(obj).get("status") in ("True", "False"),
                interval=0.2,
            )
        except AssertionError:
            # Created now, it could make kpack skip the first one's build (KpackMissedBuild): leave it out.
            self.not_created[w.name] = f"{original.name} had not finished 30 s later"
            return
        await self.create_workload(w)

    async def builder_lag(self, new: list[Workload]) -> None:
        # Every client's Builder list and watch (``…/builders`` without a name) answers late for a while.
        watchers = self.s.replicas + 1  # the replicas and the kpack simulator
        await self.sim(
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
        await self.sim("POST", "/__sim__/drop-watches")
        self.fault_hits["drop-watches"] += 1
        async with anyio.create_task_group() as tg:
            for w in new:
                tg.start_soon(self.create_workload, w)

    async def delete_mid_build(self, w: Workload) -> None:
        await self.create_workload(w)
        how_far = "before its build started"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            obj = await self.get_workload(w)
            status = succeeded(obj).get("status")
            if status == "Unknown":
                how_far = "mid-build"
                break
            if status in ("True", "False"):
                how_far = "after finishing"
                break
            await anyio.sleep(0.05)
        await self.delete_workload(w, how_far)

    async def delete_namespace(self, late: list[Workload]) -> None:
        async with anyio.create_task_group() as tg:
            for w in late:
                tg.start_soon(self.create_workload, w)
        # Delete once one of them is mid-build, so the namespace goes with builds running.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [succeeded(await self.get_workload(w)).get("status") for w in late]
            if "Unknown" in states:
                break
            await anyio.sleep(0.1)
        doomed = [w for w in self.workloads if w.kind == DOOMED]
        for w in doomed:
            status = succeeded(await self.get_workload(w)).get("status")
            self.deleted_while[w.name] = {
                "Unknown": "mid-build",
                "True": "after finishing",
                "False": "after finishing",
            }.get(str(status), "before its build started")
        with contextlib.suppress(errors.NotFound):
            await self.api(lambda: self.client.delete(r.NAMESPACE, DOOMED_SPACE))
        for w in doomed:
            self.deleted_at[w.name] = self.now()
        self.say(
            f"namespace {DOOMED_SPACE} deleted: "
            + ", ".join(f"{w.name} {self.deleted_while[w.name]}" for w in doomed)
        )

    async def hit_leader(self, kind: str) -> None:
        leader = await self.wait_for_leader(8.0)
        if leader is None:
            self.skipped_actions.append(f"{kind}: no leader to hit at t+{self.now():.1f}s")
            self.say(f"{kind} skipped: no live leader")
            return
        at = self.now()
        if kind == "kill":
            leader.signal(signal.SIGKILL, at)
        elif kind == "term":
            leader.signal(signal.SIGTERM, at)
        else:
            leader.frozen = True
            leader.signal(signal.SIGSTOP, at)
        self.say(f"{kind}: {leader.pod_name}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.measure_handover, kind, leader, at)
            if kind == "freeze":
                await anyio.sleep(self.s.freeze_seconds)
                leader.signal(signal.SIGCONT, self.now())
                leader.frozen = False
                self.freezes.append((leader.pod_name, at, self.now()))
                self.say(f"resumed {leader.pod_name} after {self.now() - at:.1f} s")

    async def measure_handover(self, cause: str, old: Replica, at: float) -> None:
        deadline = time.monotonic() + self.s.handover_bound + 10.0
        while time.monotonic() < deadline:
            holder = self.holder_at(float("inf"))
            if holder and not old.owns(holder):
                when = next(t for t, h in reversed(self.lease_history) if h == holder)
                new = self.owner(holder)
                self.handovers.append(
                    Handover(cause, old.pod_name, new.pod_name if new else holder, at, round(when - at, 2))
                )
                return
            await anyio.sleep(0.05)
        self.handovers.append(Handover(cause, old.pod_name, "", at, None))

    # ----------------------------------------------------------------------------- the late phase
    async def ready(self, replica: Replica) -> bool:
        try:
            with anyio.fail_after(1.0):
                async with self.http.get(f"http://127.0.0.1:{replica.ports['probes']}/readyz") as resp:
                    return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError, KeyError):
            return False

    async def quiesce(self, within: float = 30.0) -> None:
        """Wait for a leader, every replica ready (caches synced again after the chaos's last 410) and the
        chaos's workloads finished, so that the late phase measures the hanging registry, not the
        chaos's aftermath; after ``within`` seconds it goes on anyway (the settle deadline still holds)."""
        deadline = time.monotonic() + within
        while True:
            leader = await self.wait_for_leader(0.0)
            alive = [rep for rep in self.replicas if rep.alive]
            ready = [await self.ready(rep) for rep in alive]
            busy = [
                w.name
                for w in self.workloads
                if w.name in self.created and not w.deleted and w.name not in self.first_terminal
            ]
            if leader is not None and all(ready) and len(alive) == self.s.replicas and not busy:
                self.say("quiet: a leader, every replica ready, every workload finished")
                return
            if time.monotonic() > deadline:
                self.say(
                    f"not quiet after {within:g} s (leader: {leader is not None}, ready: {sum(ready)}/"
                    f"{self.s.replicas}, busy: {len(busy)}); going on"
                )
                return
            await anyio.sleep(0.2)

    async def late_phase(self) -> None:
        """With every fault gone and the system quiet: the registry hangs for the hang namespace's droplet
        deletions while unrelated workloads are deleted and created; none of those may wait for it."""
        await self.quiesce()
        if self.hang_host is not None:
            try:
                await eventually(
                    self.hang_builds_ready,
                    30,
                    "the hang namespace's Builds built and finalized",
                    interval=0.3,
                )
            except AssertionError as exc:
                self.say(f"hang phase: {exc}")
            for j in range(self.s.hang_builds):
                with contextlib.suppress(errors.NotFound):
                    await self.api(lambda j=j: self.client.delete(r.IMAGE, f"hang-{j}", HANG_SPACE))
            self.hang_started = self.now()
            self.say(f"hang phase: {self.s.hang_builds} Images with droplets on the silent registry deleted")
        late_deletions = [w for w in self.workloads if w.kind == DELETE_DONE]
        for w in late_deletions:
            with contextlib.suppress(AssertionError):
                await eventually(
                    lambda w=w: self.get_workload(w),
                    20,
                    until=lambda obj: obj is None or succeeded(obj).get("status") in ("True", "False"),
                    interval=0.2,
                )
        self.late_started = self.now()
        async with anyio.create_task_group() as tg:
            for w in late_deletions:
                obj = await self.get_workload(w)
                status = succeeded(obj).get("status")
                tg.start_soon(
                    self.delete_workload, w, "after finishing" if status else "before its build started"
                )
            for w in self.workloads:
                if w.kind == PROBE:
                    tg.start_soon(self.create_workload, w)
        self.say("late phase: finished workloads deleted, probes created")

    async def hang_builds_ready(self) -> bool:
        builds = (await self.api(lambda: self.client.list(r.BUILD, HANG_SPACE)))["items"]
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
        items, _ = await self.api(lambda: self.client.list_all(r.BUILD_WORKLOAD))
        builds, _ = await self.api(lambda: self.client.list_all(r.BUILD))
        namespaces, _ = await self.api(lambda: self.client.list_all(r.NAMESPACE))
        found = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in items}
        out: dict[str, str] = {}
        for w in self.workloads:
            if w.name in self.not_created:
                continue
            obj = found.get((w.namespace, w.name))
            if w.deleted:
                if obj is not None:
                    meta = obj["metadata"]
                    out[f"workload {w.name}"] = (
                        f"{w.describe()} deleted {self.deleted_while.get(w.name, '?')} but still there "
                        f"(deletionTimestamp {meta.get('deletionTimestamp')}, finalizers {meta.get('finalizers')}, "
                        f"{state(obj)})"
                    )
            elif w.name in self.created and succeeded(obj).get("status") not in ("True", "False"):
                out[f"workload {w.name}"] = f"{w.describe()}: {state(obj) if obj else 'missing'}"
        gone_apps = {(w.namespace, w.app) for w in self.workloads if w.deleted and w.name in self.created}
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
        deadline = time.monotonic() + self.s.settle_seconds
        # Every workload counts as pending until a listing shows it done, so that one done before the first
        # listing gets that listing's time, not none.
        seen_pending = {f"workload {w.name}" for w in self.workloads}
        while True:
            try:
                pending = await self.pending()
            except errors.ApiError as exc:
                self.say(f"settle: listing failed: {exc}")
                pending = None
            if pending is not None:
                now = self.now()
                for item in seen_pending - pending.keys():
                    self.done_at.setdefault(item, now)
                seen_pending |= pending.keys()
                hang_builds = [i for i in pending if i.startswith(f"build {HANG_SPACE}/")]
                if self.hang_started is not None and self.hang_released is None and not hang_builds:
                    self.hang_released = now
                    self.say("hang phase: the silent registry's Builds are gone")
                if not pending:
                    self.say("settled")
                    return
            if time.monotonic() > deadline:
                self.stuck = pending or {"everything": "the API could not be listed"}
                self.say(f"not settled after {self.s.settle_seconds:g} s: {len(self.stuck)} items")
                return
            await anyio.sleep(0.5)

    # ----------------------------------------------------------------------------- the run
    async def run(self) -> SoakReport:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.say(
            f"soak: seed {self.s.seed}, {len(self.workloads)} workloads, {self.s.replicas} replicas, "
            f"workdir {self.workdir}"
        )
        async with AsyncExitStack() as stack:
            self.registry: RunningRegistry = await stack.enter_async_context(
                running_registry(OciRegistry(auth="basic", users=REGISTRY_USERS))
            )
            if self.s.hanging_registry:
                self.hang_host = await stack.enter_async_context(hanging_server())
            self.http = await stack.enter_async_context(aiohttp.ClientSession())
            await stack.enter_async_context(self.devcluster())
            config = await load_kubeconfig(str(self.workdir / "kubeconfig"))
            self.api_url = config.host
            self.client = await stack.enter_async_context(
                KubeClient(config, qps=0, timeout=10.0, max_retry_after=2.0)
            )
            await self.set_up()
            snapshot: Snapshot | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.watch_lease)
                tg.start_soon(self.track_workloads)
                firsts = [anyio.Event() for _ in range(self.s.replicas)]
                for slot in range(self.s.replicas):
                    tg.start_soon(self.run_slot, slot, tg, firsts[slot])
                with anyio.fail_after(60):
                    for event in firsts:
                        await event.wait()
                if await self.wait_for_leader(30.0) is None:
                    raise RuntimeError(f"no leader within 30 s of start; logs in {self.workdir}")
                self.say("replicas up, a leader elected")
                chaos_started = self.now()
                await self.chaos()
                chaos_ended = self.now()
                await self.late_phase()
                await self.settle()
                snapshot = await self.snapshot()
                await self.stop_replicas()
                tg.cancel_scope.cancel()
        assert snapshot is not None
        report = check(self, snapshot, chaos_ended - chaos_started)
        (self.workdir / "report.txt").write_text(report.full_text())
        (self.workdir / "figures.json").write_bytes(orjson.dumps(report.figures, option=orjson.OPT_INDENT_2))
        return report

    async def snapshot(self) -> Snapshot:
        async def everything(res: r.Resource) -> list[Obj]:
            items, _ = await self.api(lambda: self.client.list_all(res))
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


@dataclass
class Snapshot:
    workloads: dict[tuple[str, str], Obj]
    images: list[Obj]
    builds: list[Obj]
    builders: list[Obj]
    namespaces: set[str]


async def run_soak(
    settings: SoakSettings, workdir: Path, say: Callable[[str], None] | None = None
) -> SoakReport:
    """Run the whole soak (minutes) and check its invariants; never raises for a broken invariant."""
    return await Soak(settings, workdir, say).run()


# ------------------------------------------------------------------------------------------- the checks
def _build_number(build: Obj) -> int:
    try:
        return int((build["metadata"].get("labels") or {}).get(k.KPACK_BUILD_NUMBER_LABEL, "0"))
    except ValueError:
        return 0


def _kpack_says(snapshot: Snapshot, w: Workload) -> str:
    """What kpack's latest Build for the workload (its app, at its Image generation) says: evidence for
    a wrong outcome."""
    obj = snapshot.workloads.get((w.namespace, w.name)) or {}
    generation = (obj.get("metadata", {}).get("labels") or {}).get(k.IMAGE_GENERATION_LABEL)
    builds = [
        b
        for b in snapshot.builds
        if b["metadata"]["namespace"] == w.namespace
        and (labels := b["metadata"].get("labels") or {}).get(k.KPACK_IMAGE_LABEL) == w.app
        and (generation is None or labels.get(k.KPACK_IMAGE_GENERATION_LABEL) == generation)
    ]
    if not builds:
        return f"no kpack Build of Image {w.app} generation {generation}"
    latest = max(builds, key=_build_number)
    c = succeeded(latest)
    message = str(c.get("message", ""))
    if len(message) > 220:
        message = message[:220] + "…"
    return f"kpack Build {latest['metadata']['name']}: {c.get('status')}/{c.get('reason')} {message}".rstrip()


TRACEBACK_LAST = re.compile(r"\n(\w[\w.]*(?:Error|Exception|Exit|Interrupt|Lost|Failure)[^\n]*)\s*$")


def scan_logs(replicas: list[Replica]) -> tuple[list[str], Counter[str], int]:
    """Tracebacks (grouped, with a file and line of the first), error lines by message, lines read."""
    tracebacks: dict[str, list[str]] = defaultdict(list)
    error_lines: Counter[str] = Counter()
    lines_read = 0
    for rep in replicas:
        try:
            data = rep.log_path.read_bytes()
        except FileNotFoundError:
            continue
        for number, raw in enumerate(data.splitlines(), start=1):
            lines_read += 1
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                entry = {"msg": raw.decode(errors="replace"), "level": "raw"}
            if not isinstance(entry, dict):
                entry = {"msg": str(entry), "level": "raw"}
            if entry.get("level") in ("error", "raw"):
                msg = re.sub(r"\d+(\.\d+)?", "N", str(entry.get("msg", "")))[:100]
                error_lines[msg] += 1
            if b"Traceback" in raw:
                stack = str(entry.get("stacktrace") or entry.get("msg", ""))
                found = TRACEBACK_LAST.search(stack)
                last = found.group(1) if found else stack.strip().splitlines()[-1][:200]
                key = f"{str(entry.get('msg', ''))[:120]} -> {last}"
                tracebacks[key].append(f"{rep.log_path.name}:{number}")
    out = [
        f"{len(where)}x {key} (first at {where[0]})"
        for key, where in sorted(tracebacks.items(), key=lambda i: -len(i[1]))
    ]
    return out, error_lines, lines_read


def check(soak: Soak, snap: Snapshot, chaos_seconds: float) -> SoakReport:
    s = soak.s
    violations: list[Violation] = []
    checked: list[str] = []

    def invariant(name: str, summary: str, details: list[str]) -> None:
        checked.append(name)
        if details:
            violations.append(Violation(name, summary.replace("{n}", str(len(details))), details))

    created = [w for w in soak.workloads if w.name in soak.created]
    survivors = [w for w in created if not w.deleted]
    gone = [w for w in created if w.deleted]
    gone_apps = {(w.namespace, w.app) for w in gone}

    # 1. terminal states as planned
    wrong = []
    outcomes: Counter[str] = Counter()
    for w in survivors:
        obj = snap.workloads.get((w.namespace, w.name))
        c = succeeded(obj)
        got = (c.get("status"), c.get("reason"))
        outcomes[f"{got[0]}/{got[1]}"] += 1
        expected = w.expected
        assert expected is not None
        if got[0] in ("True", "False") and got != expected:
            line = f"{w.describe()}: expected {'/'.join(expected)}, got {state(obj)}"
            if got[1] == k.BUILD_FAILED or expected[1] == k.BUILD_FAILED:
                line += f"; {_kpack_says(snap, w)}"
            wrong.append(line)
    reasons = Counter(
        re.sub(r"^.*?: expected ([^,]+), got (\S+).*$", r"\2 where \1 was expected", d) for d in wrong
    )
    invariant(
        "terminal-states",
        f"{{n}} of {len(survivors)} surviving workloads ended in the wrong state ("
        + ", ".join(f"{c} x {what}" for what, c in reasons.most_common())
        + ")",
        wrong,
    )

    # 2. nothing stuck
    invariant(
        "none-stuck",
        f"{{n}} things had not reached their end state {s.settle_seconds:g} s after the chaos stopped",
        [f"{item}: {what}" for item, what in sorted(soak.stuck.items())],
    )

    # 3. one kpack Image per app, none for what was deleted
    images: dict[tuple[str, str], list[Obj]] = defaultdict(list)
    for img in snap.images:
        if img["metadata"]["namespace"] != HANG_SPACE:
            images[(img["metadata"]["namespace"], img["metadata"]["name"])].append(img)
    want_images = {(w.namespace, w.app) for w in survivors if w.makes_image}
    image_problems = [f"{ns}/{app}: no kpack Image" for ns, app in sorted(want_images - images.keys())]
    image_problems += [
        f"{ns}/{app}: {len(found)} kpack Images"
        for (ns, app), found in sorted(images.items())
        if len(found) > 1
    ]
    image_problems += [
        f"{ns}/{app}: kpack Image left for a deleted app"
        if (ns, app) in gone_apps
        else f"{ns}/{app}: kpack Image for no planned app"
        for ns, app in sorted(images.keys() - want_images)
    ]
    invariant(
        "one-image-per-app", "{n} apps without exactly one kpack Image, or Images left over", image_problems
    )

    # 4. one Builder per buildpack list and namespace, none left for deleted workloads only
    builders: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for b in snap.builders:
        order = tuple(
            g["id"] for entry in (b.get("spec") or {}).get("order") or () for g in entry.get("group") or ()
        )
        builders[(b["metadata"]["namespace"], order)].append(b["metadata"]["name"])
    want_builders = {(w.namespace, w.buildpacks) for w in survivors if w.buildpacks and w.kind != INVALID}
    builder_problems = [
        f"{ns}: {len(names)} Builders for [{', '.join(order)}]: {', '.join(sorted(names))}"
        for (ns, order), names in sorted(builders.items())
        if len(names) > 1
    ]
    builder_problems += [
        f"{ns}: no Builder for [{', '.join(order)}]" for ns, order in sorted(want_builders - builders.keys())
    ]
    builder_problems += [
        f"{ns}: Builder {', '.join(builders[(ns, order)])} for [{', '.join(order)}] left when every workload using it was deleted"
        for ns, order in sorted(builders.keys() - want_builders)
    ]
    invariant("no-duplicate-builders", "{n} custom Builder problems", builder_problems)

    # 5. no Build left for deleted workloads or the deleted namespace
    leftover = []
    for b in snap.builds:
        meta = b["metadata"]
        if (meta["namespace"], (meta.get("labels") or {}).get(k.KPACK_IMAGE_LABEL, "")) in gone_apps:
            leftover.append(
                f"{meta['namespace']}/{meta['name']}: deletionTimestamp {meta.get('deletionTimestamp')}, "
                f"finalizers {meta.get('finalizers')}, {state(b)}"
            )
    invariant("no-leftover-builds", "{n} kpack Builds left for deleted workloads", leftover)

    # 6. no droplet left in the registry for deleted workloads or the deleted namespace
    registry = soak.registry.registry
    leaked = []
    for ns, app in sorted(gone_apps):
        repo = f"cf/{app}-droplets"
        tags = registry.tags(repo)
        if tags:
            who = ", ".join(
                f"{w.name} deleted {soak.deleted_while.get(w.name, '?')}" for w in gone if w.app == app
            )
            leaked.append(f"{soak.registry.host}/{repo} ({ns}; {who}): tags {sorted(tags)} still there")
    doomed = [w for w in gone if w.kind == DOOMED]
    leaked_doomed = sum(1 for d in leaked if f"({DOOMED_SPACE};" in d)
    invariant(
        "no-leaked-droplets",
        f"{{n}} deleted apps left droplet tags in the registry ({leaked_doomed} of {len(doomed)} in the deleted "
        f"namespace {DOOMED_SPACE})",
        leaked,
    )

    # 7. every succeeded workload's droplet is in the registry
    missing = []
    for w in survivors:
        obj = snap.workloads.get((w.namespace, w.name))
        if succeeded(obj).get("status") != "True":
            continue
        image = ((((obj or {}).get("status") or {}).get("droplet") or {}).get("registry") or {}).get(
            "image", ""
        )
        repo, _, digest = image.partition("@")
        path = repo.partition("/")[2]
        if not digest or registry.manifest(path, digest) is None:
            missing.append(f"{w.describe()}: droplet {image or '(none)'} not in the registry")
    invariant("droplets-present", "{n} succeeded workloads whose droplet is not in the registry", missing)

    # 8. no traceback in any replica's log
    tracebacks, error_lines, lines_read = scan_logs(soak.replicas)
    invariant("no-tracebacks", "{n} kinds of traceback in the replicas' logs", tracebacks)

    # 9. SIGTERMed replicas exit 0
    bad_exits = []
    for rep in soak.replicas:
        termed = [at for at, name in rep.signals if name == "SIGTERM"]
        if not termed or "SIGKILL" in {n for _, n in rep.signals}:
            continue
        if rep.exit_code != 0:
            waited = f"{rep.exited_at - termed[0]:.1f} s" if rep.exited_at is not None else "never"
            bad_exits.append(
                f"{rep.pod_name} ({rep.log_path.name}): SIGTERM at t+{termed[0]:.1f}s, exit {rep.exit_code} after {waited}"
            )
    invariant("sigterm-exits-0", "{n} replicas did not exit 0 after SIGTERM", bad_exits)

    # 10. never two leaders for longer than a retry period (by their own metrics)
    timelines = {rep.pod_name: rep.samples for rep in soak.replicas}
    found_overlaps = overlaps(timelines)
    too_long = [o for o in found_overlaps if o.seconds > s.retry_period]

    def near_freeze(o: Overlap) -> str:
        for name, stopped, resumed in soak.freezes:
            if name in (o.a, o.b) and stopped - 1 <= o.start <= resumed + 10:
                return f"; {name} was SIGSTOPped t+{stopped:.1f}s..t+{resumed:.1f}s"
        return ""

    invariant(
        "single-leader",
        f"two replicas reported leader_election_master_status 1 at once for longer than the retry period "
        f"({s.retry_period:g} s) {{n}} times",
        [
            f"{o.a} and {o.b} both leading from t+{o.start:.2f}s to t+{o.end:.2f}s ({o.seconds:.2f} s); Lease "
            f"holder then: {_pod(soak, soak.holder_at(o.start))}{near_freeze(o)}"
            for o in too_long
        ],
    )

    # 11. reconciles only by the Lease's holder (allowing the watch a second to report a new holder)
    foreign: list[str] = []
    foreign_total = 0.0
    for rep in soak.replicas:
        done = [x for x in rep.samples if x.reconciles is not None]
        for before, after in itertools.pairwise(done):
            grew = (after.reconciles or 0) - (before.reconciles or 0)
            if grew <= 0:
                continue
            holders = {h for t, h in soak.lease_history if before.t - 1.0 <= t <= after.t + 1.0}
            holders.add(soak.holder_at(before.t - 1.0))
            if any(rep.owns(h) for h in holders) or "" in holders:
                continue
            foreign_total += grew
            foreign.append(
                f"{rep.pod_name} ran {grew:g} reconciles between t+{before.t:.2f}s and t+{after.t:.2f}s while the "
                f"Lease named {', '.join(sorted(_pod(soak, h) for h in holders))}"
            )
    invariant(
        "reconciles-only-by-holder",
        "{n} scrape intervals with reconciles by a replica the Lease did not name",
        foreign,
    )

    # 12. handover after SIGKILL within its bound (plus what a fault on the Lease made every attempt wait)
    slow = []
    for h in soak.handovers:
        if h.cause != "kill":
            continue
        allowance = lease_fault_delay(soak, h.at)
        bound = s.handover_bound + allowance
        if h.seconds is None or h.seconds > bound:
            outcome = "no new leader" if h.seconds is None else f"{h.new} took over after {h.seconds:.2f} s"
            slow.append(
                f"{h.old} killed at t+{h.at:.1f}s: {outcome} (bound {bound:.1f} s"
                + (f", {allowance:g} s of it for a Lease fault" if allowance else "")
                + ")"
            )
    invariant("handover-after-kill", "{n} handovers after SIGKILL took longer than their bound", slow)

    # 13. a hanging registry does not stall unrelated work
    late_latency: dict[str, float] = {}
    stalled = []
    if soak.late_started is not None:
        for w in soak.workloads:
            if w.kind not in (PROBE, DELETE_DONE) or w.name not in soak.created:
                continue
            if w.kind == PROBE:
                finished = soak.first_terminal.get(w.name)
                start = soak.created[w.name]
                what = "created"
            else:
                finished = soak.done_at.get(f"workload {w.name}")
                start = soak.deleted_at.get(w.name, soak.late_started)
                what = "deleted"
            took = None if finished is None else finished - start
            if took is not None:
                late_latency[w.name] = round(took, 2)
            if took is None or took > s.stall_bound:
                stalled.append(
                    f"{w.describe()} {what} at t+{start:.1f}s: "
                    + ("never finished" if took is None else f"finished after {took:.1f} s")
                    + (
                        f" (the silent registry's Builds went at t+{soak.hang_released:.1f}s)"
                        if soak.hang_released
                        else ""
                    )
                )
    if soak.hang_started is not None:
        invariant(
            "hanging-registry-isolated",
            f"{{n}} unrelated workloads took longer than {s.stall_bound:.1f} s while a registry hung",
            stalled,
        )

    # The harness itself: an action that failed leaves the run weaker than planned.
    invariant("chaos-actions-ran", "{n} chaos actions failed in the harness", soak.action_errors)

    # figures
    latencies = [
        soak.first_terminal[w.name] - soak.created[w.name]
        for w in survivors
        if w.name in soak.first_terminal and w.kind != PROBE
    ]
    kills = [h.seconds for h in soak.handovers if h.cause == "kill" and h.seconds is not None]
    terms = [h.seconds for h in soak.handovers if h.cause == "term" and h.seconds is not None]
    freezes = [h.seconds for h in soak.handovers if h.cause == "freeze" and h.seconds is not None]
    exits = Counter(
        f"{rep.exit_code}" + ("" if not rep.signals else f" after {rep.signals[0][1]}")
        for rep in soak.replicas
        if rep.exit_code is not None
    )
    hits = Counter(soak.fault_hits)
    for rule in soak.fault_rules:
        kind = {0: "latency", 409: "conflict", 429: "429"}.get(int(rule["status"]), "5xx")
        hits[kind] += int(rule["hits"])
    figures: dict[str, Any] = {
        "seed": s.seed,
        "workloads": len(soak.workloads),
        "workloads_created": len(created),
        "workloads_deleted": len(gone),
        "replicas": s.replicas,
        "chaos_seconds": round(chaos_seconds, 1),
        "wall_seconds": round(soak.now(), 1),
        "outcomes": dict(outcomes.most_common()),
        "deleted": dict(Counter(soak.deleted_while[w.name] for w in gone if w.name in soak.deleted_while)),
        "left_out": soak.not_created,
        "workload_seconds_p50": percentile(latencies, 0.5),
        "workload_seconds_p95": percentile(latencies, 0.95),
        "workload_seconds_max": percentile(latencies, 1.0),
        "actions": dict(Counter(a.kind for a in soak.actions)),
        "skipped_actions": soak.skipped_actions,
        "fault_hits": dict(hits),
        "lease_transitions": soak.lease_transitions,
        "handover_after_kill_s": kills,
        "handover_after_term_s": terms,
        "handover_after_freeze_s": freezes,
        "handover_bound_s": round(s.handover_bound, 2),
        "leader_overlaps": len(found_overlaps),
        "leader_overlap_max_s": round(max((o.seconds for o in found_overlaps), default=0.0), 2),
        "reconciles_without_lease": foreign_total,
        "replica_processes": len(soak.replicas),
        "replica_exits": dict(exits),
        "scrapes": sum(len(rep.samples) for rep in soak.replicas),
        "scrapes_failed": sum(1 for rep in soak.replicas for x in rep.samples if x.leading is None),
        "log_lines": lines_read,
        "log_errors_top": dict(error_lines.most_common(8)),
        "late_phase_seconds": late_latency,
        "hang_released_after_s": (
            round(soak.hang_released - soak.hang_started, 1)
            if soak.hang_released is not None and soak.hang_started is not None
            else None
        ),
        "devcluster_exit": soak.devcluster_exit,
        "devcluster_tracebacks": _count_in(soak.workdir / "devcluster.log", b"Traceback"),
        "invariants_checked": len(checked),
        "invariants_failed": [v.invariant for v in violations],
    }
    if kills:
        figures["handover_after_kill_median_s"] = round(statistics.median(kills), 2)
    return SoakReport(s, soak.workdir, violations, checked, figures, soak.timeline)


def _count_in(path: Path, needle: bytes) -> int:
    try:
        return path.read_bytes().count(needle)
    except FileNotFoundError:
        return 0


def lease_fault_delay(soak: Soak, at: float) -> float:
    """The longest delay a fault rule aimed at the Lease, added shortly before or during a handover at
    ``at``, puts on each lease attempt (a Retry-After, a latency, or a failed attempt's retry period)."""
    s = soak.s
    delay = 0.0
    for action in soak.actions:
        rule = action.detail
        if not isinstance(rule, dict) or rule.get("path") != "/leases/":
            continue
        added = soak.chaos_started + action.at
        if at - 10.0 <= added <= at + s.handover_bound:
            per_attempt = rule.get("retryAfter") or rule.get("latency") or (1 + JITTER) * s.retry_period
            delay = max(delay, float(per_attempt))
    return delay


def _pod(soak: Soak, identity: str) -> str:
    owner = soak.owner(identity)
    return owner.pod_name if owner else identity or "(none)"
