"""The chaos soak at CI size (the package tests/chaos/soak/; the full size is ``benchmarks/chaos.py``), and
the soak's own logic: a soak whose plan or leadership arithmetic were wrong would pass or fail for the
wrong reason.

The soak needs no tool beyond the project's own processes, so it never skips. It runs in the default
suite with its own timeout (the suite's 120 s is for ordinary tests); on a failure its message lists each
broken invariant with the objects and evidence, and the replicas' logs stay in the test's tmp_path.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import orjson
import pytest

from service.reconcilers import korifi as k
from service.registry.client import RegistryClient
from simcluster.registry import running_registry
from tests.chaos.soak import (
    DELETED_KINDS,
    FAULT_KINDS,
    PROCESS_KINDS,
    Obj,
    Record,
    Replica,
    Sample,
    Snapshot,
    SoakSettings,
    Workload,
    check,
    overlaps,
    parse_metrics,
    plan,
    restaged,
    run_soak,
    schedule,
)

pytestmark = pytest.mark.anyio

# 72 workloads, 3 replicas, 36 s of chaos: about a minute on two cores.
CI = SoakSettings(workloads=72, replicas=3, seed=7, chaos_seconds=36.0, settle_seconds=70.0)


@pytest.mark.timeout(300)
async def test_the_service_keeps_its_invariants_through_chaos(tmp_path: Path) -> None:
    report = await run_soak(CI, tmp_path)
    print(report.full_text())  # shown by pytest on failure, with -s always
    assert not report.violations, report.explain()
    # And the run did what it planned: every invariant evaluated, the chaos and the observers at work.
    assert len(report.checked) >= 14, report.checked
    assert report.figures["workloads_created"] >= CI.workloads - 3, report.figures
    assert report.figures["scrapes"] > 0 and report.figures["lease_transitions"] >= 2, report.figures


def test_the_plan_has_every_kind_of_workload_and_is_the_same_for_a_seed() -> None:
    workloads = plan(CI)
    assert len(workloads) == CI.workloads
    assert len({w.name for w in workloads}) == len(workloads)
    kinds = Counter(w.kind for w in workloads)
    assert set(kinds) == {
        "default",
        "custom",
        "new-builder",
        "failing",
        "invalid",
        "restage",
        "delete-mid-build",
        "delete-after-finishing",
        "doomed",
        "probe",
    }, kinds
    assert any(w.fail for w in workloads) and any(w.buildpacks for w in workloads)
    # A new-builder workload is the only one of its namespace with its buildpack list.
    for new in (w for w in workloads if w.kind == "new-builder"):
        same = [w for w in workloads if (w.namespace, w.buildpacks) == (new.namespace, new.buildpacks)]
        assert same == [new], same
    for name, original in restaged(workloads).items():
        restage = next(w for w in workloads if w.name == name)
        assert (restage.namespace, restage.app, restage.package) == (original.namespace, original.app, 2)
    assert all(w.expected is None for w in workloads if w.kind in DELETED_KINDS)
    assert plan(CI) == workloads
    assert plan(SoakSettings(workloads=72, seed=8)) != workloads
    with pytest.raises(ValueError, match="at least"):
        plan(SoakSettings(workloads=10))


def test_the_schedule_has_every_fault_and_signal_and_is_the_same_for_a_seed() -> None:
    workloads = plan(CI)
    actions = schedule(CI, workloads)
    kinds = {a.kind for a in actions}
    assert set(FAULT_KINDS) <= kinds and set(PROCESS_KINDS) <= kinds, kinds
    assert {"create", "restage", "delete-mid-build", "delete-namespace", "builder-lag"} <= kinds
    assert [a.at for a in actions] == sorted(a.at for a in actions)
    assert schedule(CI, workloads) == actions
    # Every workload that the waves create is created once; the others have their own actions.
    created = [n for a in actions if a.kind == "create" for n in a.detail]
    assert len(created) == len(set(created))
    # Process signals are spaced so that one's handover is over before the next.
    signals = [a for a in actions if a.kind in PROCESS_KINDS]
    for before, after in itertools.pairwise(signals):
        assert after.at - before.at >= 3.0, (before, after)


def _timeline(*values: bool | None, step: float = 0.2, start: float = 0.0) -> list[Sample]:
    return [Sample(start + i * step, v, None) for i, v in enumerate(values)]


def test_two_replicas_leading_at_once_is_an_overlap_and_a_failed_scrape_is_not_leading() -> None:
    a = _timeline(True, True, True, True, True, True, False)
    b = _timeline(False, False, True, True, True, True, True)
    [overlap] = overlaps({"a": a, "b": b})
    assert (overlap.start, round(overlap.seconds, 2)) == (0.4, 0.6)
    # A frozen replica cannot be scraped: its unknown samples are not leadership.
    frozen = _timeline(True, None, None, None, None, None, False)
    assert overlaps({"frozen": frozen, "b": b}) == []
    # A clean handover: one stops before the other starts.
    assert (
        overlaps({"a": _timeline(True, True, False, False), "b": _timeline(False, False, False, True)}) == []
    )


def test_the_metrics_scan_reads_leadership_and_sums_reconciles() -> None:
    text = "\n".join(
        [
            "# HELP leader_election_master_status Gauge of if the reporting system is master.",
            'leader_election_master_status{name="kpack-image-builder-leader-election"} 1.0',
            'controller_runtime_reconcile_total{controller="buildworkload",result="success"} 12.0',
            'controller_runtime_reconcile_total{controller="kpackbuild",result="error"} 3.0',
            'controller_runtime_reconcile_errors_total{controller="kpackbuild"} 3.0',
        ]
    )
    assert parse_metrics(text) == (True, 15.0)
    assert parse_metrics(text.replace("} 1.0", "} 0.0", 1)) == (False, 15.0)
    assert parse_metrics("") == (None, None)


def _workload(w: Workload, status: str, reason: str, message: str = "", droplet: str = "") -> Obj:
    obj = w.body("registry.example.com")
    obj["status"] = {
        "conditions": [{"type": k.SUCCEEDED, "status": status, "reason": reason, "message": message}]
    }
    if droplet:
        obj["status"]["droplet"] = {"registry": {"image": droplet}}
    return obj


def _named(kind: str, namespace: str, name: str, spec: Obj | None = None) -> Obj:
    return {"kind": kind, "metadata": {"namespace": namespace, "name": name}, "spec": spec or {}}


async def test_the_checks_name_the_broken_invariants_with_their_objects_and_evidence(tmp_path: Path) -> None:
    record = Record(CI, tmp_path)
    ok, wrong, gone = (
        next(w for w in record.workloads if w.kind == kind)
        for kind in ("default", "new-builder", "delete-mid-build")
    )
    async with running_registry() as reg, RegistryClient(insecure_registries=[reg.host]) as client:
        digest = await client.push_image(f"{reg.host}/cf/{ok.app}-droplets:latest", {"config": {}}, [b"ok"])
        await client.push_image(
            f"{reg.host}/cf/{gone.app}-droplets:b1.20260101.000000", {"config": {}}, [b"x"]
        )
    for w in (ok, wrong, gone):
        record.created[w.name] = 1.0
    record.deleted_while[gone.name] = "mid-build"
    order = [{"group": [{"id": b}]} for b in wrong.buildpacks]
    snapshot = Snapshot(
        workloads={
            (ok.namespace, ok.name): _workload(
                ok, "True", k.BUILD_SUCCEEDED, droplet=f"{reg.host}/cf/{ok.app}-droplets@{digest}"
            ),
            (wrong.namespace, wrong.name): _workload(
                wrong, "False", k.BUILDER_NOT_READY, k.CUSTOM_BUILDER_NOT_FOUND
            ),
        },
        images=[_named("Image", w.namespace, w.app) for w in (ok, wrong, gone)],
        builds=[],
        builders=[_named("Builder", wrong.namespace, name, {"order": order}) for name in ("b-1", "b-2")],
        namespaces=set(),
    )
    log = tmp_path / "replica-0-0.log"
    crash = {
        "level": "error",
        "msg": "reconcile failed: boom",
        "stacktrace": "Traceback (most recent call last):\n  ...\nKeyError: 'x'",
    }
    log.write_bytes(b'{"level":"info","msg":"starting"}\n' + orjson.dumps(crash) + b"\n")
    a = Replica(0, 0, None, log, 0.0)  # type: ignore[arg-type]  # no process: the records are what is checked
    b = Replica(1, 0, None, tmp_path / "replica-1-0.log", 0.0)  # type: ignore[arg-type]
    a.samples = [Sample(0.2 * i, True, None) for i in range(10)]
    b.samples = [Sample(0.2 * i, i >= 3, None) for i in range(10)]
    b.signals, b.exit_code = [(2.0, "SIGTERM")], 1
    record.replicas = [a, b]

    report = check(record, snapshot, reg, 30.0)
    found = {v.invariant: v for v in report.violations}
    assert set(found) == {
        "terminal-states",
        "one-image-per-app",
        "no-duplicate-builders",
        "no-leaked-droplets",
        "no-tracebacks",
        "sigterm-exits-0",
        "single-leader",
    }, report.explain()
    assert f"{wrong.name}" in found["terminal-states"].details[0]
    assert "Custom Builder not found" in found["terminal-states"].details[0]
    assert found["one-image-per-app"].details == [
        f"{gone.namespace}/{gone.app}: kpack Image left for a deleted app"
    ]
    assert "b-1, b-2" in found["no-duplicate-builders"].details[0]
    assert f"{gone.app}-droplets" in found["no-leaked-droplets"].details[0]
    assert "deleted mid-build" in found["no-leaked-droplets"].details[0]
    assert (
        "KeyError: 'x'" in found["no-tracebacks"].details[0]
        and "replica-0-0.log:2" in found["no-tracebacks"].details[0]
    )
    assert "replica-1-0" in found["sigterm-exits-0"].details[0]
    assert (
        "replica-0-0 and replica-1-0 both leading from t+0.60s to t+1.80s"
        in found["single-leader"].details[0]
    )
    assert "droplets-present" in report.checked and "none-stuck" in report.checked
    assert report.explain().count("\n    - ") == sum(len(v.details) for v in report.violations)
