"""The emulated cluster's storage: what etcd and kube-apiserver's watch cache hold.

Every other concern reads this state, so it lives in one place, the base of ``Cluster``: the served
kinds, the objects, the global resourceVersion, each kind's event history (and how much of it is
forgotten) and its open watchers. A write is stored and published in the same synchronous call (the
object, then its event in the history and in every watcher's queue), so no reader on the event loop ever
sees one without the other, as one etcd transaction and its watch event are one.

Stored objects are never mutated: a write stores a new dict, which lets lists, paginated snapshots and
the watch history share objects by reference. ``fresh`` is the copy a caller may change.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import orjson

from service.kube import errors
from simcluster.kinds import Kind, Obj, built_in_kinds
from simcluster.watch import Event, Watcher

ObjKey = tuple[str, str, str, str]  # group, plural, namespace ("" if cluster-scoped), name


def fresh(obj: Obj) -> Obj:
    """A deep copy the caller may mutate (orjson round trip: fast, and proves the object is JSON)."""
    out: Obj = orjson.loads(orjson.dumps(obj))
    return out


@dataclass(slots=True)
class Snapshot:
    """The items of a paginated list, as they were at its first page (``rv``)."""

    rv: int
    items: list[Obj]
    created: float


def _schemas(kind: Kind) -> dict[str, object]:
    return {name: version.schema for name, version in kind.versions.items()}


class Store:
    """Objects, the global resourceVersion, the event history and the open watches."""

    def __init__(self, *, history_limit: int = 100_000, watch_buffer: int = 100_000) -> None:
        self.rv = 1
        self.kinds: dict[tuple[str, str], Kind] = {}
        # (group, kind name) -> the kinds so named, in registration order: how owner references are resolved
        self._kinds_by_name: dict[tuple[str, str], list[Kind]] = {}
        self.served: dict[tuple[str, str, str], Kind] = {}  # (group, version, plural) -> kind
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self.history: dict[tuple[str, str], deque[Event]] = {}
        self.history_floor: dict[tuple[str, str], int] = {}  # events up to this rv are no longer kept
        self.history_limit = history_limit
        self.compacted_rv = 0
        self.watchers: dict[tuple[str, str], set[Watcher]] = {}
        self.watch_buffer = watch_buffer
        self.snapshots: dict[str, Snapshot] = {}
        # kind -> the resourceVersion its current schemas were registered at: an object stored after it
        # (a greater resourceVersion) was written through them.
        self.schemas_since: dict[tuple[str, str], int] = {}
        self.snapshot_ttl = 300.0
        for kind in built_in_kinds():
            self.register(kind)

    # ----------------------------------------------------------------- kinds
    def register(self, kind: Kind) -> None:
        old = self.kinds.get(kind.key)
        if old is None or _schemas(old) != _schemas(kind):
            # Objects stored up to now were pruned, defaulted and validated by another schema (or none).
            self.schemas_since[kind.key] = self.rv
        if old is not None:
            for v in old.versions:
                self.served.pop((old.group, v, old.plural), None)
            if old.kind != kind.kind:
                self._drop_kind_name(old)
        named = self._kinds_by_name.setdefault((kind.group, kind.kind), [])
        for i, k in enumerate(named):
            if k.key == kind.key:
                named[i] = kind  # a re-registered kind keeps its place
                break
        else:
            named.append(kind)
        self.kinds[kind.key] = kind
        for v in kind.versions:
            self.served[(kind.group, v, kind.plural)] = kind
        self.objects.setdefault(kind.key, {})
        self.history.setdefault(kind.key, deque())
        self.history_floor.setdefault(kind.key, self.rv)
        self.watchers.setdefault(kind.key, set())

    def unregister(self, group: str, plural: str) -> None:
        kind = self.kinds.pop((group, plural), None)
        if kind is None:
            return
        self._drop_kind_name(kind)
        for v in kind.versions:
            self.served.pop((group, v, plural), None)
        for w in self.watchers.pop(kind.key, set()):
            w.close()
        self.objects.pop(kind.key, None)
        self.history.pop(kind.key, None)
        self.history_floor.pop(kind.key, None)

    def _drop_kind_name(self, kind: Kind) -> None:
        named = self._kinds_by_name.get((kind.group, kind.kind))
        if named is not None:
            named[:] = [k for k in named if k.key != kind.key]
            if not named:
                del self._kinds_by_name[(kind.group, kind.kind)]

    def lookup(self, group: str, version: str, plural: str) -> Kind:
        kind = self.served.get((group, version, plural))
        if kind is None:
            raise errors.NotFound("the server could not find the requested resource", details={})
        return kind

    def kind_for(self, group: str, plural: str) -> Kind:
        return self.kinds[(group, plural)]

    def kind_named(self, api_version: str, kind_name: str) -> Kind | None:
        """The served kind an ``apiVersion`` and a kind name denote (as an owner reference names its
        owner's), or None."""
        group, _, version = api_version.rpartition("/")
        return next(
            (k for k in self._kinds_by_name.get((group, kind_name), ()) if version in k.versions),
            None,
        )

    def obj_at(self, okey: ObjKey) -> tuple[Kind, Obj] | None:
        kind = self.kinds.get((okey[0], okey[1]))
        if kind is None:
            return None
        obj = self.objects[kind.key].get((okey[2], okey[3]))
        return (kind, obj) if obj is not None else None

    # ----------------------------------------------------------------- writes
    def schema_applied(self, kind: Kind, version: str, obj: Obj) -> bool:
        """Whether stored ``obj`` went through ``version``'s current schema when it was written: it is stored
        in that version, and was written after the schemas were last changed."""
        return version == kind.storage_version and int(obj["metadata"]["resourceVersion"]) > (
            self.schemas_since.get(kind.key, 0)
        )

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _put(self, kind: Kind, obj: Obj) -> Obj | None:
        """Store ``obj``; returns the object it replaces."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        old = self.objects[kind.key].get(key)
        self.objects[kind.key][key] = obj
        return old

    def _remove(self, kind: Kind, obj: Obj) -> None:
        meta = obj["metadata"]
        self.objects[kind.key].pop((meta.get("namespace", ""), meta["name"]), None)

    def _emit(self, kind: Kind, event_type: str, obj: Obj, prev: Obj | None, rv: int) -> None:
        ev = Event(event_type, obj, prev, rv)
        hist = self.history[kind.key]
        hist.append(ev)
        while len(hist) > self.history_limit:
            self.history_floor[kind.key] = hist.popleft().rv
        for w in list(self.watchers[kind.key]):
            w.offer(ev)
            if w.closed:
                self.watchers[kind.key].discard(w)

    def compact(self) -> int:
        """Forget the history up to now: resuming from an older resourceVersion gets 410 Expired."""
        self.compacted_rv = self.rv
        for key in self.history:
            self.history[key].clear()
            self.history_floor[key] = self.rv
        self.snapshots.clear()
        return self.rv
