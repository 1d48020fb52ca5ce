"""JSON merge patches (RFC 7386) computed from two versions of an object."""

from __future__ import annotations

from typing import Any

import orjson

Obj = dict[str, Any]


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON: Python's ``==`` has ``True == 1``, which would hide a bool turned number."""
    if a == b:
        return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)
    return False


def merge_diff(old: Any, new: Any) -> Any:
    """The merge patch that turns ``old`` into ``new``: changed keys with their new values, removed keys as
    null, lists whole (a merge patch cannot address list items). ``{}`` when nothing changed."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: Obj = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif not _same(old[key], value):
            patch[key] = merge_diff(old[key], value) if isinstance(value, dict) else value
    return patch
