"""What the BuildWorkload controller reads from informer caches, the indexes it keeps there, and how
events on those objects map back to workloads.

Index values are namespaced, since the informers may watch every namespace. A Build concerns the
workloads of its Image generation; a Builder or ClusterBuilder concerns the running workloads whose Image
uses it (they wait for it to become ready); an Image concerns its owners; the builder ServiceAccount
concerns the unfinished workloads of its namespace.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.kube.conditions import status_of
from service.kube.resources import (
    BUILD,
    BUILD_WORKLOAD,
    BUILDER,
    BUILDPACK,
    CLUSTER_BUILDER,
    CLUSTER_BUILDPACK,
    IMAGE,
    SERVICE_ACCOUNT,
)
from service.reconcilers import korifi as k
from service.runtime import InformerFactory, Lister, Obj, Request, TTLReads, by_labels, index_value

BY_APP = "app-guid"
BY_APP_GENERATION = "app-guid/generation"
BY_IMAGE_GENERATION = "image/generation"
BY_BUILDER = "builder"
BY_NAMESPACE = "namespace"

app_index = by_labels(k.APP_GUID_LABEL, namespaced=True)
app_generation_index = by_labels(k.APP_GUID_LABEL, k.IMAGE_GENERATION_LABEL, namespaced=True)
image_generation_index = by_labels(k.KPACK_IMAGE_LABEL, k.KPACK_IMAGE_GENERATION_LABEL, namespaced=True)


def namespace_index(obj: Obj) -> Iterable[str]:
    return (str(obj["metadata"].get("namespace", "")),)


def image_builder_index(obj: Obj) -> Iterable[str]:
    builder = (obj.get("spec") or {}).get("builder") or {}
    kind, name = builder.get("kind"), builder.get("name")
    if not kind or not name:
        return ()
    namespace = obj["metadata"].get("namespace", "") if kind == k.BUILDER_KIND else ""
    return (f"{kind}/{namespace}/{name}",)


def builds_selector(app_guid: str, generation: int | str) -> str:
    """The label selector of an Image generation's Builds, for reads that bypass the cache."""
    return f"{k.KPACK_IMAGE_LABEL}={app_guid},{k.KPACK_IMAGE_GENERATION_LABEL}={generation}"


def account_selector(name: str) -> str:
    """The builder ServiceAccount of every space, and no other account: a cache of a few small objects."""
    return f"metadata.name={name}"


class Caches:
    def __init__(self, informers: InformerFactory, builder_service_account: str, secrets: TTLReads) -> None:
        self.workloads: Lister = informers.lister(BUILD_WORKLOAD)
        self.images: Lister = informers.lister(IMAGE)
        self.builds: Lister = informers.lister(BUILD)
        self.builders: Lister = informers.lister(BUILDER)
        self.cluster_builders: Lister = informers.lister(CLUSTER_BUILDER)
        # What workloads may name besides the ClusterBuilder's order (service.reconcilers.buildpacks).
        self.buildpacks: Lister = informers.lister(BUILDPACK)
        self.cluster_buildpacks: Lister = informers.lister(CLUSTER_BUILDPACK)
        # The builder ServiceAccount, read for every workload (begin waits for it, the droplet names its
        # pull secrets).
        self.account_selector = account_selector(builder_service_account)
        self.service_accounts: Lister = informers.lister(
            SERVICE_ACCOUNT, field_selector=self.account_selector
        )
        # Secrets are not watched (a cluster-wide Secret cache would hold every secret): the pull Secrets
        # every workload names (begin checks the source's, the droplet reads the account's) are read by
        # name and kept for a short while (``service.runtime.ttlreads``).
        self.secrets = secrets
        self.workloads.add_indexer(BY_APP, app_index)
        self.workloads.add_indexer(BY_NAMESPACE, namespace_index)
        self.workloads.add_indexer(BY_APP_GENERATION, app_generation_index)
        self.builds.add_indexer(BY_IMAGE_GENERATION, image_generation_index)
        self.images.add_indexer(BY_BUILDER, image_builder_index)

    def builds_of(self, namespace: str, app_guid: str, generation: int | str) -> list[Obj]:
        return self.builds.by_index(BY_IMAGE_GENERATION, index_value(namespace, app_guid, str(generation)))

    def workloads_of_app(self, namespace: str, app_guid: str) -> list[Obj]:
        return self.workloads.by_index(BY_APP, index_value(namespace, app_guid))

    def workloads_of_generation(self, namespace: str, app_guid: str, generation: str) -> list[Obj]:
        return self.workloads.by_index(BY_APP_GENERATION, index_value(namespace, app_guid, generation))

    # ------------------------------------------------------------------ event mapping
    def workloads_for_build(self, build: Obj) -> list[Request]:
        """A Build concerns the workloads of its Image generation (Korifi's Build → workload map)."""
        return [
            Request(namespace, name)
            for key in image_generation_index(build)
            for namespace, name in self.workloads.names_by_index(BY_APP_GENERATION, key)
        ]

    def workloads_waiting_for_account(self, account: Obj) -> list[Request]:
        """The unfinished workloads of the builder ServiceAccount's namespace (some may wait for it)."""
        namespace = str(account["metadata"].get("namespace", ""))
        return [
            Request.for_object(workload)
            for workload in self.workloads.by_index(BY_NAMESPACE, namespace)
            if status_of(workload, k.SUCCEEDED) in (None, "Unknown")
        ]

    def workloads_waiting_for_builder(self, builder: Obj) -> list[Request]:
        """Running workloads whose Image uses this Builder or ClusterBuilder: woken when it changes."""
        kind = builder.get("kind") or (
            k.BUILDER_KIND if builder["metadata"].get("namespace") else "ClusterBuilder"
        )
        key = f"{kind}/{builder['metadata'].get('namespace', '')}/{builder['metadata']['name']}"
        out = []
        for image in self.images.by_index(BY_BUILDER, key):
            app_key = index_value(image["metadata"].get("namespace", ""), image["metadata"]["name"])
            for workload in self.workloads.by_index(BY_APP, app_key):
                if status_of(workload, k.SUCCEEDED) == "Unknown":
                    out.append(Request.for_object(workload))
        return out
