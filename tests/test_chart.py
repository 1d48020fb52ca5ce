"""The Helm chart, checked without helm: what parses as plain YAML, and the facts that must not drift.

Templates with expressions are not rendered here; the RBAC templates keep their rules free of template
expressions precisely so that this test reads the rules the chart installs.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service import config

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kpack-image-builder"
TEMPLATES = CHART / "templates"


def plain_rules(template: str) -> list[dict[str, Any]]:
    """The ``rules:`` of an RBAC template: everything from that line on is plain YAML."""
    text = (TEMPLATES / template).read_text()
    head, sep, rules = text.partition("\nrules:\n")
    assert sep, f"{template} has no top-level rules:"
    assert "{{" not in rules, f"{template}: template expressions below rules:"
    assert "kind: " in head
    loaded: list[dict[str, Any]] = yaml.safe_load("rules:\n" + rules)["rules"]
    return loaded


def normalised(rules: list[dict[str, Any]]) -> set[tuple[str, str, frozenset[str]]]:
    """(apiGroup, resource, verbs) for every resource a rule names, so layout does not matter."""
    out = set()
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.add((group, resource, frozenset(rule["verbs"])))
    return out


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "kpack-image-builder" == CHART.name
    assert chart["type"] == "application"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]  # the image tag defaults to it


def test_values_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["replicaCount"] == 2
    assert values["leaderElection"]["id"] == "kpack-image-builder"
    assert values["config"] == {
        "clusterBuilderName": "cf-kpack-cluster-builder",
        "builderServiceAccount": "kpack-service-account",
        "builderReadinessTimeout": "30s",
        "containerRepositoryPrefix": "",  # required: the ConfigMap template refuses to render without it
        "cfRootNamespace": "cf",
        "cfStagingResources": {"buildCacheMB": 2048, "diskMB": 0, "memoryMB": 0},
        "containerRegistryType": "",
    }
    configmap = (TEMPLATES / "configmap.yaml").read_text()
    assert 'required "config.containerRepositoryPrefix' in configmap
    for key in values["config"]:
        assert f"{key}:" in configmap, key
    assert values["metrics"]["port"] == 8080 and values["probes"]["port"] == 8081
    assert values["resources"]["requests"]


def test_chart_config_is_accepted_by_the_service(tmp_path: Path) -> None:
    """The config.yaml the chart mounts must not stop `run` (unknown-but-foreign keys are only logged)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    settings = {**values["config"], "containerRepositoryPrefix": "registry.example.com/cf/"}
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(settings))
    parser = argparse.ArgumentParser()
    config.add_flags(parser)
    args = parser.parse_args(
        [
            "--leader-elect",
            "--leader-election-id=kpack-image-builder",
            "--metrics-bind-address=:8080",
            "--health-probe-bind-address=:8081",
            f"--config={file}",
        ]
    )
    loaded = config.load(args, environ={})
    assert loaded.config.leader_elect is True
    assert loaded.config.leader_election_id == "kpack-image-builder"


def test_deployment_runs_the_service_as_documented() -> None:
    text = (TEMPLATES / "deployment.yaml").read_text()
    for fact in (
        "- run",
        "- --leader-elect",
        "- --leader-election-id={{ .Values.leaderElection.id }}",
        "- --metrics-bind-address=:{{ .Values.metrics.port }}",
        "- --health-probe-bind-address=:{{ .Values.probes.port }}",
        "- --config=/etc/kpack-image-builder/config.yaml",
        "mountPath: /etc/kpack-image-builder",
        "fieldPath: metadata.name",
        "fieldPath: metadata.namespace",
        "path: /healthz",
        "path: /readyz",
        "terminationGracePeriodSeconds: 40",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
    ):
        assert fact in text, fact
    assert "- ALL" in text.split("drop:")[1].split("\n")[1]
    service = (TEMPLATES / "service.yaml").read_text()
    assert 'prometheus.io/scrape: "true"' in service


MANAGER_RULES = [
    {
        "apiGroups": [""],
        "resources": ["secrets", "serviceaccounts"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {
        "apiGroups": ["korifi.cloudfoundry.org"],
        "resources": ["builderinfos", "buildworkloads"],
        "verbs": ["create", "delete", "get", "list", "patch", "watch"],
    },
    {
        "apiGroups": ["korifi.cloudfoundry.org"],
        "resources": ["builderinfos/status", "buildworkloads/status"],
        "verbs": ["get", "patch"],
    },
    {
        "apiGroups": ["kpack.io"],
        "resources": ["builders"],
        "verbs": ["create", "get", "list", "patch", "update", "watch"],
    },
    {
        "apiGroups": ["kpack.io"],
        "resources": ["builds"],
        "verbs": ["delete", "deletecollection", "get", "list", "patch", "watch"],  # delete: not in Korifi's
    },
    {
        "apiGroups": ["kpack.io"],
        "resources": ["builds/finalizers", "builds/status", "images/status"],
        "verbs": ["get", "patch"],
    },
    {"apiGroups": ["kpack.io"], "resources": ["clusterbuilders"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["kpack.io"], "resources": ["clusterbuilders/status"], "verbs": ["get"]},
    {
        "apiGroups": ["kpack.io"],
        "resources": ["images"],
        "verbs": ["create", "delete", "get", "list", "patch", "watch"],
    },
    {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["list", "watch"]},
    # Not in Korifi's role: events about workloads land in their own namespaces.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]

LEADER_ELECTION_RULES = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]


@pytest.mark.parametrize(
    ("template", "kind", "expected"),
    [
        ("clusterrole.yaml", "ClusterRole", MANAGER_RULES),
        ("leader-election-role.yaml", "Role", LEADER_ELECTION_RULES),
    ],
)
def test_rbac_rules_are_exactly_these(template: str, kind: str, expected: list[dict[str, Any]]) -> None:
    assert f"\nkind: {kind}\n" in (TEMPLATES / template).read_text()
    assert normalised(plain_rules(template)) == normalised(expected)


def test_bindings_name_the_roles_and_the_service_account() -> None:
    for binding, role_kind, role in (
        ("clusterrolebinding.yaml", "ClusterRole", "-manager"),
        ("leader-election-rolebinding.yaml", "Role", "-leader-election"),
    ):
        text = (TEMPLATES / binding).read_text()
        assert f"kind: {role_kind}\n" in text
        assert f'name: {{{{ include "kpack-image-builder.fullname" . }}}}{role}' in text
        assert 'name: {{ include "kpack-image-builder.serviceAccountName" . }}' in text
