"""The app's kpack build cache, as the configuration chooses it (reference: kpack.md §4).

- ``volume``: a PersistentVolumeClaim of ``buildCacheMB`` (Korifi's only kind), of ``buildCacheStorageClass``
  or, when that is empty, of the class the Image already has (kpack refuses to change it), else the
  cluster's default.
- ``registry``: the image ``<containerRepositoryPrefix><app GUID>-cache``; each Build writes it and the
  next one reads exactly the digest its predecessor wrote.
- ``none``: ``cache: {}``. Never an omitted cache: kpack's defaulting webhook turns a nil cache into a 2G
  volume on every create and update.

Changing kind (volume, registry, none, either way) is a patch kpack admits. Within the volume kind kpack
refuses a smaller size or another class, and a class that cannot expand cannot grow its claim; Korifi
deletes and recreates the Image then, and the garbage collector takes the Image's Builds with it, whose
finalizer deletes their droplets — droplets that running apps still use (korifi.md §6.6), and the Image's
generation starts again at 1 under workloads labelled with the old numbers. Here the volume is dropped
instead (``cache: {}``, which kpack admits because its volume rules need a size on both sides; its Image
reconciler deletes the claim) and the new one set by the next patch: the same Image, its Builds, droplets
and generations kept, and only the cache's contents lost, as with a recreated Image. The cache is not
among the fields that make kpack build, so neither patch starts a Build.
"""

from __future__ import annotations

from enum import Enum

from service.reconcilers.kpack_objects import quantity_value
from service.reconcilers.settings import BuilderSettings
from service.runtime import Obj


def cache_repository(prefix: str, app_guid: str) -> str:
    return f"{prefix}{app_guid}-cache"


def desired_cache(settings: BuilderSettings, app_guid: str, existing: Obj | None) -> Obj:
    """The Image's ``spec.cache`` for this configuration (``existing``: the Image as it is, if any)."""
    if settings.build_cache == "registry":
        return {"registry": {"tag": cache_repository(settings.container_repository_prefix, app_guid)}}
    if settings.build_cache == "none":
        return {}
    volume: Obj = {"size": f"{settings.build_cache_mb}Mi"}
    storage_class = settings.build_cache_storage_class or _volume(existing).get("storageClassName")
    if storage_class:
        volume["storageClassName"] = storage_class
    return {"volume": volume}


class VolumeChange(Enum):
    """How a volume cache changes between two Images that both have one (kpack's rules, kpack.md §4.2)."""

    NONE = "none"
    GROW = "grow"  # admitted; the claim grows in place only where its class allows expansion
    SHRINK = "shrink"  # refused: "Field cannot be decreased"
    CLASS = "class"  # refused: "Immutable field changed: spec.cache.volume.storageClassName"


def volume_change(existing: Obj | None, cache: Obj) -> VolumeChange:
    old, new = _volume(existing), cache.get("volume") or {}
    if not old.get("size") or not new.get("size"):
        return VolumeChange.NONE  # kpack's volume rules apply only when both sides have a size
    if (old.get("storageClassName") or "") != (new.get("storageClassName") or ""):
        return VolumeChange.CLASS
    old_bytes, new_bytes = quantity_value(old["size"]), quantity_value(new["size"])
    if old_bytes is None or new_bytes is None or old_bytes == new_bytes:
        return VolumeChange.NONE
    return VolumeChange.GROW if new_bytes > old_bytes else VolumeChange.SHRINK


def storage_class_of(existing: Obj | None) -> str | None:
    """The class of an Image's volume cache (None: the cluster's default)."""
    return _volume(existing).get("storageClassName") or None


DROP_VOLUME: Obj = {"spec": {"cache": {"volume": None}}}  # a merge patch: leaves ``cache: {}``


def _volume(image: Obj | None) -> Obj:
    volume: Obj = (((image or {}).get("spec") or {}).get("cache") or {}).get("volume") or {}
    return volume
