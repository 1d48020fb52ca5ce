"""The BuilderInfo controller: the ``kpack-image-builder`` BuilderInfo in the CF root namespace mirrors the
default ClusterBuilder's stack, buildpacks and readiness, which is what ``cf buildpacks`` and ``cf stacks``
show (reference: korifi.md §4.1.4). The BuilderInfo itself is created by the installer, never here.
"""

from __future__ import annotations

import copy
import logging

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.conditions import find, is_true, set_condition
from service.kube.patches import merge_diff
from service.kube.resources import BUILDER_INFO, CLUSTER_BUILDER
from service.reconcilers import korifi as k
from service.reconcilers.settings import BuilderSettings
from service.runtime import Lister, Manager, Obj, Request, Result, where

log = logging.getLogger("service.reconcilers.builderinfo")

CONTROLLER = "builderinfo"


def updated_timestamp(cluster_builder: Obj) -> str:
    """When the ClusterBuilder last changed, as far as the cache can tell.

    Korifi takes the newest ``managedFields`` time, which the informer cache strips (they are large and
    read nowhere else); the newest condition transition is the next best witness of a rebuild.
    """
    meta = cluster_builder.get("metadata") or {}
    times = [meta.get("creationTimestamp") or ""]
    times += [entry.get("time") or "" for entry in meta.get("managedFields") or ()]
    times += [
        c.get("lastTransitionTime") or ""
        for c in (cluster_builder.get("status") or {}).get("conditions") or ()
    ]
    return max(times)


def mirror(cluster_builder: Obj) -> tuple[list[Obj], list[Obj]]:
    """(stacks, buildpacks) of the BuilderInfo status for this ClusterBuilder."""
    status = cluster_builder.get("status") or {}
    created = (cluster_builder.get("metadata") or {}).get("creationTimestamp", "")
    updated = updated_timestamp(cluster_builder)
    stack = (status.get("stack") or {}).get("id") or ""
    stacks = (
        [{"name": stack, "description": "", "creationTimestamp": created, "updatedTimestamp": updated}]
        if stack
        else []
    )
    buildpacks = []
    for entry in status.get("order") or ():
        group = entry.get("group") or []
        if not group:
            continue  # Korifi indexes group[0] and panics; an empty group names no buildpack
        buildpacks.append(
            {
                "name": group[0].get("id", ""),
                "version": group[0].get("version", ""),
                "stack": stack,
                "creationTimestamp": created,
                "updatedTimestamp": updated,
            }
        )
    return stacks, buildpacks


class BuilderInfoReconciler:
    def __init__(self, manager: Manager, settings: BuilderSettings) -> None:
        self.client: KubeClient = manager.client
        self.settings = settings
        self.infos: Lister = manager.informers.lister(BUILDER_INFO)
        self.cluster_builders: Lister = manager.informers.lister(CLUSTER_BUILDER)

    def is_ours(self, info: Obj) -> bool:
        meta = info.get("metadata") or {}
        return (
            meta.get("name") == k.BUILDER_INFO_NAME
            and meta.get("namespace") == self.settings.cf_root_namespace
        )

    def for_cluster_builder(self, cluster_builder: Obj) -> list[Request]:
        if cluster_builder["metadata"]["name"] != self.settings.cluster_builder_name:
            return []
        return [Request(self.settings.cf_root_namespace, k.BUILDER_INFO_NAME)]

    async def reconcile(self, request: Request) -> Result | None:
        cached = self.infos.get(request.namespace, request.name)
        if cached is None or not self.is_ours(cached) or cached["metadata"].get("deletionTimestamp"):
            return None  # a BuilderInfo being deleted keeps its last status, as Korifi's
        generation = int(cached["metadata"].get("generation") or 0)
        status = copy.deepcopy(cached.get("status") or {})
        status["observedGeneration"] = generation
        conditions: list[Obj] = status.setdefault("conditions", [])
        name = self.settings.cluster_builder_name
        cluster_builder = self.cluster_builders.get(None, name)
        if cluster_builder is None:
            status["stacks"], status["buildpacks"] = [], []
            set_condition(
                conditions,
                k.READY,
                "False",
                k.CLUSTER_BUILDER_MISSING,
                f"resource not ready: {k.CLUSTER_BUILDER_MISSING}: Error fetching ClusterBuilder "
                f'"{name}": ClusterBuilder.kpack.io "{name}" not found',
                generation,
            )
        else:
            status["stacks"], status["buildpacks"] = mirror(cluster_builder)
            if is_true(cluster_builder, k.READY):
                set_condition(conditions, k.READY, "True", k.READY_REASON, k.READY_MESSAGE, generation)
            else:
                why = (find((cluster_builder.get("status") or {}).get("conditions"), k.READY) or {}).get(
                    "message"
                )
                set_condition(
                    conditions,
                    k.READY,
                    "False",
                    k.CLUSTER_BUILDER_NOT_READY,
                    f"resource not ready: {k.CLUSTER_BUILDER_NOT_READY}: ClusterBuilder "
                    f'"{name}" is not ready: {why or ""}',
                    generation,
                )
        patch = merge_diff(cached.get("status") or {}, status)
        if not patch:
            return None
        # The CRD requires both lists in every status written.
        patch["stacks"], patch["buildpacks"] = status["stacks"], status["buildpacks"]
        try:
            await self.client.patch_status(
                BUILDER_INFO,
                request.name,
                {"metadata": {"resourceVersion": cached["metadata"]["resourceVersion"]}, "status": patch},
                request.namespace,
            )
        except errors.NotFound:
            return None
        return None


def register(manager: Manager, settings: BuilderSettings) -> BuilderInfoReconciler:
    reconciler = BuilderInfoReconciler(manager, settings)
    (
        manager.controller(CONTROLLER)
        .for_(BUILDER_INFO, predicates=[where(reconciler.is_ours)])
        .watches(CLUSTER_BUILDER, reconciler.for_cluster_builder)
        .complete(reconciler.reconcile)
    )
    return reconciler
