"""The read verbs: get, list and watch, as kube-apiserver serves them from its storage.

Reads share the storage's objects by reference and never copy or change them: an object served through
another version than the storage one is a shallow copy with that ``apiVersion``. Selection by label and
field is one function for lists, watches and delete-collection, so they agree on what matches.

A paginated list is a snapshot taken at its first page (the items and the resourceVersion), so later
pages show the same state whatever was written meanwhile; a compaction forgets snapshots as it forgets
history. Opening a watch queues its first events (the initial ADDEDs, or the history it resumes from) in
the same synchronous call that registers the watcher, so no write can fall between the two.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterable, Iterator

import orjson

from service.kube import errors
from service.kube.selectors import EVERYTHING, FieldSelector, LabelSelector
from simcluster.kinds import Kind, Obj
from simcluster.store import Snapshot, Store
from simcluster.validation import details
from simcluster.watch import Watcher


class Reads(Store):
    """Get, list (with consistent pagination) and watch over the store."""

    def _api_version_view(self, kind: Kind, version: str | None) -> str | None:
        if version is None or version == kind.storage_version:
            return None
        return kind.api_version(version)

    def view(self, kind: Kind, version: str | None, obj: Obj) -> Obj:
        api_version = self._api_version_view(kind, version)
        return obj if api_version is None else {**obj, "apiVersion": api_version}

    def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        obj = self.objects[kind.key].get((namespace or "" if kind.namespaced else "", name))
        if obj is None:
            raise errors.NotFound(f'{kind.qualified} "{name}" not found', details=details(kind, name))
        return obj

    def find(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        return self.objects[kind.key].get((namespace or "" if kind.namespaced else "", name))

    def _select(
        self, kind: Kind, namespace: str | None, labels: LabelSelector, fields: FieldSelector
    ) -> list[Obj]:
        bucket = self.objects[kind.key]
        name = fields.name
        if name is not None and namespace is not None:
            one = bucket.get((namespace if kind.namespaced else "", name))
            candidates: Iterable[tuple[tuple[str, str], Obj]] = [((namespace, name), one)] if one else []
        elif namespace is not None and kind.namespaced:
            # one namespace's objects, sorted (kube-apiserver lists in key order): not the whole kind's
            candidates = sorted(item for item in bucket.items() if item[0][0] == namespace)
        else:
            candidates = sorted(bucket.items())
        out = []
        for (ns, _), obj in candidates:
            if namespace is not None and kind.namespaced and ns != namespace:
                continue
            if not labels.empty and not labels.matches(obj["metadata"].get("labels")):
                continue
            if fields.terms and not fields.matches(obj):
                continue
            out.append(obj)
        return out

    # ----------------------------------------------------------------- lists
    def list_objects(
        self,
        kind: Kind,
        version: str | None,
        namespace: str | None,
        *,
        labels: LabelSelector = EVERYTHING,
        fields: FieldSelector = FieldSelector(),  # noqa: B008 - immutable
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Obj:
        if continue_token:
            snap_id, start = self._decode_continue(continue_token)
            snap = self.snapshots.get(snap_id)
            if snap is None or snap.rv < self.compacted_rv:
                raise errors.Expired(
                    "The provided continue parameter is too old to display a consistent list result. You can "
                    "start a new list without the continue parameter."
                )
            items, rv = snap.items[start:], snap.rv
        else:
            items, rv = self._select(kind, namespace, labels, fields), self.rv
            snap_id, start = "", 0
        meta: Obj = {"resourceVersion": str(rv)}
        if limit and limit > 0 and len(items) > limit:
            if not snap_id:
                self._expire_snapshots()
                snap_id = uuid.uuid4().hex
                self.snapshots[snap_id] = Snapshot(rv, items, time.monotonic())
            meta["continue"] = self._encode_continue(snap_id, start + limit, rv)
            if labels.empty and not fields.terms:
                meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        elif snap_id:
            self.snapshots.pop(snap_id, None)
        api_version = kind.api_version(version or kind.storage_version)
        return {
            "apiVersion": api_version,
            "kind": f"{kind.kind}List",
            "metadata": meta,
            "items": [self.view(kind, version, o) for o in items],
        }

    def _expire_snapshots(self) -> None:
        horizon = time.monotonic() - self.snapshot_ttl
        for sid in [s for s, snap in self.snapshots.items() if snap.created < horizon]:
            del self.snapshots[sid]

    @staticmethod
    def _encode_continue(snap_id: str, start: int, rv: int) -> str:
        raw = orjson.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start, "id": snap_id})
        return base64.urlsafe_b64encode(raw).decode()

    @staticmethod
    def _decode_continue(token: str) -> tuple[str, int]:
        try:
            data = orjson.loads(base64.urlsafe_b64decode(token.encode()))
            return str(data["id"]), int(data["start"])
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.BadRequest(f"continue key is not valid: {exc}") from None

    # ----------------------------------------------------------------- watches
    def watch(
        self,
        kind: Kind,
        version: str | None,
        namespace: str | None,
        *,
        resource_version: str | None = None,
        labels: LabelSelector = EVERYTHING,
        fields: FieldSelector = FieldSelector(),  # noqa: B008 - immutable
        send_initial: bool | None = None,
    ) -> Watcher:
        """Open a watch; its first lines (initial ADDEDs or the replayed history) are already queued."""
        w = Watcher(
            namespace=namespace if kind.namespaced else None,
            labels=labels,
            fields=fields,
            api_version=self._api_version_view(kind, version),
            max_buffer=self.watch_buffer,
        )
        if resource_version in (None, "", "0"):
            for obj in self._select(kind, w.namespace, labels, fields):
                w.offer_added(
                    obj, orjson.dumps(self.view(kind, version, obj)), int(obj["metadata"]["resourceVersion"])
                )
            w.last_rv = self.rv
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise errors.BadRequest(f'invalid resource version "{resource_version}"') from None
            oldest = max(self.history_floor[kind.key], self.compacted_rv)
            if since < oldest:
                w.error(errors.Expired(f"too old resource version: {since} ({oldest})").status())
                return w
            w.last_rv = since
            for ev in self.history[kind.key]:
                if ev.rv > since:
                    w.offer(ev)
        if not w.closed:
            self.watchers[kind.key].add(w)
        return w

    def stop_watch(self, kind: Kind, w: Watcher) -> None:
        w.close()
        self.watchers.get(kind.key, set()).discard(w)

    def open_watches(self) -> Iterator[tuple[Kind, Watcher]]:
        for key, ws in self.watchers.items():
            kind = self.kinds[key]
            for w in ws:
                yield kind, w

    def drop_watches(self) -> int:
        n = 0
        for ws in self.watchers.values():
            for w in list(ws):
                w.close()
                n += 1
            ws.clear()
        return n
