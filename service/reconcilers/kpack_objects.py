"""The kpack objects a BuildWorkload asks for — the app's Image and a custom Builder — and how to read
kpack's refusals of them (reference: korifi.md §4.1.3, kpack.md §5).

Pure functions of the workload, the settings and what exists: no API calls here, so the reconciler decides
when to write and this module decides what.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from service.kube import errors, quantity
from service.kube.objects import set_owner_reference
from service.reconcilers import korifi as k
from service.reconcilers.settings import BuilderSettings
from service.runtime import Obj


def quantity_value(value: Any) -> Decimal | None:
    """A quantity's value, as apimachinery parses it (``1024Mi`` == ``1Gi``); None if absent or invalid."""
    try:
        return quantity.parse(str(value).strip()).value if value else None
    except quantity.QuantityError:
        return None


def build_resources(settings: BuilderSettings) -> Obj:
    """Build pod requests (never limits): decimal megabytes, each only when configured."""
    requests: Obj = {}
    if settings.disk_mb:
        requests["ephemeral-storage"] = f"{settings.disk_mb}M"
    if settings.memory_mb:
        requests["memory"] = f"{settings.memory_mb}M"
    return {"requests": requests} if requests else {}


def add_owner(obj: Obj, workload: Obj) -> None:
    """A non-controller owner reference to the workload (kept alongside other workloads' references)."""
    owner = {
        **workload,
        "apiVersion": workload.get("apiVersion") or k.KORIFI_API_VERSION,
        "kind": workload.get("kind") or "BuildWorkload",
    }
    set_owner_reference(obj, owner)


_KPACK_DENIAL = 'admission webhook "validation.webhook.kpack.io" denied the request'
# The one kpack validation rule that reads the cluster's state (kpack.md §4.2): a default StorageClass
# added later makes the same Image acceptable.
_STATE_DEPENDENT = ("cannot be set without spec.cache.volume.storageClassName or a default StorageClass",)


def permanent_refusal(exc: errors.ApiError, *, creating: bool = False) -> str | None:
    """The text of a refusal that retrying the same write cannot overcome, or None (then it is retried).

    kpack's validation webhook judges the object alone (a malformed source image, an immutable field
    changed, a volume shrunk), so the same object is refused every time — but for its rule on default
    StorageClasses. A new object the API server finds invalid (422: a name or a field it rejects) or too
    large to take (413) is refused every time too. (A 422 on a patch may be about the stored object's
    state, e.g. its deletion, and is retried.) Errors of the moment (the webhook unreachable, conflicts,
    5xx) are not refusals."""
    message = exc.message
    if isinstance(exc, errors.BadRequest) and _KPACK_DENIAL in message:
        return None if any(rule in message for rule in _STATE_DEPENDENT) else message
    if (creating and isinstance(exc, errors.Invalid)) or exc.code == 413:
        return message
    return None


def default_builder_ref(settings: BuilderSettings) -> Obj:
    return {
        "kind": k.CLUSTER_BUILDER_KIND,
        "name": settings.cluster_builder_name,
        "apiVersion": k.KPACK_API_VERSION,
    }


def custom_builder_ref(name: str, namespace: str) -> Obj:
    return {"kind": k.BUILDER_KIND, "name": name, "namespace": namespace, "apiVersion": k.KPACK_API_VERSION}


def desired_builder(
    work: Obj,
    name: str,
    repository: str,
    cluster_builder: Obj,
    settings: BuilderSettings,
    order: list[Obj] | None = None,
) -> Obj:
    """The custom Builder for the workload's buildpacks, on the default ClusterBuilder's stack and store;
    ``order`` as ``service.reconcilers.buildpacks`` resolved it (else Korifi's: one ``{id}`` group each)."""
    cb_spec = cluster_builder.get("spec") or {}
    builder: Obj = {
        "apiVersion": k.KPACK_API_VERSION,
        "kind": k.BUILDER_KIND,
        "metadata": {"name": name, "namespace": work["metadata"]["namespace"]},
        "spec": {
            "tag": repository,
            "stack": cb_spec.get("stack"),
            "store": cb_spec.get("store"),
            "serviceAccountName": settings.builder_service_account,
            "order": order
            if order is not None
            else [{"group": [{"id": bp}]} for bp in work["spec"]["buildpacks"]],
        },
    }
    add_owner(builder, work)
    return builder


def desired_image(
    work: Obj, app_guid: str, builder_ref: Obj, existing: Obj | None, settings: BuilderSettings, cache: Obj
) -> Obj:
    """The app's kpack Image as this workload wants it (metadata merged over an existing Image's), with
    ``cache`` as ``service.reconcilers.build_cache`` chooses it."""
    spec = work.get("spec") or {}
    registry = (spec.get("source") or {}).get("registry") or {}
    source_registry: Obj = {"image": registry.get("image", "")}
    if registry.get("imagePullSecrets"):
        source_registry["imagePullSecrets"] = registry["imagePullSecrets"]
    build: Obj = {"resources": build_resources(settings)}
    if spec.get("services"):
        build["services"] = spec["services"]
    if spec.get("env"):
        build["env"] = spec["env"]
    image = {
        "apiVersion": k.KPACK_API_VERSION,
        "kind": "Image",
        "metadata": {
            **(copy.deepcopy(existing["metadata"]) if existing else {}),
            "name": app_guid,
            "namespace": work["metadata"]["namespace"],
            "labels": {k.BUILD_WORKLOAD_LABEL: work["metadata"]["name"]},
        },
        "spec": {
            "tag": k.droplet_repository(settings.container_repository_prefix, app_guid),
            "builder": builder_ref,
            "serviceAccountName": settings.builder_service_account,
            "source": {"registry": source_registry},
            "build": build,
            "cache": copy.deepcopy(cache),
        },
    }
    add_owner(image, work)
    return image
