"""App-specific builders (Korifi's ADR "Managing Builders"): who uses a custom Builder, when it goes, and
from when its readiness is waited for.

A workload that names buildpacks gets the Builder named from that list (``korifi.builder_name``), one per
namespace, shared by every workload and app asking for the same list. Its *users* are the workloads
asking for its list and the Images whose ``spec.builder`` names it (kpack rebuilds an Image with its
builder for as long as the Image lives: stack and buildpack updates), neither being deleted.

Record. The Builder's ``ownerReferences`` are exactly its users (the workloads, which ``begin`` adds
before it writes the Image, and the Images, added here once they exist); the ADR's ``app-guid`` and
``build-guid`` labels are set while one value fits (one app, one workload), and an annotation lists every
app. ``kubectl get builder -o yaml`` (or ``describe``) shows all three.

Collection. Kubernetes' garbage collector deletes an object once none of its owners exists; the rule here
is the same one, so both may act and they agree: a Builder goes once it has no user. This controller
collects what the collector cannot: a Builder whose last user was an Image that moved to another builder
(an object with no ownerReferences is never collected), Builders of workloads being deleted, and clusters
without a garbage collector. It deletes only after the API server (not the cache) shows no user, with the
Builder's resourceVersion as precondition: a workload about to use the Builder has added itself to it
first, which changes the resourceVersion, so the delete fails and the Builder is looked at again. The
garbage collector checks owners, then deletes with a uid precondition only, so a new user can add itself
in between and still lose the Builder; ``track`` then makes it again (with ``begin``'s code), as it does
for one deleted by hand.

Readiness. A Builder the service creates or whose spec it changes is stamped with the time
(``CHANGED_ANNOTATION``); a workload waits ``builderReadinessTimeout`` from the later of its own creation
and that time (else the Builder's creation): kpack needs time to build a new builder image, whenever the
workload was made.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.objects import is_deleting, labels, meta
from service.kube.patches import merge_diff
from service.kube.resources import BUILD_WORKLOAD, BUILDER, IMAGE
from service.kube.server_clock import server_time
from service.kube.timestamps import parse_rfc3339, rfc3339
from service.reconcilers import korifi as k
from service.runtime import InformerFactory, Lister, Manager, Obj, Request, Result, index_value, where

log = logging.getLogger("service.reconcilers.custom_builders")

CONTROLLER = "custombuilders"
CHANGED_ANNOTATION = "kpack-image-builder.korifi.cloudfoundry.org/builder-changed-at"
APPS_ANNOTATION = "kpack-image-builder.korifi.cloudfoundry.org/app-guids"

BY_LIST = "builder-of-list"  # workloads: the Builder their buildpack list names
BY_BUILDER = "custom-builder"  # Images: the Builder their spec names
BY_OWNER = "owner-uid"  # Builders: the uids of their owners


# ------------------------------------------------------------------------------------ pure rules
def wanted_builder(work: Obj) -> str | None:
    """The name of the Builder a workload of ours asks for, or None (the default ClusterBuilder)."""
    spec = work.get("spec") or {}
    buildpacks = spec.get("buildpacks")
    if spec.get("builderName") != k.BUILDER_NAME or not buildpacks:
        return None
    return k.builder_name(list(buildpacks))


def used_builder(image: Obj) -> str | None:
    ref = (image.get("spec") or {}).get("builder") or {}
    return str(ref["name"]) if ref.get("kind") == k.BUILDER_KIND and ref.get("name") else None


def stamp(builder: Obj, existing: Obj | None) -> None:
    """Mark a Builder the service creates, or whose spec it changes, with the time: kpack builds it anew."""
    if existing is not None and existing.get("spec") == builder.get("spec"):
        return
    meta(builder).setdefault("annotations", {})[CHANGED_ANNOTATION] = rfc3339(server_time())


def readiness_since(work: Obj, builder: Obj) -> datetime | None:
    """From when a workload waits for its custom Builder: the later of the workload's creation and the
    Builder's last change (the service's stamp, else its creation); None if neither is known."""
    builder_meta = builder.get("metadata") or {}
    changed = parse_rfc3339((builder_meta.get("annotations") or {}).get(CHANGED_ANNOTATION)) or parse_rfc3339(
        builder_meta.get("creationTimestamp")
    )
    created = parse_rfc3339(work["metadata"].get("creationTimestamp"))
    moments = [m for m in (created, changed) if m is not None]
    return max(moments) if moments else None


def is_managed(builder: Obj) -> bool:
    """A Builder this service made (its stamp) or a workload owns (this service's earlier versions and
    Korifi's): never one an operator made for other uses."""
    if CHANGED_ANNOTATION in (meta(builder).get("annotations") or {}):
        return True
    return any(_is_workload_ref(ref) for ref in meta(builder).get("ownerReferences") or ())


def _is_workload_ref(ref: Obj) -> bool:
    return ref.get("kind") == "BuildWorkload" and str(ref.get("apiVersion", "")).startswith(
        "korifi.cloudfoundry.org/"
    )


def _owner_ref(obj: Obj, api_version: str, kind: str) -> Obj:
    return {
        "apiVersion": obj.get("apiVersion") or api_version,
        "kind": obj.get("kind") or kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
    }


def build_guid(work: Obj) -> str:
    return labels(work).get(k.BUILD_GUID_LABEL) or str(work["metadata"]["name"])


def recorded(builder: Obj, workloads: list[Obj], images: list[Obj]) -> Obj:
    """The Builder's metadata recording these users: owner references (others' kept), labels, annotation."""
    users = [_owner_ref(w, k.KORIFI_API_VERSION, "BuildWorkload") for w in workloads] + [
        _owner_ref(i, k.KPACK_API_VERSION, "Image") for i in images
    ]
    foreign = [
        ref
        for ref in meta(builder).get("ownerReferences") or ()
        if not _is_workload_ref(ref) and ref.get("kind") != "Image"
    ]
    kept = {ref["uid"]: ref for ref in meta(builder).get("ownerReferences") or ()}
    refs = foreign + [{**kept.get(ref["uid"], {}), **ref} for ref in sorted(users, key=_ref_key)]
    apps = sorted(
        {labels(w).get(k.APP_GUID_LABEL, "") for w in workloads} | {i["metadata"]["name"] for i in images}
    )
    apps = [a for a in apps if a]
    builds = sorted({build_guid(w) for w in workloads})
    new_labels = {
        **(meta(builder).get("labels") or {}),
        k.APP_GUID_LABEL: apps[0] if len(apps) == 1 else None,
        k.BUILD_GUID_LABEL: builds[0] if len(builds) == 1 else None,
    }
    return {
        "ownerReferences": refs,
        "labels": {key: value for key, value in new_labels.items() if value is not None},
        "annotations": {**(meta(builder).get("annotations") or {}), APPS_ANNOTATION: ",".join(apps)},
    }


def _ref_key(ref: Obj) -> tuple[str, str]:
    return (str(ref["kind"]), str(ref["name"]))


# ------------------------------------------------------------------------------------ the controller
def _builder_list_index(work: Obj) -> Iterable[str]:
    name = wanted_builder(work)
    return (index_value(work["metadata"].get("namespace", ""), name),) if name else ()


def _image_builder_index(image: Obj) -> Iterable[str]:
    name = used_builder(image)
    return (index_value(image["metadata"].get("namespace", ""), name),) if name else ()


def _owner_index(builder: Obj) -> Iterable[str]:
    return [str(ref["uid"]) for ref in meta(builder).get("ownerReferences") or () if ref.get("uid")]


class CustomBuilders:
    """Keeps each managed Builder's record of its users, and deletes it once it has none."""

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        self.client = client
        self.builders: Lister = informers.lister(BUILDER)
        self.workloads: Lister = informers.lister(BUILD_WORKLOAD)
        self.images: Lister = informers.lister(IMAGE)
        self.workloads.add_indexer(BY_LIST, _builder_list_index)
        self.images.add_indexer(BY_BUILDER, _image_builder_index)
        self.builders.add_indexer(BY_OWNER, _owner_index)

    # ------------------------------------------------------------------ event mapping
    def _owned_by(self, obj: Obj) -> list[Request]:
        uid = obj["metadata"].get("uid")
        return [Request(ns, name) for ns, name in self.builders.names_by_index(BY_OWNER, uid)] if uid else []

    def for_workload(self, work: Obj) -> list[Request]:
        name = wanted_builder(work)
        mine = [Request(work["metadata"]["namespace"], name)] if name else []
        return mine + self._owned_by(work)

    def for_image(self, image: Obj) -> list[Request]:
        name = used_builder(image)
        mine = [Request(image["metadata"]["namespace"], name)] if name else []
        return mine + self._owned_by(image)

    # ------------------------------------------------------------------ reconcile
    def _cached_users(self, namespace: str, name: str) -> tuple[list[Obj], list[Obj]]:
        key = index_value(namespace, name)
        return (
            [w for w in self.workloads.by_index(BY_LIST, key) if not is_deleting(w)],
            [i for i in self.images.by_index(BY_BUILDER, key) if not is_deleting(i)],
        )

    async def _confirmed_users(self, namespace: str, name: str) -> tuple[list[Obj], list[Obj]]:
        """The users as the API server lists them now (the caches may not have seen a new one yet)."""
        workloads = (await self.client.list(BUILD_WORKLOAD, namespace))["items"]
        images = (await self.client.list(IMAGE, namespace))["items"]
        return (
            [w for w in workloads if wanted_builder(w) == name and not is_deleting(w)],
            [i for i in images if used_builder(i) == name and not is_deleting(i)],
        )

    async def reconcile(self, request: Request) -> Result | None:
        namespace, name = request.namespace, request.name
        builder = self.builders.get(namespace, name)
        if builder is None or is_deleting(builder) or not is_managed(builder):
            return None
        workloads, images = self._cached_users(namespace, name)
        if not workloads and not images:
            workloads, images = await self._confirmed_users(namespace, name)
        if not workloads and not images:
            await self._collect(builder)
            return None
        old = meta(builder)
        desired = recorded(builder, workloads, images)
        current = {key: old.get(key) or ({} if key != "ownerReferences" else []) for key in desired}
        patch = merge_diff(current, desired)
        if patch:
            patch["resourceVersion"] = old["resourceVersion"]
            try:
                await self.client.merge_patch(BUILDER, name, {"metadata": patch}, namespace)
            except errors.NotFound:
                return None  # collected meanwhile (by the garbage collector): nothing left to record on
        return None

    async def _collect(self, builder: Obj) -> None:
        old = meta(builder)
        try:
            await self.client.delete(
                BUILDER,
                old["name"],
                old["namespace"],
                preconditions={"uid": old["uid"], "resourceVersion": old["resourceVersion"]},
            )
        except errors.NotFound:
            return  # the garbage collector was first: the same decision
        log.info(
            "custom Builder %s collected: no workload or Image uses it any more",
            old["name"],
            extra={"namespace": old["namespace"], "builder": old["name"]},
        )


def register(manager: Manager) -> CustomBuilders:
    builders = CustomBuilders(manager.client, manager.informers)
    (
        manager.controller(CONTROLLER)
        .for_(BUILDER, predicates=[where(is_managed)])
        .watches(BUILD_WORKLOAD, builders.for_workload)
        .watches(IMAGE, builders.for_image)
        .complete(builders.reconcile)
    )
    return builders
