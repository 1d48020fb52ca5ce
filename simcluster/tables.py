"""Server-side printing (``meta.k8s.io/v1`` Table), which ``kubectl get`` asks for by default."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from service.kube.timestamps import parse_rfc3339
from simcluster.kinds import Kind

_FILTER = re.compile(
    r"^(?P<list>[\w.]+)\[\?\(@\.(?P<key>\w+)\s*==\s*['\"](?P<value>[^'\"]*)['\"]\)\]\.(?P<rest>[\w.]+)$"
)


def wants_table(accept: str) -> bool:
    return "as=Table" in accept.replace(" ", "")


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = parse_rfc3339(timestamp)
    if then is None:
        return "<invalid>"
    seconds = int((datetime.now(UTC) - then).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.strip(".").split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def json_path(obj: dict[str, Any], path: str) -> Any:
    """The subset of JSONPath CRD printer columns use: ``.a.b`` and ``.a[?(@.k=="v")].b``."""
    m = _FILTER.match(path.strip().lstrip("."))
    if m:
        items = _dig(obj, m["list"])
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and str(item.get(m["key"])) == m["value"]:
                return _dig(item, m["rest"])
        return None
    return _dig(obj, path)


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": "Age"}


def table_for(
    kind: Kind, version: str, items: list[dict[str, Any]], list_meta: dict[str, Any]
) -> dict[str, Any]:
    # A CRD's printer columns, else its default one (Age): apiextensions-apiserver puts only Name before
    # them. Built-in kinds: Name and Age (kube-apiserver's kind-specific columns are not emulated).
    printer = kind.versions[version].printer_columns if kind.custom else []
    if not printer:
        printer = [_AGE]
    columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    columns += [
        {
            "name": c["name"],
            "type": "string" if c is _AGE and not kind.custom else c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in printer
    ]
    rows = []
    for obj in items:
        cells: list[Any] = [obj["metadata"].get("name", "")]
        for c in printer:
            value = json_path(obj, c["jsonPath"])
            # a column whose path finds nothing is null, as in apiextensions-apiserver's table convertor
            cells.append(None if value is None else _age(value) if c.get("type") == "date" else value)
        rows.append(
            {
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
        )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    }
