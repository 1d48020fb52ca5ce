"""The metadata the server writes, not the client: generated names, generation and managedFields.

Clients may send these fields, but only the server decides them, so the write verbs drop what a client
sent (``SYSTEM_META``) and set them from these functions after validation, where kube-apiserver's
strategies do. They read no cluster state beyond what they are given.
"""

from __future__ import annotations

import random
from collections.abc import Container
from typing import Any

from simcluster.kinds import Obj

# Fields of metadata a create ignores from the client (the server sets them, or they arrive later).
SYSTEM_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def generate_name(prefix: str, namespace: str, taken: Container[tuple[str, str]]) -> str:
    """``generateName``: the prefix and five random characters, a name no object in ``taken`` has."""
    while True:
        candidate = prefix + "".join(random.choices(_NAME_CHARS, k=5))
        if (namespace, candidate) not in taken:
            return candidate


def spec_changed(old: Obj, new: Obj, has_status: bool) -> bool:
    """Whether a write changes more than metadata (and status, with a status subresource): what bumps
    ``metadata.generation``."""
    skip = {"metadata", "status"} if has_status else {"metadata"}
    keys = (set(old) | set(new)) - skip
    return any(old.get(k) != new.get(k) for k in keys)


def managed_fields(
    old: Obj | None,
    manager: str,
    operation: str,
    api_version: str,
    subresource: str | None,
    body: Obj,
    at: str,
) -> list[Obj]:
    """``old``'s managedFields with this request's entry (written at ``at``): one per manager, operation
    and subresource."""
    entries = [e for e in (old["metadata"].get("managedFields") or []) if isinstance(e, dict)] if old else []
    fields = field_set(body, subresource)
    entry: Obj = {
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": at,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }
    if subresource:
        entry["subresource"] = subresource
    for i, e in enumerate(entries):
        if (e.get("manager"), e.get("operation"), e.get("subresource")) == (
            manager,
            operation,
            subresource,
        ):
            entries[i] = entry
            break
    else:
        entries.append(entry)
    return entries


def field_set(body: Obj, subresource: str | None) -> Obj:
    """A FieldsV1-shaped record of the fields a request set (a simplification: sets, not ownership)."""

    def tree(value: Any) -> Obj:
        if isinstance(value, dict):
            return {f"f:{k}": tree(v) for k, v in value.items()}
        return {}

    if not isinstance(body, dict):
        return {}
    parts = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
    meta = parts.get("metadata")
    if isinstance(meta, dict):
        parts["metadata"] = {
            k: v for k, v in meta.items() if k in ("labels", "annotations", "finalizers", "ownerReferences")
        }
        if not parts["metadata"]:
            del parts["metadata"]
    if subresource == "status":
        parts = {"status": parts.get("status", {})}
    return tree(parts)
