"""The BuildWorkload controller: Korifi's build request in, kpack Image (and custom Builder) out, droplet
back (reference: korifi.md §4.1.3). Where Korifi has known defects this does better; each difference is
listed in docs/differences-from-korifi.md.

Where things are:

- ``reconciler`` — the reconcile skeleton: fetch → phase → store → Events, and how a pass ends;
- ``attempt`` — one pass over one workload, and the ways it ends short (``Failure``, ``Waiting``);
- ``begin`` — a new workload: input checks, custom Builder, pull secrets, the builder account, the Image;
- ``track`` — a running workload: skipped builds, builder readiness, its Build, the droplet;
- ``siblings`` — older workloads kpack skipped (``KpackMissedBuild``);
- ``stack_updates`` — a finished workload's droplet following kpack's stack rebuilds (not buildpack ones);
- ``finalize`` — a workload being deleted;
- ``caches`` — the informer caches it reads, their indexes, and the event mappers.

Reads come from informer caches; where a cache miss would end a workload for good, the absence is
confirmed with the API first (``service.runtime.reads``). The builder ServiceAccount comes from a cache
of that one name (a field selector); Secrets are read from the API when needed (a cluster-wide Secret
cache would cost memory for every secret in the cluster). The
registry is read beside the workers (``service.runtime.offload``).
"""

from __future__ import annotations

from service.kube.resources import BUILD, BUILD_WORKLOAD, BUILDER, CLUSTER_BUILDER, IMAGE, SERVICE_ACCOUNT
from service.reconcilers.buildworkload.attempt import is_ours
from service.reconcilers.buildworkload.reconciler import BuildWorkloadReconciler
from service.reconcilers.images import ImageConfigReader, RepositoryCreator
from service.reconcilers.settings import BuilderSettings
from service.runtime import Manager, Offload, where

CONTROLLER = "buildworkload"

__all__ = ["CONTROLLER", "BuildWorkloadReconciler", "is_ours", "register"]


def register(
    manager: Manager,
    settings: BuilderSettings,
    images: ImageConfigReader,
    offload: Offload,
    repositories: RepositoryCreator | None = None,
) -> BuildWorkloadReconciler:
    reconciler = BuildWorkloadReconciler(manager, settings, images, offload, repositories)
    caches = reconciler.caches
    reconciler.controller = (
        manager.controller(CONTROLLER)
        .for_(BUILD_WORKLOAD, predicates=[where(is_ours)])
        .owns(IMAGE, only_controller=False)
        .watches(BUILD, caches.workloads_for_build)
        .watches(BUILDER, caches.workloads_waiting_for_builder)
        .watches(CLUSTER_BUILDER, caches.workloads_waiting_for_builder)
        .watches(
            SERVICE_ACCOUNT, caches.workloads_waiting_for_account, field_selector=caches.account_selector
        )
        .complete(reconciler.reconcile)
    )
    return reconciler
