"""The product's controllers on a manager — the one way ``run``, the demo and the tests wire them.

The three controllers share one background pool for registry work (``service.runtime.offload``), one lane
per registry host, so the droplet reads and deletions of one slow registry queue behind each other and
not behind anything else; the pool runs while this replica leads. A fourth, ``custom_builders``, keeps the
custom Builders' record of their users and collects unused ones (no registry work).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from service.reconcilers import builderinfo, buildworkload, custom_builders, kpackbuild
from service.reconcilers.images import ImageConfigReader, ImageDeleter, RepositoryCreator
from service.reconcilers.settings import BuilderSettings
from service.runtime import Manager, Offload

REGISTRY_CONCURRENCY = 8  # registry operations at once, per registry host
INLINE_BUDGET = 0.25  # seconds a reconcile waits for a registry call before leaving it to the background


class ImageStore(ImageConfigReader, ImageDeleter, Protocol):
    """What the controllers need of the registry: image configs read, droplets deleted."""


@dataclass(frozen=True)
class Controllers:
    buildworkload: buildworkload.BuildWorkloadReconciler
    builderinfo: builderinfo.BuilderInfoReconciler
    kpackbuild: kpackbuild.KpackBuildReconciler
    registry_pool: Offload


def add_controllers(
    manager: Manager,
    settings: BuilderSettings,
    images: ImageStore,
    repositories: RepositoryCreator | None = None,
    *,
    registry_concurrency: int = REGISTRY_CONCURRENCY,
) -> Controllers:
    pool = Offload("registry", per_lane=registry_concurrency, inline=INLINE_BUDGET, registry=manager.registry)
    manager.add("registry pool", pool.run, needs_leader=True)
    custom_builders.register(manager)
    return Controllers(
        buildworkload.register(manager, settings, images, pool, repositories),
        builderinfo.register(manager, settings),
        kpackbuild.register(manager, settings, images, pool),
        pool,
    )
