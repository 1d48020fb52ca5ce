"""What a run records: its clock and timeline, each replica process and what was seen of it, the Lease's
holders, what the chaos did and met, and the cluster's objects at the end.

Design: the parts of a run (the supervisor, the observers, the chaos, the phases in ``run.py``) share no
state but this ``Record``: each writes what it saw or did, with the time, and reads what the others wrote
(who holds the Lease, which replicas live). The checks read only the record, the end ``Snapshot`` and the
registry, so they can be tested on a record filled by hand, without a process. The plan and the schedule
are part of the record: they are what the run is measured against.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from tests.chaos.soak.scenario import Obj, SoakSettings, plan, schedule


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


@dataclass
class Snapshot:
    workloads: dict[tuple[str, str], Obj]
    images: list[Obj]
    builds: list[Obj]
    builders: list[Obj]
    namespaces: set[str]


class Record:
    """One run's plan and schedule (fixed at construction), its clock and timeline, and everything the
    run's parts recorded while it ran."""

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
        self.stopping_replicas = False  # set at the end: no more restarts, no more scrapes
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
        self.devcluster_exit: int | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, message: str) -> None:
        line = f"{self.now():7.2f}s {message}"
        self.timeline.append(line)
        if self._say is not None:
            self._say(line)

    def holder_at(self, t: float) -> str:
        holder = ""
        for at, who in self.lease_history:
            if at > t:
                break
            holder = who
        return holder

    def owner(self, identity: str) -> Replica | None:
        return next((rep for rep in self.replicas if identity and rep.owns(identity)), None)
