"""Loading CustomResourceDefinitions from YAML into a cluster, as ``kubectl apply -f DIR`` would."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from service.kube import resources as r
from simcluster.cluster import Cluster


def bundled_crd_dirs() -> list[Path]:
    """The CRDs the service needs: kpack's (shipped with the simulator) and the project's own
    (``manifests/crds`` of the source checkout the simulated cluster runs from)."""
    here = Path(__file__).resolve().parent
    return [here / "crds" / "kpack", here.parent / "manifests" / "crds"]


def read_documents(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        files = (
            sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
        )
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if isinstance(doc, dict):
                    yield doc


def load_crds(cluster: Cluster, paths: Iterable[Path]) -> list[str]:
    """Create (or replace) every CRD found under ``paths``; returns their names."""
    kind = cluster.kind_for(r.CUSTOM_RESOURCE_DEFINITION.group, r.CUSTOM_RESOURCE_DEFINITION.plural)
    names = []
    for doc in read_documents(paths):
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        name = doc["metadata"]["name"]
        current = cluster.find(kind, None, name)
        if current is None:
            cluster.create(kind, "v1", None, doc, manager="sim")
        else:
            doc = {
                **doc,
                "metadata": {**doc["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
            }
            cluster.update(kind, "v1", None, name, doc, manager="sim")
        names.append(name)
    return names


def new_cluster(extra_crd_dirs: Iterable[Path] = (), **kwargs: Any) -> Cluster:
    """A fresh cluster as the service finds one: the standard namespaces and every CRD it needs."""
    cluster = Cluster(**kwargs)
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        cluster.ensure_namespace(ns)
    load_crds(cluster, [*bundled_crd_dirs(), *extra_crd_dirs])
    return cluster
