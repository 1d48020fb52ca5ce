"""What the BuildWorkload controller tells its metrics: builds started and finished, droplets written, and
the workloads waiting right now, by phase.

The domain says what happened in its own words (``BuildMetrics``); how that becomes Prometheus series —
names, labels, buckets — lives with the composition (``service.observability``), so the reconcilers need
no metrics library and a test can hand in a recorder. Outcomes are read at one point: after a pass's
changes are stored, by comparing the cached workload with the stored copy and reading the pass's Events
(``observe``). A pass whose write conflicts or whose workload vanished counts nothing, as it records no
Events; one retried from fresh state counts once. What is waiting is not an event but a state, read from
the informer cache at scrape time (``waiting_workloads``), so a restart or a leader change loses nothing.

Known gap: an older workload failed ``KpackMissedBuild`` by a newer sibling (``siblings``) is written
outside its own pass and so is not counted as a finished build.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from service.kube.conditions import condition_of, is_true, status_of
from service.kube.objects import is_deleting, labels
from service.kube.server_clock import server_now
from service.kube.timestamps import parse_rfc3339
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload.attempt import completed, is_ours
from service.reconcilers.buildworkload.caches import Caches
from service.reconcilers.buildworkload.stack_updates import droplet_image
from service.runtime import Obj

# Phases of a workload not yet finished; the label values of the waiting gauges (docs/metrics.md).
STARTING = "starting"  # no Succeeded condition yet: new, or waiting for a pull secret or the builder account
BUILDER_NOT_READY = "builder_not_ready"  # its Image's Builder or ClusterBuilder is missing or not Ready
POD_PENDING = "pod_pending"  # the build pod cannot start (Succeeded=Unknown/BuildPodPending)
BUILD_RUNNING = "build_running"  # kpack builds, or is about to
PHASES = (STARTING, BUILDER_NOT_READY, POD_PENDING, BUILD_RUNNING)

# Why a droplet was written: a build finished, or kpack rebuilt the finished workload's image on a new stack.
BUILD = "build"
STACK_UPDATE = "stack_update"


class BuildMetrics(Protocol):
    def build_started(self) -> None: ...

    def build_finished(self, succeeded: bool, reason: str, seconds: float) -> None:
        """``reason`` is the Succeeded condition's; ``seconds`` run from the workload's creation."""

    def droplet_written(self, trigger: str) -> None: ...


class NoMetrics:
    def build_started(self) -> None:
        pass

    def build_finished(self, succeeded: bool, reason: str, seconds: float) -> None:
        pass

    def droplet_written(self, trigger: str) -> None:
        pass


def _age(workload: Obj, now: datetime) -> float:
    created = parse_rfc3339(workload["metadata"].get("creationTimestamp"))
    return max(0.0, (now - created).total_seconds()) if created else 0.0


def observe(metrics: BuildMetrics, cached: Obj, stored: Obj, events: Iterable[tuple[str, str, str]]) -> None:
    """Count what one stored pass changed: ``cached`` before it, ``stored`` as written."""
    # A build starts where its Image is made ready to build (begin, also when beginning again).
    for _, reason, _ in events:
        if reason == k.BUILD_RUNNING:
            metrics.build_started()
    if not completed(cached) and completed(stored):
        condition = condition_of(stored, k.SUCCEEDED) or {}
        metrics.build_finished(
            condition.get("status") == "True",
            str(condition.get("reason") or ""),
            _age(stored, server_now()),
        )
    written = droplet_image(stored)
    if written and written != droplet_image(cached):
        metrics.droplet_written(STACK_UPDATE if completed(cached) else BUILD)


@dataclass
class WaitingPhase:
    count: int = 0
    oldest_seconds: float = 0.0  # age of the oldest such workload, from its creation


def phase_of(caches: Caches, workload: Obj) -> str | None:
    """The phase of an unfinished workload of ours; None for a finished, foreign or deleted one."""
    if not is_ours(workload) or is_deleting(workload):
        return None
    status = status_of(workload, k.SUCCEEDED)
    if status is None:
        return STARTING
    if status != "Unknown":
        return None
    if (condition_of(workload, k.SUCCEEDED) or {}).get("reason") == k.BUILD_POD_PENDING:
        return POD_PENDING
    return BUILDER_NOT_READY if not _builder_ready(caches, workload) else BUILD_RUNNING


def _builder_ready(caches: Caches, workload: Obj) -> bool:
    """Whether the workload's Image's builder is Ready, as the caches say (an unknown Image: assumed so,
    as kpack has not been asked to wait on anything we can name)."""
    namespace = workload["metadata"].get("namespace")
    image = caches.images.get(namespace, labels(workload).get(k.APP_GUID_LABEL, ""))
    if image is None:
        return True
    ref = (image.get("spec") or {}).get("builder") or {}
    if ref.get("kind") == k.CLUSTER_BUILDER_KIND:
        builder = caches.cluster_builders.get(None, ref.get("name", ""))
    elif ref.get("kind") == k.BUILDER_KIND:
        builder = caches.builders.get(namespace, ref.get("name", ""))
    else:
        return True
    return builder is not None and is_true(builder, k.READY)


def waiting_workloads(caches: Caches) -> dict[str, WaitingPhase]:
    """Every phase (zero when empty, so that alerts always have a series), from the workload cache."""
    now = server_now()
    out = {phase: WaitingPhase() for phase in PHASES}
    for workload in caches.workloads.iterate():
        phase = phase_of(caches, workload)
        if phase is not None:
            entry = out[phase]
            entry.count += 1
            entry.oldest_seconds = max(entry.oldest_seconds, _age(workload, now))
    return out
