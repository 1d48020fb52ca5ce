"""The Helm chart: the facts that must not drift, read from its files, and its RBAC as Helm's own library
(``helm-python-sdk``) renders it.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import yaml

from service import config
from tests.controlplane.identity import permissions, render_chart
from tests.controlplane.test_least_privilege import BEHAVIOURS

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kpack-image-builder"
TEMPLATES = CHART / "templates"


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


def test_rbac_grants_exactly_what_the_behaviours_need() -> None:
    """The roles the chart renders (Helm's own library) grant one permission per named behaviour of the
    service, no more: tests/controlplane/test_least_privilege.py shows on kube-apiserver that each is
    needed."""
    documents = render_chart("kib", "kpack-image-builder")
    assert permissions(documents) == set(BEHAVIOURS)
    for template, kind in (("clusterrole.yaml", "ClusterRole"), ("leader-election-role.yaml", "Role")):
        assert f"\nkind: {kind}\n" in (TEMPLATES / template).read_text()


def test_bindings_name_the_roles_and_the_service_account() -> None:
    for binding, role_kind, role in (
        ("clusterrolebinding.yaml", "ClusterRole", "-manager"),
        ("leader-election-rolebinding.yaml", "Role", "-leader-election"),
    ):
        text = (TEMPLATES / binding).read_text()
        assert f"kind: {role_kind}\n" in text
        assert f'name: {{{{ include "kpack-image-builder.fullname" . }}}}{role}' in text
        assert 'name: {{ include "kpack-image-builder.serviceAccountName" . }}' in text
