"""kpack's reconcilers for ClusterLifecycle, ClusterStack, ClusterStore, ClusterBuildpack, Buildpack and
SourceResolver.

Builders read only the status of stacks, stores, buildpacks and lifecycles, and Images only a ready
SourceResolver, so these reconcilers only have to write kpack's status shapes (kpack.md §1.4 to §1.8) from
the spec. With no images to fetch, the catalogue and digests derived from references stand in for the
registry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from service.kube import resources as r
from service.registry.reference import try_parse_reference
from service.runtime import Request
from simcluster.kpack import apis, gotypes
from simcluster.kpack.base import Obj, Shared, condition, log
from simcluster.kpack.options import CatalogBuildpack, repository_key
from simcluster.kpack.refs import fake_digest, resolved

_SHA = re.compile(r"^[0-9a-f]{40}$")
_TAGLIKE = re.compile(r"^(refs/tags/.+|v?[0-9]+(\.[0-9]+)*)$")


def ready_status(error: str | None) -> Obj:
    """``CreateStatusWithReadyCondition``: one Ready condition, False with the error as its message."""
    return {"conditions": [condition("Ready", "False" if error else "True", message=error or "")]}


class StoreError(Exception):
    pass


def manifest_unknown(image: str) -> StoreError:
    """How go-containerregistry reports an image the registry does not have."""
    ref = try_parse_reference(image)
    if ref is None:
        return StoreError(f"could not parse reference: {image}")
    where = f"https://{ref.registry.name}/v2/{ref.repository.path}/manifests/{ref.identifier}"
    return StoreError(f"GET {where}: MANIFEST_UNKNOWN: manifest unknown; map[Tag:{ref.identifier}]")


def buildpackage(shared: Shared, image: str) -> list[Obj]:
    """The BuildpackStatus entries of one buildpackage image, as kpack's store reader lists them."""
    key = repository_key(image)
    package: Sequence[CatalogBuildpack] | None = shared.published.get(key) or shared.options.catalogue.get(
        key
    )
    if not package:
        raise manifest_unknown(image)
    root = package[0]
    out = []
    for bp in package:
        out.append(
            {
                "id": bp.id,
                "version": bp.version,
                "buildpackage": {"id": root.id, "version": root.version, "homepage": root.homepage},
                "storeImage": {"image": image},
                "diffId": fake_digest("diff", bp.id, bp.version),
                "digest": fake_digest("layer", bp.id, bp.version),
                "size": bp.size,
                "api": bp.api,
                "homepage": bp.homepage,
                "order": [
                    {"group": [{"id": i, "version": v, "optional": o} for i, v, o in group]}
                    for group in bp.order
                ]
                or None,
                "stacks": [{"id": s, "mixins": list(bp.mixins) or None} for s in bp.stacks] or None,
            }
        )
    return out


def sort_buildpacks(buildpacks: list[Obj]) -> list[Obj]:
    return sorted(buildpacks, key=lambda b: (f"{b['id']}@{b['version']}", b["storeImage"]["image"]))


class StoreControllers:
    """Reconcile functions for the kinds whose status only reflects images."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    async def _write(self, res: Any, typ: gotypes.Struct, obj: Obj, status: Obj) -> None:
        status = gotypes.decode(typ.field_type("status"), status)
        await self.shared.write_status(res, typ, obj, status)

    async def cluster_lifecycle(self, request: Request) -> None:
        obj = self.shared.get("clusterlifecycles", None, request.name)
        if obj is None:
            return
        image = ((obj.get("spec") or {}).get("image")) or ""
        status = {**ready_status(None), **self.shared.options.lifecycle.resolved(image, resolved(image))}
        await self._write(apis.CLUSTER_LIFECYCLE_RESOURCE, apis.CLUSTER_LIFECYCLE, obj, status)

    async def cluster_stack(self, request: Request) -> None:
        obj = self.shared.get("clusterstacks", None, request.name)
        if obj is None:
            return
        spec = gotypes.decode(apis.CLUSTER_STACK_SPEC, obj.get("spec") or {})
        opts = self.shared.options
        build_image, run_image = spec["buildImage"]["image"], spec["runImage"]["image"]
        status = {
            **ready_status(None),
            "id": spec["id"],
            "buildImage": {"latestImage": resolved(build_image), "image": build_image},
            "runImage": {"latestImage": resolved(run_image), "image": run_image},
            "mixins": list(opts.stack_mixins) or None,
            "userId": opts.stack_user_id,
            "groupId": opts.stack_group_id,
        }
        await self._write(r.CLUSTER_STACK, apis.CLUSTER_STACK, obj, status)

    async def _buildpacks_status(self, images: list[str]) -> Obj:
        try:
            found = [bp for image in images for bp in buildpackage(self.shared, image)]
        except StoreError as exc:
            return ready_status(str(exc))
        return {**ready_status(None), "buildpacks": sort_buildpacks(found)}

    async def cluster_store(self, request: Request) -> None:
        obj = self.shared.get("clusterstores", None, request.name)
        if obj is None:
            return
        sources = ((obj.get("spec") or {}).get("sources")) or []
        images = [s.get("image", "") for s in sources if isinstance(s, dict)]
        await self._write(r.CLUSTER_STORE, apis.CLUSTER_STORE, obj, await self._buildpacks_status(images))

    async def cluster_buildpack(self, request: Request) -> None:
        obj = self.shared.get("clusterbuildpacks", None, request.name)
        if obj is None:
            return
        image = ((obj.get("spec") or {}).get("image")) or ""
        await self._write(
            r.CLUSTER_BUILDPACK, apis.CLUSTER_BUILDPACK, obj, await self._buildpacks_status([image])
        )

    async def buildpack(self, request: Request) -> None:
        obj = self.shared.get("buildpacks", request.namespace, request.name)
        if obj is None:
            return
        image = ((obj.get("spec") or {}).get("image")) or ""
        await self._write(r.BUILDPACK, apis.BUILDPACK, obj, await self._buildpacks_status([image]))

    async def source_resolver(self, request: Request) -> None:
        obj = self.shared.get("sourceresolvers", request.namespace, request.name)
        if obj is None:
            return
        spec = gotypes.decode(apis.SOURCE_RESOLVER_SPEC, obj.get("spec") or {})
        source = spec["source"]
        sub_path = source["subPath"]
        resolved_source: Obj = {"git": None, "blob": None, "registry": None}
        pollable = False
        if source["git"] is not None:
            git = source["git"]
            revision = git["revision"]
            if _SHA.match(revision):
                kind, commit = "Commit", revision
            else:
                kind = "Tag" if _TAGLIKE.match(revision) else "Branch"
                commit = fake_digest("commit", git["url"], revision)[len("sha256:") :][:40]
                pollable = True
            resolved_source["git"] = {
                "url": git["url"],
                "revision": commit,
                "subPath": sub_path,
                "type": kind,
                "initializeSubmodules": git["initializeSubmodules"],
            }
        elif source["blob"] is not None:
            blob = source["blob"]
            resolved_source["blob"] = {
                "url": blob["url"],
                "auth": blob["auth"],
                "subPath": sub_path,
                "stripComponents": blob["stripComponents"],
            }
        elif source["registry"] is not None:
            registry = source["registry"]
            resolved_source["registry"] = {
                "image": registry["image"],
                "subPath": sub_path,
                "imagePullSecrets": registry["imagePullSecrets"],
            }
        else:
            log.info("sourceresolver %s: invalid source type", request)
            return
        status = {
            "conditions": [
                condition("Ready", "True", timed=False),
                condition("ActivePolling", "True" if pollable else "False", timed=False),
            ],
            "source": resolved_source,
        }
        await self._write(apis.SOURCE_RESOLVER_RESOURCE, apis.SOURCE_RESOLVER, obj, status)
