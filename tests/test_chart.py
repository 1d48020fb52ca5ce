"""The Helm chart, rendered and linted by Helm's own library (``helm-python-sdk``, offline) for several
value sets, every object validated against Kubernetes' schemas for the oldest and newest version the chart
claims (``kubernetes-validate``), its values schema refusing typos, and the facts that must not drift.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from service import config
from tests.controlplane.identity import permissions, render_chart
from tests.controlplane.test_least_privilege import BEHAVIOURS

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kpack-image-builder"
TEMPLATES = CHART / "templates"

Obj = dict[str, Any]


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


def test_rbac_grants_exactly_what_the_behaviours_need() -> None:
    """The roles the chart renders (Helm's own library) grant one permission per named behaviour of the
    service, no more: tests/controlplane/test_least_privilege.py shows on kube-apiserver that each is
    needed."""
    documents = render_chart("kib", "kpack-image-builder")
    assert permissions(documents) == set(BEHAVIOURS)
    for template, kind in (("clusterrole.yaml", "ClusterRole"), ("leader-election-role.yaml", "Role")):
        assert f"\nkind: {kind}\n" in (TEMPLATES / template).read_text()


def test_bindings_name_the_roles_and_the_service_account() -> None:
    docs = by_kind(render_chart("kib", "ns"))
    account = docs["ServiceAccount"][0]["metadata"]["name"]
    for binding, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        (bound,) = docs[binding]
        (granted,) = docs[role]
        assert bound["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role,
            "name": granted["metadata"]["name"],
        }
        assert bound["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ns"}]


# ---------------------------------------------------------------------------------------- rendered by Helm
KUBERNETES = ("1.27.0", "1.37.0")  # the oldest the chart claims (Chart.yaml kubeVersion) and the newest
VALUE_SETS: dict[str, Obj] = {
    "defaults": {},
    "one replica": {"replicaCount": 1},
    "everything set": {
        "image": {"repository": "registry.example.com/kib", "tag": "1.2.3", "digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "pull"}],
        "commonLabels": {"team": "cf"},
        "podLabels": {"tier": "control"},
        "podAnnotations": {"example.com/a": "b"},
        "serviceAccount": {"create": True, "name": "kib", "annotations": {"example.com/role": "x"}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "probes": {"port": 9090, "liveness": {"periodSeconds": 5, "failureThreshold": 6}},
        # OpenShift's restricted SCC assigns the ids: null takes the chart's out (Helm's rule for maps).
        "podSecurityContext": {"runAsUser": None, "runAsGroup": None},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ],
        },
        "priorityClassName": "system-cluster-critical",
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "kpack-image-builder"}},
            }
        ],
        "extraArgs": ["--log-level=debug"],
        "extraEnv": [{"name": "SSL_CERT_FILE", "value": "/etc/ssl/private-ca/ca.crt"}],
        "envFrom": [{"secretRef": {"name": "extra"}}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "private-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/private-ca", "readOnly": True}],
        "extraConfig": {"workers": 4, "buildCache": "registry"},
    },
    "made elsewhere": {
        "serviceAccount": {"create": False, "name": "existing"},
        "rbac": {"create": False},
        "podDisruptionBudget": {"enabled": False},
    },
    "secure metrics": {"metrics": {"secure": True}, "serviceMonitor": {"enabled": True}},
    "secure metrics, own certificate": {"metrics": {"secure": True, "certSecret": "metrics-cert"}},
    "alert rules": {
        "prometheusRule": {"enabled": True, "namespace": "monitoring", "labels": {"release": "prometheus"}},
        "leaderElection": {"id": "kib-lease"},
    },
}


def values(extra: Obj) -> Obj:
    return {
        **extra,
        "config": {**extra.get("config", {}), "containerRepositoryPrefix": "registry.example.com/cf/"},
    }


def render(extra: Obj) -> list[Obj]:
    return render_chart("kib", "ns", values(extra))


def by_kind(documents: list[Obj]) -> dict[str, list[Obj]]:
    out: dict[str, list[Obj]] = {}
    for doc in documents:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def manager(documents: list[Obj]) -> Obj:
    (deployment,) = by_kind(documents)["Deployment"]
    container: Obj = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_the_chart_lints_clean(name: str) -> None:
    report = helm_python.lint(CHART, values(VALUE_SETS[name]), strict=True)
    assert report["errors"] == []
    # (Info only: "icon is recommended".)
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_object_is_valid_kubernetes(name: str, version: str) -> None:
    """Against Kubernetes' own OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors);
    the ServiceMonitor's and PrometheusRule's kinds are the Prometheus Operator's, which those schemas do
    not know."""
    documents = render(VALUE_SETS[name])
    assert documents
    for doc in documents:
        if doc["kind"] == "ServiceMonitor":
            assert doc["spec"]["endpoints"][0]["port"] == "metrics"
            continue
        if doc["kind"] == "PrometheusRule":
            assert [g["name"] for g in doc["spec"]["groups"]] == ["kpack-image-builder"]
            continue
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    ("wrong", "said"),
    [
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"config": {"cfStagingResources": {"buildCacheMb": 1}}}, "'buildCacheMb' not allowed"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"serviceMonitor": {"enable": True}}, "'enable' not allowed"),
        ({"prometheusRule": {"enabled": "yes"}}, "prometheusRule"),
    ],
)
def test_a_typo_or_a_wrong_type_fails_the_install(wrong: Obj, said: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(said)):
        render(wrong)


def test_defaults_run_the_service_as_documented() -> None:
    documents = render({})
    docs = by_kind(documents)
    container = manager(documents)
    assert container["args"] == [
        "run",
        "--leader-elect",
        "--leader-election-id=kpack-image-builder",
        "--metrics-bind-address=:8080",
        "--health-probe-bind-address=:8081",
        "--config=/etc/kpack-image-builder/config.yaml",
    ]
    assert (
        container["image"]
        == f"kpack-image-builder:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
    )
    assert [e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]] == [
        "metadata.name",
        "metadata.namespace",
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    # The restricted Pod Security profile.
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    pod = docs["Deployment"][0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["terminationGracePeriodSeconds"] == 40
    assert pod["enableServiceLinks"] is False
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert docs["PodDisruptionBudget"][0]["spec"]["maxUnavailable"] == 1
    assert "ServiceMonitor" not in docs and "PrometheusRule" not in docs and "NetworkPolicy" not in docs
    (service,) = docs["Service"]
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    (configmap,) = docs["ConfigMap"]
    assert (
        yaml.safe_load(configmap["data"]["config.yaml"])["containerRepositoryPrefix"]
        == "registry.example.com/cf/"
    )


def test_one_replica_has_no_anti_affinity() -> None:
    pod = by_kind(render({"replicaCount": 1}))["Deployment"][0]["spec"]["template"]["spec"]
    assert "affinity" not in pod


def test_every_value_reaches_its_object() -> None:
    documents = render(VALUE_SETS["everything set"])
    docs = by_kind(documents)
    container = manager(documents)
    assert container["image"] == "registry.example.com/kib:1.2.3@sha256:" + "a" * 64
    assert container["args"][-1] == "--log-level=debug"
    assert container["env"][-1] == {"name": "SSL_CERT_FILE", "value": "/etc/ssl/private-ca/ca.crt"}
    assert container["envFrom"] == [{"secretRef": {"name": "extra"}}]
    assert container["volumeMounts"][-1]["mountPath"] == "/etc/ssl/private-ca"
    assert (
        container["livenessProbe"]["periodSeconds"] == 5
        and container["livenessProbe"]["failureThreshold"] == 6
    )
    assert container["ports"][1]["containerPort"] == 9090
    pod_template = docs["Deployment"][0]["spec"]["template"]
    pod = pod_template["spec"]
    assert pod["volumes"][-1] == {"name": "ca", "configMap": {"name": "private-ca"}}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert pod["serviceAccountName"] == "kib"
    assert pod_template["metadata"]["labels"]["tier"] == "control"
    assert pod_template["metadata"]["annotations"]["example.com/a"] == "b"
    for doc in documents:
        assert doc["metadata"]["labels"]["team"] == "cf", doc["kind"]
    assert docs["PodDisruptionBudget"][0]["spec"] == {
        "minAvailable": 1,
        "selector": docs["Deployment"][0]["spec"]["selector"],
    }
    (policy,) = docs["NetworkPolicy"]
    assert policy["spec"]["podSelector"] == docs["Deployment"][0]["spec"]["selector"]
    assert policy["spec"]["ingress"] == [
        {
            "ports": [{"port": "metrics", "protocol": "TCP"}],
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        }
    ]
    (monitor,) = docs["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= docs["Service"][0]["metadata"]["labels"].items()
    )
    config_yaml = yaml.safe_load(docs["ConfigMap"][0]["data"]["config.yaml"])
    assert (config_yaml["workers"], config_yaml["buildCache"]) == (4, "registry")


def test_identity_and_rbac_made_elsewhere() -> None:
    docs = by_kind(render(VALUE_SETS["made elsewhere"]))
    for kind in (
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
    ):
        assert kind not in docs, kind
    assert docs["Deployment"][0]["spec"]["template"]["spec"]["serviceAccountName"] == "existing"
    with pytest.raises(helm_python.HelmRenderError, match=r"serviceAccount\.name is required"):
        render({"serviceAccount": {"create": False}})


def test_notes_say_how_to_check_the_installation() -> None:
    rendered = helm_python.Chart.load(CHART).render(values({}), name="kib", namespace="ns")
    notes = next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))
    assert "kubectl -n ns rollout status deployment/kib-kpack-image-builder" in notes
    assert "get lease kpack-image-builder" in notes


def test_the_alert_rules_are_monitoring_alerts_yaml() -> None:
    """The PrometheusRule carries monitoring/alerts.yaml's groups (files/alerts.yaml, its copy), but for the
    Lease name, which follows leaderElection.id."""
    (rule,) = by_kind(render(VALUE_SETS["alert rules"]))["PrometheusRule"]
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    source = (ROOT / "monitoring" / "alerts.yaml").read_text()
    assert (CHART / "files" / "alerts.yaml").read_text() == source, (
        "cp monitoring/alerts.yaml charts/kpack-image-builder/files/alerts.yaml"
    )
    expected = yaml.safe_load(source.replace('name="kpack-image-builder"', 'name="kib-lease"'))["groups"]
    assert rule["spec"]["groups"] == expected
    rules = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert rules["KpackImageBuilderNoLeader"]["expr"] == (
        'absent(leader_election_master_status{name="kib-lease"} == 1)'
    )
    # Prometheus's own templates in annotations reach it untouched, not rendered by Helm.
    assert "{{ $labels.phase }}" in rules["KpackImageBuilderBuildsWaitingTooLong"]["annotations"]["summary"]


def test_secure_metrics_serve_https_with_the_apis_reviews() -> None:
    documents = render(VALUE_SETS["secure metrics"])
    docs = by_kind(documents)
    container = manager(documents)
    assert "--metrics-secure" in container["args"]
    assert "--metrics-cert-dir=/etc/kpack-image-builder-metrics-tls" in container["args"]
    [secret] = docs["Secret"]
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key"}
    volumes = docs["Deployment"][0]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "metrics-tls", "secret": {"secretName": secret["metadata"]["name"]}} in volumes
    rules = [rule for role in docs["ClusterRole"] for rule in role["rules"]]
    assert {
        "apiGroups": ["authentication.k8s.io"],
        "resources": ["tokenreviews"],
        "verbs": ["create"],
    } in rules
    assert {"nonResourceURLs": ["/metrics"], "verbs": ["get"]} in rules  # the metrics reader, to bind
    [endpoint] = docs["ServiceMonitor"][0]["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    assert docs["Service"][0]["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    own = by_kind(render(VALUE_SETS["secure metrics, own certificate"]))
    assert "Secret" not in own
    volumes = own["Deployment"][0]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "metrics-tls", "secret": {"secretName": "metrics-cert"}} in volumes
