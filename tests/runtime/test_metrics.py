"""Runtime metrics exported exactly as controller-runtime names, types and labels them (machinery.md §2)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.runtime.metrics import (
    RECONCILE_BUCKETS,
    RESULTS,
    WORKQUEUE_BUCKETS,
    RuntimeMetrics,
    new_registry,
)
from service.runtime.queue import WorkQueue


def families(registry: CollectorRegistry) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_names_and_types() -> None:
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    metrics.init_controller("c", 2)
    WorkQueue("c", metrics=metrics)
    metrics.leader.labels("lease").set(1)
    assert families(registry) == {
        "workqueue_depth": "gauge",
        "workqueue_adds": "counter",
        "workqueue_queue_duration_seconds": "histogram",
        "workqueue_work_duration_seconds": "histogram",
        "workqueue_unfinished_work_seconds": "gauge",
        "workqueue_longest_running_processor_seconds": "gauge",
        "workqueue_retries": "counter",
        "controller_runtime_reconcile": "counter",
        "controller_runtime_reconcile_errors": "counter",
        "controller_runtime_terminal_reconcile_errors": "counter",
        "controller_runtime_reconcile_panics": "counter",
        "controller_runtime_reconcile_timeouts": "counter",
        "controller_runtime_reconcile_time_seconds": "histogram",
        "controller_runtime_max_concurrent_reconciles": "gauge",
        "controller_runtime_active_workers": "gauge",
        "leader_election_master_status": "gauge",
    }


def test_exposition_has_no_created_series_and_the_exact_labels() -> None:
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    metrics.init_controller("c", 1)
    WorkQueue("c", metrics=metrics)
    text = generate_latest(registry).decode()
    assert "_created" not in text
    assert 'workqueue_depth{controller="c",name="c",priority=""} 0.0' in text
    assert 'workqueue_adds_total{controller="c",name="c"} 0.0' in text
    for result in RESULTS:
        assert f'controller_runtime_reconcile_total{{controller="c",result="{result}"}} 0.0' in text
    assert 'controller_runtime_max_concurrent_reconciles{controller="c"} 1.0' in text


def test_histogram_buckets_are_controller_runtimes() -> None:
    assert tuple(10.0**e for e in range(-8, 4)) == WORKQUEUE_BUCKETS
    assert len(RECONCILE_BUCKETS) == 40
    assert RECONCILE_BUCKETS[:5] == (0.005, 0.01, 0.025, 0.05, 0.1)
    assert RECONCILE_BUCKETS[-6:] == (20, 25, 30, 40, 50, 60)
    assert list(RECONCILE_BUCKETS) == sorted(RECONCILE_BUCKETS)
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    metrics.reconcile_time.labels("c").observe(0.3)
    metrics.queue_duration.labels("c", "c").observe(5e-8)
    text = generate_latest(registry).decode()
    reconcile_les = [
        line for line in text.splitlines() if line.startswith("controller_runtime_reconcile_time")
    ]
    assert sum("_bucket{" in line for line in reconcile_les) == 41  # 40 and +Inf
    assert 'workqueue_queue_duration_seconds_bucket{controller="c",le="1e-08",name="c"} 0.0' in text
    assert 'workqueue_queue_duration_seconds_bucket{controller="c",le="1e-07",name="c"} 1.0' in text
    assert 'workqueue_queue_duration_seconds_bucket{controller="c",le="1000.0",name="c"} 1.0' in text


def test_new_registry_has_the_process_platform_and_gc_collectors() -> None:
    names = families(new_registry())
    assert "process_cpu_seconds" in names
    assert "python_info" in names
    assert "python_gc_collections" in names


def test_two_controllers_share_the_families_with_their_own_series() -> None:
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    metrics.init_controller("a", 1)
    metrics.init_controller("b", 5)
    assert registry.get_sample_value("controller_runtime_max_concurrent_reconciles", {"controller": "a"}) == 1
    assert registry.get_sample_value("controller_runtime_max_concurrent_reconciles", {"controller": "b"}) == 5
