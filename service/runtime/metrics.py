"""Prometheus metrics of the runtime, named, typed and labelled as controller-runtime's.

Operators' dashboards and alerts for controller-runtime controllers work unchanged: same names,
same labels (``name`` and ``controller`` both set to the controller name), same histogram buckets,
no ``_created`` series.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry

from service.metrics import Counter, Gauge, Histogram

WORKQUEUE_BUCKETS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
RECONCILE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 60,
)  # fmt: skip
RESULTS = ("success", "error", "requeue", "requeue_after")


def new_registry() -> CollectorRegistry:
    """A private registry with the process, platform and GC collectors the default one would have."""
    registry = CollectorRegistry(auto_describe=True)
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    return registry


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        q = ("name", "controller")
        self.depth = Gauge(
            "workqueue_depth", "Current depth of workqueue", (*q, "priority"), registry=registry
        )
        self.adds = Counter(
            "workqueue_adds_total", "Total number of adds handled by workqueue", q, registry=registry
        )
        self.queue_duration = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            q,
            buckets=WORKQUEUE_BUCKETS,
            registry=registry,
        )
        self.work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes.",
            q,
            buckets=WORKQUEUE_BUCKETS,
            registry=registry,
        )
        self.unfinished = Gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and "
            "hasn't been observed by work_duration. Large values indicate stuck threads. One can deduce the "
            "number of stuck threads by observing the rate at which this increases.",
            q,
            registry=registry,
        )
        self.longest = Gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            q,
            registry=registry,
        )
        self.retries = Counter(
            "workqueue_retries_total", "Total number of retries handled by workqueue", q, registry=registry
        )
        c = ("controller",)
        self.reconcile_total = Counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller",
            (*c, "result"),
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller",
            c,
            registry=registry,
        )
        self.terminal_errors = Counter(
            "controller_runtime_terminal_reconcile_errors_total",
            "Total number of terminal reconciliation errors per controller",
            c,
            registry=registry,
        )
        self.panics = Counter(
            "controller_runtime_reconcile_panics_total",
            "Total number of reconciliation panics per controller",
            c,
            registry=registry,
        )
        self.timeouts = Counter(
            "controller_runtime_reconcile_timeouts_total",
            "Total number of reconciliation timeouts per controller",
            c,
            registry=registry,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            c,
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.max_concurrent = Gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            c,
            registry=registry,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            c,
            registry=registry,
        )
        self.leader = Gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates "
            "backup, 1 indicates master. 'name' is the string used to identify the lease. Please "
            "make sure to group by name.",
            ("name",),
            registry=registry,
        )

    def init_controller(self, controller: str, max_concurrent: int) -> None:
        """Create every series of a controller at zero, as controller-runtime does before the first reconcile."""
        for result in RESULTS:
            self.reconcile_total.labels(controller, result)
        for counter in (self.reconcile_errors, self.terminal_errors, self.panics, self.timeouts):
            counter.labels(controller)
        self.max_concurrent.labels(controller).set(max_concurrent)
        self.active_workers.labels(controller).set(0)


class EventMetrics:
    """The event recorder's: controller-runtime has none (client-go drops Events silently), so the name
    is ours, in Prometheus' form (``<subsystem>_<what>_total``)."""

    REASONS = ("queue_full", "spam_filter", "write_error", "shutdown")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(
            "event_recorder_dropped_events_total",
            "Events recorded but not written to the API server, by reason: queue_full, spam_filter "
            "(client-go's per-object spam filter), write_error, shutdown (queued when the writers stopped)",
            ("reason",),
            registry=registry,
        )
        for reason in self.REASONS:  # every series exists from the start, at zero
            self.dropped.labels(reason)
