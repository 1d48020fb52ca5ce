"""The informer cache: objects by ``namespace/name`` key, with named indexes. Lookups never hit the API.

Each object is held as its compact JSON (orjson bytes) and decoded on every read, so that the cache costs
about the JSON it holds: a decoded object costs 5-9 times its JSON in Python objects, and most of a large
cache is never read between two updates (docs/cache-memory.md has the figures). Reads therefore return a
fresh dict each time — callers own what they get and may change it without touching the cache — and
the index values of an object are computed once, from the dict given to ``put``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

Obj = dict[str, Any]
IndexFunc = Callable[[Obj], Iterable[str]]

NAMESPACE_INDEX = "namespace"
OWNER_UID_INDEX = "owner-uid"


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name``, or ``name`` for cluster-scoped objects (client-go's MetaNamespaceKeyFunc)."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


def by_namespace(obj: Obj) -> Iterable[str]:
    return (obj["metadata"].get("namespace", ""),)


def by_owner_uid(obj: Obj) -> Iterable[str]:
    return tuple(ref["uid"] for ref in obj["metadata"].get("ownerReferences") or () if ref.get("uid"))


def by_label(key: str) -> IndexFunc:
    """Index by one label's value (objects without the label are not indexed)."""

    def index(obj: Obj) -> Iterable[str]:
        value = (obj["metadata"].get("labels") or {}).get(key)
        return () if value is None else (value,)

    return index


def by_labels(*keys: str, namespaced: bool = False) -> IndexFunc:
    """Index by the combination of several labels' values, joined with ``/`` (all must be present).

    ``namespaced`` puts the object's namespace first (``ns/v1/v2``, see ``index_value``): labels name
    things within a namespace, and an informer may watch every namespace."""

    def index(obj: Obj) -> Iterable[str]:
        labels = obj["metadata"].get("labels") or {}
        if not all(k in labels for k in keys):
            return ()
        values = [labels[k] for k in keys]
        if namespaced:
            values.insert(0, obj["metadata"].get("namespace", ""))
        return ("/".join(values),)  # a tuple, as every index function here: ``put`` compares them

    return index


def index_value(*parts: str) -> str:
    """The value ``by_labels`` indexes under, for a lookup (the namespace first when namespaced)."""
    return "/".join(parts)


def strip_managed_fields(obj: Obj) -> Obj:
    """The default transform: managedFields are large and nothing here reads them."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


class Store:
    def __init__(self, indexers: Mapping[str, IndexFunc] | None = None) -> None:
        self._items: dict[str, bytes] = {}
        self._indexers: dict[str, IndexFunc] = {NAMESPACE_INDEX: by_namespace, OWNER_UID_INDEX: by_owner_uid}
        self._indexers.update(indexers or {})
        self._indices: dict[str, dict[str, set[str]]] = {name: {} for name in self._indexers}

    # --------------------------------------------------------------- reads
    def get(self, key: str) -> Obj | None:
        raw = self._items.get(key)
        return None if raw is None else _decode(raw)

    def get_by(self, namespace: str | None, name: str) -> Obj | None:
        return self.get(f"{namespace}/{name}" if namespace else name)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def list_keys(self) -> list[str]:
        return list(self._items)

    def values(self) -> Iterator[Obj]:
        """The objects as they are now (later writes do not show), decoded one by one as iterated."""
        return map(_decode, list(self._items.values()))

    def by_index(self, index: str, value: str) -> list[Obj]:
        keys = self._indices[index].get(value, ())
        return [_decode(self._items[k]) for k in sorted(keys)]

    def index_keys(self, index: str, value: str) -> list[str]:
        return sorted(self._indices[index].get(value, ()))

    def has_index(self, index: str) -> bool:
        return index in self._indexers

    def encoded(self, key: str) -> bytes | None:
        """The object's JSON as held, for a caller that compares or measures it without decoding."""
        return self._items.get(key)

    # --------------------------------------------------------------- writes
    def add_indexer(self, name: str, func: IndexFunc) -> None:
        if name in self._indexers:
            raise ValueError(f"index {name!r} already exists")
        self._indexers[name] = func
        self._indices[name] = {}
        for key, raw in self._items.items():
            self._index_one(name, func, key, _decode(raw))

    def put(self, obj: Obj, raw: bytes | None = None) -> Obj | None:
        """Add or replace; returns the previous object (decoded). ``obj`` is copied: the caller keeps it.
        ``raw``: ``obj`` already encoded, by a caller that had to encode it anyway."""
        key = object_key(obj)
        if raw is None:
            raw = encode(obj)
        old_raw = self._items.get(key)
        self._items[key] = raw
        if old_raw is None:
            for name, func in self._indexers.items():
                self._index_one(name, func, key, obj)
            return None
        old = _decode(old_raw)
        for name, func in self._indexers.items():
            # Most updates are status writes that change no index value: their sets are left as they are
            # (a put costs about a fifth less than re-indexing every value did).
            old_values, new_values = func(old), func(obj)
            if old_values == new_values:
                continue
            self._unindex_one(name, key, old_values)
            self._index_one(name, func, key, obj, new_values)
        return old

    def remove(self, key: str) -> Obj | None:
        raw = self._items.pop(key, None)
        if raw is None:
            return None
        old = _decode(raw)
        self._unindex(key, old)
        return old

    def _index_one(
        self, name: str, func: IndexFunc, key: str, obj: Obj, values: Iterable[str] | None = None
    ) -> None:
        index = self._indices[name]
        for value in func(obj) if values is None else values:
            index.setdefault(value, set()).add(key)

    def _unindex_one(self, name: str, key: str, values: Iterable[str]) -> None:
        index = self._indices[name]
        for value in values:
            keys = index.get(value)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[value]

    def _unindex(self, key: str, obj: Obj) -> None:
        for name, func in self._indexers.items():
            self._unindex_one(name, key, func(obj))


def encode(obj: Obj) -> bytes:
    """Compact JSON, in a buffer of its own size: orjson's result keeps the capacity it grew to (about
    twice the JSON), which a cache that keeps it would pay for every object."""
    return memoryview(orjson.dumps(obj)).tobytes()


def _decode(raw: bytes) -> Obj:
    obj: Obj = orjson.loads(raw)
    return obj
