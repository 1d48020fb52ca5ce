"""The kustomize manifests (manifests/) against the Helm chart they are generated from.

The committed files are what manifests/generate.py makes from the chart now (a changed chart without a
regeneration fails here, with the command to run). Then real kustomize (``kubectl kustomize``, Debian's
kubernetes-client) builds them, and what it builds must be the chart's own render (Helm's library, through
tests/controlplane/identity.py, not the generator's code) object for object: manifests/default the chart's
defaults, manifests/base with every optional value off, base plus each component that value switched on.
Every object kustomize builds validates against Kubernetes' schemas for the oldest and newest version
tests/test_chart.py checks; and the example overlay (manifests/examples/korifi) moves everything into its
namespace and gives the service a configuration it accepts.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import kubernetes_validate
import pytest
import yaml

from service import config
from tests.controlplane.build import binaries
from tests.controlplane.cluster import ControlPlane
from tests.controlplane.identity import render_chart
from tests.test_chart import KUBERNETES

Obj = dict[str, Any]
Key = tuple[str, str, str, str]

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
RELEASE = NAMESPACE = "kpack-image-builder"
PLACEHOLDER = "REPLACE-ME/"
# Each component and the chart value that adds its objects (the base has them all off).
COMPONENTS: dict[str, Obj] = {
    "service-monitor": {"serviceMonitor": {"enabled": True}},
    "prometheus-rule": {"prometheusRule": {"enabled": True}},
    "pod-disruption-budget": {"podDisruptionBudget": {"enabled": True}},
    "network-policy": {"networkPolicy": {"enabled": True}},
}
BASE_VALUES: Obj = {
    "config": {"containerRepositoryPrefix": PLACEHOLDER},
    "serviceMonitor": {"enabled": False},
    "prometheusRule": {"enabled": False},
    "podDisruptionBudget": {"enabled": False},
    "networkPolicy": {"enabled": False},
}
# The Prometheus Operator's kinds, which Kubernetes' schemas do not know.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("manifests_generate", MANIFESTS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_manifests_are_the_charts_render_now() -> None:
    generate = load_generator()
    stale = generate.stale(generate.generate())
    assert stale == [], (
        f"manifests/ is out of date with charts/kpack-image-builder ({', '.join(stale)}): "
        "regenerate with .venv/bin/python manifests/generate.py"
    )


def test_every_generated_file_says_so_and_how_to_regenerate() -> None:
    generate = load_generator()
    files = generate.generate()
    assert "crds/Kustomization" in files and "default/kustomization.yaml" in files
    for path, text in files.items():
        assert text.startswith("# Generated from charts/kpack-image-builder"), path
        assert "Regenerate: .venv/bin/python manifests/generate.py" in text, path
    # The CRDs themselves stay hand-kept, where other code reads them.
    assert not any(path.startswith("crds/") and path.endswith(".yaml") for path in files)


def test_the_check_mode_finds_an_edited_file(tmp_path: Path) -> None:
    """``--check`` (and so the test above) sees a hand edit of a generated file, and a file no longer made."""
    generate = load_generator()
    files = generate.generate()
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    (copy / "base" / "service.yaml").write_text(files["base/service.yaml"].replace("8080", "9090"))
    (copy / "components" / "service-monitor" / "extra.yaml").write_text("kind: ConfigMap\n")
    assert generate.stale(files, copy) == ["base/service.yaml", "components/service-monitor/extra.yaml"]
    assert generate.main(["--check"], copy) == 1
    assert generate.main([], copy) == 0
    assert generate.stale(files, copy) == []
    assert not (copy / "components" / "service-monitor" / "extra.yaml").exists()


# ------------------------------------------------------------------------------------------ built by kustomize
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is missing (Debian's kubernetes-client; `make system-deps` installs it)")
        pytest.skip("kubectl is missing (Debian's kubernetes-client; `make system-deps` installs it)")
    return path


def kustomize(directory: Path) -> list[Obj]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def overlay(tmp_path: Path, resources: list[str], components: list[str]) -> Path:
    """A kustomization in ``tmp_path`` over directories of manifests/ (kustomize wants relative paths)."""
    relative = [os.path.relpath(MANIFESTS / name, tmp_path) for name in (*resources, *components)]
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": relative[: len(resources)],
        "components": relative[len(resources) :],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def key(doc: Obj) -> Key:
    return (doc["apiVersion"], doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])


def keyed(documents: list[Obj]) -> dict[Key, Obj]:
    out = {key(doc): doc for doc in documents}
    assert len(out) == len(documents), "two objects with one name"
    return out


def from_chart(values: Obj) -> list[Obj]:
    """The chart's objects for ``values``, but for the labels of Helm's own, which the manifests leave out,
    and with the CRDs (``../crds`` in the base)."""
    documents = render_chart(RELEASE, NAMESPACE, values)
    for doc in documents:
        labels = doc["metadata"]["labels"]
        assert labels.pop("app.kubernetes.io/managed-by") == "Helm"
        assert labels.pop("helm.sh/chart").startswith("kpack-image-builder-")
    crds = [
        doc
        for path in sorted((MANIFESTS / "crds").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert len(crds) == 2
    return crds + documents


NAMESPACE_OBJECT = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def test_default_is_the_charts_defaults() -> None:
    """manifests/default is ``helm install --create-namespace`` with the chart's defaults."""
    built = keyed(kustomize(MANIFESTS / "default"))
    expected = keyed([NAMESPACE_OBJECT, *from_chart({"config": {"containerRepositoryPrefix": PLACEHOLDER}})])
    assert built.keys() == expected.keys()
    for k, doc in expected.items():
        assert built[k] == doc, k
    kinds = {k[1] for k in built}
    assert kinds >= {
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }


def test_base_is_the_chart_with_every_optional_object_off() -> None:
    built = keyed(kustomize(MANIFESTS / "base"))
    assert built == keyed(from_chart(BASE_VALUES))
    assert not {"Namespace", "PodDisruptionBudget", *OPERATOR_KINDS} & {k[1] for k in built}


def test_every_component_is_tested() -> None:
    assert sorted(p.name for p in (MANIFESTS / "components").iterdir()) == sorted(COMPONENTS)


def switched_on(*components: str) -> Obj:
    """The base's values with the values of ``components`` on."""
    values = {k: dict(v) for k, v in BASE_VALUES.items()}
    for component in components:
        for name, value in COMPONENTS[component].items():
            values[name].update(value)
    return values


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_a_component_is_the_chart_with_its_value_on(component: str, tmp_path: Path) -> None:
    built = keyed(kustomize(overlay(tmp_path, ["base"], [f"components/{component}"])))
    assert built == keyed(from_chart(switched_on(component)))
    assert len(built) > len(keyed(from_chart(BASE_VALUES)))


def test_all_components_together(tmp_path: Path) -> None:
    built = keyed(kustomize(overlay(tmp_path, ["base"], [f"components/{c}" for c in COMPONENTS])))
    assert built == keyed(from_chart(switched_on(*COMPONENTS)))


BUILDS = ["default", "base", *(f"components/{c}" for c in COMPONENTS), "examples/korifi"]


def build(name: str, tmp_path: Path) -> list[Obj]:
    if name.startswith("components/"):
        return kustomize(overlay(tmp_path, ["base"], [name]))
    return kustomize(MANIFESTS / name)


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("name", BUILDS)
def test_every_object_is_valid_kubernetes(name: str, version: str, tmp_path: Path) -> None:
    """Against Kubernetes' own OpenAPI schemas (strict: an unknown field is an error); the Prometheus
    Operator's kinds are checked by their chart test (tests/test_chart.py)."""
    documents = build(name, tmp_path)
    assert documents
    for doc in documents:
        if doc["kind"] in OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, version, strict=True)


# ------------------------------------------------------------------------------------------ the example overlay
def namespaces_named(value: Any) -> list[str]:
    """Every namespace an object names: metadata and subjects' ``namespace``, selectors' ``matchNames``."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k == "namespace" and isinstance(v, str)]
        found += list(value.get("matchNames") or ())
        return found + [n for v in value.values() for n in namespaces_named(v)]
    if isinstance(value, list):
        return [n for v in value for n in namespaces_named(v)]
    return []


def service_config(configmap: Obj, tmp_path: Path) -> config.Config:
    """The configuration ``run`` would read from this ConfigMap, as the chart's test loads it."""
    file = tmp_path / "config.yaml"
    file.write_text(configmap["data"]["config.yaml"])
    parser = argparse.ArgumentParser()
    config.add_flags(parser)
    loaded = config.load(parser.parse_args([f"--config={file}"]), environ={})
    config.require_builder_settings(loaded.config)
    return loaded.config


def test_the_example_overlay_moves_everything_into_korifi(tmp_path: Path) -> None:
    documents = kustomize(MANIFESTS / "examples" / "korifi")
    docs = {doc["kind"]: doc for doc in documents}
    assert "Namespace" not in docs  # Korifi's exists, and `kubectl delete -k` must leave it
    assert {"PodDisruptionBudget", "ServiceMonitor"} <= docs.keys()
    assert {
        n for doc in documents for n in namespaces_named(doc) if doc["kind"] != "CustomResourceDefinition"
    } == {"korifi"}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/kpack-image-builder:0.1.0"
    settings = service_config(docs["ConfigMap"], tmp_path)
    assert settings.container_repository_prefix == "registry.example.com/cf/"
    volumes = docs["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": docs["ConfigMap"]["metadata"]["name"]}} in volumes


def test_the_placeholder_registry_path_stops_the_service(tmp_path: Path) -> None:
    """Applied without a registry path of its own, the base's service refuses to start (as ``helm install``
    refuses to render) instead of pushing to a made-up registry."""
    (configmap,) = [doc for doc in kustomize(MANIFESTS / "base") if doc["kind"] == "ConfigMap"]
    with pytest.raises(config.ConfigError, match="containerRepositoryPrefix"):
        service_config(configmap, tmp_path)


# ------------------------------------------------------------------------------------------ on kube-apiserver
def kubectl_name(doc: Obj) -> str:
    """As ``kubectl ... -o name`` says it: ``kind.group/name`` (``kind/name`` in the core group)."""
    group = doc["apiVersion"].rpartition("/")[0]
    kind = doc["kind"].lower()
    return f"{kind}.{group}/{doc['metadata']['name']}" if group else f"{kind}/{doc['metadata']['name']}"


def default_in(namespace: str, tmp_path: Path) -> list[Obj]:
    """manifests/default moved into ``namespace`` by an overlay."""
    directory = overlay(tmp_path, ["default"], [])
    doc = yaml.safe_load((directory / "kustomization.yaml").read_text())
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({**doc, "namespace": namespace}))
    return kustomize(directory)


@pytest.mark.anyio
@pytest.mark.timeout(3600 if binaries().missing() else 120)
async def test_kube_apiserver_takes_every_object_of_default(
    real_control_plane: ControlPlane, tmp_path: Path
) -> None:
    """The real kube-apiserver (the session's) admits, defaults and validates every object
    manifests/default makes, CRDs included, in a server-side dry run — moved into a namespace of this
    test's own, which is created for real (the server refuses objects in a namespace that does not exist,
    even in a dry run)."""
    namespace = f"manifests-{uuid.uuid4().hex[:8]}"
    documents = await anyio.to_thread.run_sync(default_in, namespace, tmp_path)
    (ns,) = [doc for doc in documents if doc["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == namespace
    objects = [doc for doc in documents if doc["kind"] != "Namespace"]
    assert await anyio.Path(tmp_path / "objects.yaml").write_text(yaml.safe_dump_all(objects))
    base = [kubectl(), f"--kubeconfig={real_control_plane.kubeconfig}"]

    async def run(*args: str) -> str:
        result = await anyio.run_process([*base, *args], check=False)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    await run("create", "namespace", namespace)
    try:
        out = await run(
            "apply", "--server-side", "--dry-run=server", "-o", "name", "-f", str(tmp_path / "objects.yaml")
        )
        assert sorted(out.split()) == sorted(kubectl_name(doc) for doc in objects)
    finally:
        await run("delete", "namespace", namespace, "--wait=false")
