"""``monitoring/``: the alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``: each alert fires in one case and stays quiet in another), the dashboard's
queries parse as PromQL, and every metric the alerts and the dashboard read is one the service exposes
and docs/metrics.md describes — so renaming a metric cannot silently blind an alert.

The service's metrics come from its registry as ``run`` assembles it (``service.app``), not from a
hand-kept list; tests/reconcilers/test_prometheus_scrape.py shows the same names scraped by Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.app import assemble, service_metrics
from service.config import Config
from service.kube.client import KubeClient
from service.kube.config import explicit
from service.registry.client import RegistryClient
from service.registry.metrics import ERROR_OUTCOMES
from tests.prometheus import (
    ALERT_TESTS,
    ALERTS,
    DASHBOARD,
    ROOT,
    alert_expressions,
    dashboard_expressions,
    exposable,
    metric_names,
    promtool,
)

DOCS = ROOT / "docs" / "metrics.md"


@pytest.fixture(scope="module")
def service_registry() -> Iterator[CollectorRegistry]:
    """The registry of the service as ``serve_cluster`` assembles it; nothing runs or connects."""
    metrics = service_metrics()
    config = replace(
        Config(),
        container_repository_prefix="registry.example.com/cf/",
        cluster_builder_name="cf-kpack-cluster-builder",
        builder_service_account="kpack-service-account",
        cf_root_namespace="cf",
    )
    client = KubeClient(explicit("http://127.0.0.1:1"))  # never used: no request is made
    assemble(config, client, RegistryClient(metrics=metrics.images), metrics=metrics.registry)
    yield metrics.registry


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_the_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(alert_expressions())
    assert alerts == {
        "KpackImageBuilderNoLeader",
        "KpackImageBuilderWorkQueueStuck",
        "KpackImageBuilderReconcileErrors",
        "KpackImageBuilderBuildFailureRatio",
        "KpackImageBuilderBuildsWaitingTooLong",
        "KpackImageBuilderRegistryErrors",
        "KpackImageBuilderClockSkew",
    }
    assert fires == alerts, f"no firing case for {alerts - fires}"
    assert quiet == alerts, f"no quiet case for {alerts - quiet}"


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
            assert rule["alert"] in DOCS.read_text(), f"docs/metrics.md does not explain {rule['alert']}"


def test_the_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each query (Grafana's variables given values) as a recording rule, parsed by promtool."""
    exprs = dashboard_expressions(dashboard())
    assert len(exprs) > 20
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    file = tmp_path / "dashboard-rules.yaml"
    file.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_importable() -> None:
    """What Grafana needs to import it anywhere: no fixed data source, unique panel ids, a uid."""
    board = dashboard()
    assert board["uid"] == "kpack-image-builder" and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_the_name_reader_finds_metrics_not_labels_or_functions() -> None:
    expr = (
        'sum by (phase, le) (rate(a_total{x="b_total", y=~"c|d"}[5m])) / on (phase) group_left '
        "max without (pod) (histogram_quantile(0.9, e_bucket offset 1h)) and bool f:g or vector(1)"
    )
    assert metric_names(expr) == {"a_total", "e_bucket", "f:g"}


def test_every_metric_the_alerts_and_dashboard_read_is_exposed(service_registry: CollectorRegistry) -> None:
    exposed = exposable(service_registry)
    used = {
        name: f"alert {alert}" for alert, expr in alert_expressions().items() for name in metric_names(expr)
    }
    used |= {
        name: "the dashboard" for expr in dashboard_expressions(dashboard()) for name in metric_names(expr)
    }
    missing = {name: where for name, where in used.items() if name not in exposed}
    assert not missing, f"read but not exposed by the service: {missing}"
    # Each alert reads at least one of the service's own or controller-runtime's metrics.
    assert all(metric_names(expr) for expr in alert_expressions().values())


def test_every_metric_is_documented(service_registry: CollectorRegistry) -> None:
    documented = DOCS.read_text()
    missing = []
    for family in service_registry.collect():
        if family.name.startswith(("process_", "python_")):
            continue  # the client library's standard collectors, documented as a group
        name = family.name + ("_total" if family.type == "counter" else "")
        if not re.search(rf"`{re.escape(name)}`", documented):
            missing.append(name)
    assert not missing, f"docs/metrics.md does not list {missing}"
    for prefix in ("process_", "python_"):
        assert f"`{prefix}" in documented


def test_the_registry_alert_counts_the_failure_outcomes() -> None:
    expr = alert_expressions()["KpackImageBuilderRegistryErrors"]
    assert f'outcome=~"{"|".join(ERROR_OUTCOMES)}"' in expr
