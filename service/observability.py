"""The service's own (domain) Prometheus metrics, beside the runtime's controller-runtime ones.

The reconcilers report outcomes through a small protocol (``service.reconcilers.buildworkload.observed``);
this module, part of the composition like ``service.app``, turns them into series on the service's
``CollectorRegistry``. Keeping names, labels and buckets here, in one place that docs/metrics.md mirrors,
leaves the domain free of a metrics library and lets ``monitoring/`` (alerts, dashboard) be checked
against one list. Registry request metrics live with the registry client (``service.registry.metrics``),
as the REST client's live with the Kubernetes client.

Cardinality is bounded by design: no namespace, workload or app label; ``reason`` takes the service's own
Succeeded reasons (a fixed set, docs/metrics.md), ``phase`` four values, ``trigger`` two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.kube import server_clock
from service.metrics import Counter, Histogram
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload.observed import WaitingPhase

PREFIX = "kpack_image_builder_"
# From a workload's creation to its end: a cached rebuild takes seconds, a cold one minutes, a queue hours.
BUILD_DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600, 7200, 14400)


class WaitingCollector(Collector):
    """``workloads_waiting`` and ``workloads_waiting_oldest_seconds`` by phase, read at scrape time."""

    def __init__(self, waiting: Callable[[], Mapping[str, WaitingPhase]]) -> None:
        self.waiting = waiting

    def collect(self) -> Iterator[GaugeMetricFamily]:
        count = GaugeMetricFamily(
            PREFIX + "workloads_waiting",
            "BuildWorkloads of this service not yet finished, by phase (starting, builder_not_ready, "
            "pod_pending, build_running), as this replica's cache sees them.",
            labels=("phase",),
        )
        oldest = GaugeMetricFamily(
            PREFIX + "workloads_waiting_oldest_seconds",
            "Age (since creation) of the oldest BuildWorkload not yet finished, by phase; 0 when none.",
            labels=("phase",),
        )
        for phase, entry in sorted(self.waiting().items()):
            count.add_metric((phase,), entry.count)
            oldest.add_metric((phase,), entry.oldest_seconds)
        yield count
        yield oldest

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Described without reading the cache, so registering does not run a scrape.
        return iter(())


class ClockCollector(Collector):
    """``apiserver_clock_offset_seconds``: how far the API server's clock is from this node's, as the
    Kubernetes client learns it (``service.kube.server_clock``), read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            PREFIX + "apiserver_clock_offset_seconds",
            "The API server's clock minus this node's, from the Date of its answers (0 within 2 s); the "
            "service counts its limits by the server's clock.",
            value=server_clock.SERVER.offset,
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class BuildMetrics:
    """The Prometheus side of ``observed.BuildMetrics``."""

    def __init__(
        self, registry: CollectorRegistry, waiting: Callable[[], Mapping[str, WaitingPhase]]
    ) -> None:
        self.started = Counter(
            PREFIX + "builds_started_total",
            "Builds started: a workload's kpack Image made ready to build.",
            registry=registry,
        )
        self.finished = Counter(
            PREFIX + "builds_finished_total",
            "Builds finished, by result (succeeded, failed) and the Succeeded condition's reason.",
            ("result", "reason"),
            registry=registry,
        )
        self.duration = Histogram(
            PREFIX + "build_duration_seconds",
            "Time from a BuildWorkload's creation to its Succeeded condition becoming True or False, by result.",
            ("result",),
            buckets=BUILD_DURATION_BUCKETS,
            registry=registry,
        )
        self.droplets = Counter(
            PREFIX + "droplets_written_total",
            "Droplets written to a BuildWorkload's status, by trigger (build, stack_update).",
            ("trigger",),
            registry=registry,
        )
        # Present at zero from the start, so that rate() sees the first build of each kind.
        self.finished.labels("succeeded", k.BUILD_SUCCEEDED)
        self.finished.labels("failed", k.BUILD_FAILED)
        for result in ("succeeded", "failed"):
            self.duration.labels(result)
        for trigger in ("build", "stack_update"):
            self.droplets.labels(trigger)
        registry.register(WaitingCollector(waiting))

    def build_started(self) -> None:
        self.started.inc()

    def build_finished(self, succeeded: bool, reason: str, seconds: float) -> None:
        result = "succeeded" if succeeded else "failed"
        self.finished.labels(result, reason).inc()
        self.duration.labels(result).observe(seconds)

    def droplet_written(self, trigger: str) -> None:
        self.droplets.labels(trigger).inc()
