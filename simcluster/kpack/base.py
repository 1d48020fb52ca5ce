"""What the simulated kpack controllers share: the API client, informer caches, options, and the ways
kpack writes status (``UpdateStatus`` with the cached object's resourceVersion, only when the status changed
other than in condition times).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from service.kube.client import KubeClient
from service.kube.resources import Resource
from service.kube.timestamps import rfc3339
from service.runtime.informer import Informer
from service.runtime.store import NAMESPACE_INDEX
from simcluster.kpack import gotypes
from simcluster.kpack.options import CatalogBuildpack, KpackOptions

if TYPE_CHECKING:
    from simcluster.kpack.builders import BuilderImage

log = logging.getLogger("simcluster.kpack")

Obj = dict[str, Any]
KPACK_API_VERSION = "kpack.io/v1alpha2"


def condition(type_: str, status: str, reason: str = "", message: str = "", *, timed: bool = True) -> Obj:
    """A kpack (knative-style) condition as a Go value; ``timed=False`` leaves the time zero (``null``)."""
    return {
        "type": type_,
        "status": status,
        "severity": "",
        "lastTransitionTime": rfc3339() if timed else None,
        "reason": reason,
        "message": message,
    }


def generation_observed(obj: Obj) -> bool:
    return bool(
        obj["metadata"].get("generation", 0) == (obj.get("status") or {}).get("observedGeneration", 0)
    )


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def go_json(value: Any) -> str:
    """Compact JSON as Go's ``json.Marshal`` writes it (``<``, ``>``, ``&``, U+2028 and U+2029 escaped)."""
    text = orjson.dumps(value).decode()
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def controller_ref(owner: Obj) -> Obj:
    """``kmeta.NewControllerRef``."""
    meta = owner["metadata"]
    return {
        "apiVersion": KPACK_API_VERSION,
        "kind": owner.get("kind", ""),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


@dataclass
class Shared:
    """The client, the caches and the options every simulated controller works with."""

    client: KubeClient
    options: KpackOptions
    informers: dict[str, Informer] = field(default_factory=dict)  # by plural
    # Builder images the simulator has "built": latestImage -> what a build needs to know of it.
    builder_images: dict[str, BuilderImage] = field(default_factory=dict)
    # Buildpackages pushed while running (``KpackSimulator.publish_buildpackage``), over the catalogue.
    published: dict[str, Sequence[CatalogBuildpack]] = field(default_factory=dict)

    def get(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        return self.informers[plural].store.get_by(namespace, name)

    def by_index(self, plural: str, index: str, value: str) -> list[Obj]:
        """The cached objects of a kind that an index files under ``value``."""
        return self.informers[plural].store.by_index(index, value)

    def list(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """The cached objects of a kind, in one namespace (from the store's namespace index) or in all."""
        store = self.informers[plural].store
        if namespace is None:
            return list(store.values())
        return store.by_index(NAMESPACE_INDEX, namespace)

    async def write_status(self, res: Resource, typ: gotypes.Struct, stored: Obj, status: Obj) -> bool:
        """kpack's ``updateStatus``: set ``observedGeneration``, and PUT the status (with the cached
        object's resourceVersion, so a stale cache gets a 409 and a retry) only if it differs from the
        stored one other than in condition times. ``status`` is a Go value of the kind's status type."""
        status = dict(status)
        status["observedGeneration"] = stored["metadata"].get("generation", 0)
        status_type = typ.field_type("status")
        encoded = status_type.encode(status)
        current = status_type.encode(gotypes.decode(status_type, stored.get("status") or {}))
        if _without_times(encoded) == _without_times(current):
            return False
        body = {**stored, "status": encoded}
        await self.client.update_status(res, body)
        return True
