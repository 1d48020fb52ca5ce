"""The soak's scenario: its settings, the workloads and the chaos schedule, all fixed by the seed.

Design: everything the soak will do is decided here, before any process starts, by two random generators
seeded from the settings (``<seed>/plan`` and ``<seed>/schedule``), so that a failing run can be repeated
and the unit tests can check the plan and the schedule without running anything. What the schedule meets
at run time (which replica leads, how far a build got) is not decided here; the run records it.
The names the soak gives the cluster (spaces, the Lease, the registry's users) live here too, since the
plan, the run and the checks all speak of them.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from service.reconcilers import korifi as k
from service.runtime.leader import JITTER
from simcluster.demo import PULL_SECRET
from simcluster.kpack.options import ENV_FAIL

Obj = dict[str, Any]

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
