"""A chaos soak of the whole system, with real processes: what an operator runs before trusting a release,
and what CI runs at a smaller size (``tests/chaos/test_chaos_soak.py``; by hand: ``benchmarks/chaos.py``;
docs/reliability.md says what it does and checks).

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

The modules, each a concept (a module imports only those above it):

- ``scenario``: the settings, the workloads (``plan``), the seeded schedule and its fault rules;
- ``record``: what a run records (``Record``: its clock, timeline and everything seen; each ``Replica``
  process; handovers; the end ``Snapshot``) and the only state the parts below share;
- ``observe``: the observers (scrapes, the Lease watch, workload progress) and the arithmetic on what they
  saw (leadership runs and overlaps, the metrics scan, conditions, percentiles);
- ``processes``: the devcluster and the replicas under a kubelet-like ``Supervisor``; the hanging server;
- ``cluster``: the harness's own API calls, retried through the injected faults, and the ``/__sim__``
  controls;
- ``chaos``: the schedule's actions, run against the live system;
- ``report`` and ``checks``: the invariants and the figures, from the record, the snapshot and the
  registry;
- ``run``: ``Soak``, the phases in order, and ``run_soak``.

This package exports what the CI test and the benchmark use.
"""

from tests.chaos.soak.checks import check
from tests.chaos.soak.observe import overlaps, parse_metrics
from tests.chaos.soak.record import Record, Replica, Sample, Snapshot
from tests.chaos.soak.report import SoakReport, Violation
from tests.chaos.soak.run import run_soak
from tests.chaos.soak.scenario import (
    DELETED_KINDS,
    FAULT_KINDS,
    PROCESS_KINDS,
    Obj,
    SoakSettings,
    Workload,
    plan,
    restaged,
    schedule,
)

__all__ = [
    "DELETED_KINDS",
    "FAULT_KINDS",
    "PROCESS_KINDS",
    "Obj",
    "Record",
    "Replica",
    "Sample",
    "Snapshot",
    "SoakReport",
    "SoakSettings",
    "Violation",
    "Workload",
    "check",
    "overlaps",
    "parse_metrics",
    "plan",
    "restaged",
    "run_soak",
    "schedule",
]
