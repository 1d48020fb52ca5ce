"""What a cluster with Korifi and kpack has before any app (the kpack simulator's ``default_objects``: the
root namespace with the BuilderInfo and the builder's ServiceAccount, a default StorageClass, the default
ClusterBuilder and what it is built from), under names of a test's own, so that tests can share one real
cluster: ``isolated`` makes them, ``World.create`` and ``World.remove`` put them in and take them out
again, with the spaces the test used.

The ClusterLifecycle keeps kpack's name (``default-lifecycle``), which every builder defaults to; it is
created if missing and left in place.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.resources import Resource
from simcluster.kpack import simulator as kpack
from simcluster.kpack.apis import CLUSTER_LIFECYCLE_RESOURCE

Obj = dict[str, Any]


@dataclass
class World:
    root: str
    cluster_builder: str
    spaces: tuple[str, ...]
    objects: list[tuple[Resource, Obj]]
    created: list[tuple[Resource, Obj]] = field(default_factory=list)

    async def create(self, admin: KubeClient) -> None:
        for resource, obj in self.objects:
            with contextlib.suppress(errors.AlreadyExists):  # kpack's ClusterLifecycle may be there
                await admin.create(resource, obj, obj["metadata"].get("namespace"))
                self.created.append((resource, obj))

    async def remove(self, admin: KubeClient) -> None:
        """Leave the shared cluster as it was. The service is gone by now, so its finalizers are taken off
        by hand (else the namespaces would stay Terminating); then the namespaces and the cluster-scoped
        objects go."""
        for space in self.spaces:
            for resource in (r.BUILD_WORKLOAD, r.BUILD, r.IMAGE, r.BUILDER):
                with contextlib.suppress(errors.NotFound):
                    for obj in (await admin.list(resource, space))["items"]:
                        if obj["metadata"].get("finalizers"):
                            with contextlib.suppress(errors.NotFound):
                                await admin.merge_patch(
                                    resource,
                                    obj["metadata"]["name"],
                                    {"metadata": {"finalizers": None}},
                                    space,
                                )
        for name in (*self.spaces, self.root):
            with contextlib.suppress(errors.NotFound):
                await admin.delete(r.NAMESPACE, name)
        for resource, obj in self.created:
            if not resource.namespaced and resource != r.NAMESPACE:
                with contextlib.suppress(errors.NotFound):
                    await admin.delete(resource, obj["metadata"]["name"])


def isolated(registry_host: str, suffix: str, spaces: int = 1) -> World:
    root = f"cf-{suffix}"
    named = {
        kpack.CLUSTER_BUILDER: f"{kpack.CLUSTER_BUILDER}-{suffix}",
        kpack.CLUSTER_STACK: f"{kpack.CLUSTER_STACK}-{suffix}",
        kpack.CLUSTER_STORE: f"{kpack.CLUSTER_STORE}-{suffix}",
    }
    objects = []
    for resource, original in kpack.default_objects(registry_host):
        obj = copy.deepcopy(original)
        meta = obj["metadata"]
        if resource == r.NAMESPACE:
            meta["name"] = root
        elif meta.get("namespace") == kpack.ROOT_NAMESPACE:
            meta["namespace"] = root
        elif resource == r.STORAGE_CLASS:
            meta["name"] = f"{meta['name']}-{suffix}"
        elif resource != CLUSTER_LIFECYCLE_RESOURCE:
            meta["name"] = named.get(meta["name"], meta["name"])
        if resource == r.CLUSTER_BUILDER:
            spec = obj["spec"]
            spec["serviceAccountRef"]["namespace"] = root
            spec["stack"]["name"] = named[kpack.CLUSTER_STACK]
            spec["store"]["name"] = named[kpack.CLUSTER_STORE]
        objects.append((resource, obj))
    names = tuple(f"space-{i}-{suffix}" for i in range(1, spaces + 1))
    return World(root, named[kpack.CLUSTER_BUILDER], names, objects)
