"""What a successful build made, recorded on the workload (Shipwright's build snapshot and output).

``status.provenance`` (this project's CRD; Korifi's prunes it): the droplet image by digest and its size,
the stack and run image kpack built on, the buildpacks that actually ran with their versions (the
``io.buildpacks.build.metadata`` label of the image — what detection chose, not what the builder offers),
and the kpack Build with the reason kpack gave for it (``CONFIG``, ``STACK``, …). Pure: the caller has the
Build and the image config already, for the droplet.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.reconcilers import korifi as k
from service.reconcilers.images import ImageConfig
from service.runtime import Obj


def _buildpacks(metadata: str | None) -> list[Obj]:
    try:
        parsed: Any = orjson.loads(metadata) if metadata else {}
    except orjson.JSONDecodeError:
        return []  # the droplet fails first on unreadable metadata
    out = []
    for bp in (parsed.get("buildpacks") if isinstance(parsed, dict) else None) or ():
        if isinstance(bp, dict) and isinstance(bp.get("id"), str):
            entry = {"id": bp["id"], "version": str(bp.get("version") or "")}
            if bp.get("homepage"):
                entry["homepage"] = str(bp["homepage"])
            out.append(entry)
    return out


def provenance(build: Obj, image: str, config: ImageConfig) -> Obj:
    status = build.get("status") or {}
    stack = status.get("stack") or {}
    annotations = build["metadata"].get("annotations") or {}
    out: Obj = {
        "image": image,
        "digest": image.partition("@")[2],
        "stack": {"id": stack.get("id", ""), "runImage": stack.get("runImage", "")},
        "buildpacks": _buildpacks(config.labels.get(k.BUILD_METADATA_LABEL)),
        "kpackBuild": {
            "name": build["metadata"]["name"],
            "reason": annotations.get(k.KPACK_REASON_ANNOTATION, ""),
        },
    }
    if config.size:
        out["size"] = config.size
    return out
