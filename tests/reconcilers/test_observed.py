"""What one stored pass tells the build metrics (``observed.observe``): read from the workload before and
after the pass, so the cases are plain objects. The same counts reach Prometheus in
test_prometheus_scrape.py; a stack update's droplet, which needs kpack's rebuild, is checked here."""

from __future__ import annotations

import copy
from typing import Any

from service.reconcilers import korifi as k
from service.reconcilers.buildworkload.observed import BUILD, STACK_UPDATE, observe

Obj = dict[str, Any]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def build_started(self) -> None:
        self.calls.append(("started",))

    def build_finished(self, succeeded: bool, reason: str, seconds: float) -> None:
        self.calls.append(("finished", succeeded, reason, seconds > 0))

    def droplet_written(self, trigger: str) -> None:
        self.calls.append(("droplet", trigger))


def workload(status: str | None = None, reason: str = "", droplet: str = "") -> Obj:
    obj: Obj = {"metadata": {"name": "w", "namespace": "ns", "creationTimestamp": "2020-01-01T00:00:00Z"}}
    conditions = [{"type": k.SUCCEEDED, "status": status, "reason": reason}] if status else []
    obj["status"] = {"conditions": conditions}
    if droplet:
        obj["status"]["droplet"] = {"registry": {"image": droplet}}
    return obj


def test_a_start_a_success_and_its_droplet() -> None:
    recorder = Recorder()
    observe(recorder, workload(), workload("Unknown", k.BUILD_RUNNING), [("Normal", k.BUILD_RUNNING, "m")])
    observe(
        recorder,
        workload("Unknown", k.BUILD_RUNNING),
        workload("True", k.BUILD_SUCCEEDED, droplet="r/app@sha256:1"),
        [("Normal", k.BUILD_SUCCEEDED, "m")],
    )
    assert recorder.calls == [("started",), ("finished", True, k.BUILD_SUCCEEDED, True), ("droplet", BUILD)]


def test_a_failure_counts_once_and_a_finished_workload_is_not_counted_again() -> None:
    recorder = Recorder()
    failed = workload("False", k.BUILD_TIMEOUT)
    observe(recorder, workload("Unknown", k.BUILD_RUNNING), failed, [("Warning", k.BUILD_TIMEOUT, "m")])
    observe(recorder, failed, copy.deepcopy(failed), [])
    assert recorder.calls == [("finished", False, k.BUILD_TIMEOUT, True)]


def test_a_stack_update_writes_a_droplet_and_finishes_nothing() -> None:
    recorder = Recorder()
    before = workload("True", k.BUILD_SUCCEEDED, droplet="r/app@sha256:1")
    after = workload("True", k.BUILD_SUCCEEDED, droplet="r/app@sha256:2")
    observe(recorder, before, after, [("Normal", k.STACK_UPDATED, "m")])
    observe(recorder, after, copy.deepcopy(after), [])
    assert recorder.calls == [("droplet", STACK_UPDATE)]
