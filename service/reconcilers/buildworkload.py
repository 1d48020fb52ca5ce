"""The BuildWorkload controller's wiring.

PLACEHOLDER: until the reconciler issue lands, ``reconcile`` only records that it ran (a count per
workload and a debug log line). It writes nothing to the cluster. The wiring is real: the informers for
every kind the service will watch are started, and workloads and the Images they own are queued.
"""

from __future__ import annotations

import logging
from collections import Counter

from service.kube.resources import (
    BUILD,
    BUILD_WORKLOAD,
    BUILDER,
    BUILDER_INFO,
    CLUSTER_BUILDER,
    IMAGE,
    KORIFI,
    Resource,
)
from service.runtime.controller import Request, Result, enqueue_owner
from service.runtime.manager import Manager

log = logging.getLogger("service.reconcilers.buildworkload")

CONTROLLER = "buildworkload"
WATCHED: tuple[Resource, ...] = (BUILD_WORKLOAD, IMAGE, BUILD, BUILDER, CLUSTER_BUILDER, BUILDER_INFO)


class BuildWorkloadReconciler:
    def __init__(self, manager: Manager) -> None:
        self.workloads = manager.informers.informers_for(BUILD_WORKLOAD)
        self.runs: Counter[Request] = Counter()

    async def reconcile(self, request: Request) -> Result | None:
        found = any(i.store.get_by(request.namespace, request.name) for i in self.workloads)
        self.runs[request] += 1
        log.debug("reconciled (placeholder: nothing written)", extra={"found": found})
        return None


def register(manager: Manager) -> BuildWorkloadReconciler:
    for resource in WATCHED:
        manager.informers.informers_for(resource)
    reconciler = BuildWorkloadReconciler(manager)
    controller = manager.new_controller(CONTROLLER, reconciler.reconcile)
    controller.watch(reconciler.workloads)
    controller.watch(manager.informers.informers_for(IMAGE), enqueue_owner(KORIFI, "BuildWorkload"))
    return reconciler
