"""Watch events and watchers.

An event's object is serialised once, however many watchers receive it; each watch line is that
serialisation framed with the event type. A watcher only filters and buffers — writing to the socket
happens in the HTTP handler that owns it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio
import orjson

from service.kube.selectors import FieldSelector, LabelSelector

Obj = dict[str, Any]

_TYPES = {
    t: f'{{"type":"{t}","object":'.encode() for t in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
}


def frame(event_type: str, object_bytes: bytes) -> bytes:
    return b"".join((_TYPES[event_type], object_bytes, b"}\n"))


class Event:
    """One change to one object, as stored in the history."""

    __slots__ = ("_bytes", "obj", "prev", "rv", "type")

    def __init__(self, event_type: str, obj: Obj, prev: Obj | None, rv: int) -> None:
        self.type = event_type
        self.obj = obj  # the object after the change (for DELETED: its last state, at the deletion's rv)
        self.prev = prev  # the object before the change (None for ADDED)
        self.rv = rv
        self._bytes: dict[str, bytes] = {}

    def object_bytes(self, api_version: str | None = None) -> bytes:
        """The serialised object, as the given served version (None: as stored)."""
        key = api_version or ""
        cached = self._bytes.get(key)
        if cached is None:
            obj = self.obj if api_version is None else {**self.obj, "apiVersion": api_version}
            cached = self._bytes[key] = orjson.dumps(obj)
        return cached


class Watcher:
    """One open watch: its filter, and the lines waiting to be written to its client."""

    def __init__(
        self,
        *,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        api_version: str | None,
        max_buffer: int = 100_000,
    ) -> None:
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.api_version = api_version  # None when the watcher reads the storage version
        self.max_buffer = max_buffer
        self.lines: deque[bytes] = deque()
        self.closed = False
        self.last_rv = 0
        self._wake = anyio.Event()

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        if not self.labels.empty and not self.labels.matches(obj["metadata"].get("labels")):
            return False
        return not self.fields.terms or self.fields.matches(obj)

    def offer(self, ev: Event) -> None:
        """Queue what this watcher must see of ``ev`` (kube's cacheWatcher rules for selector changes)."""
        if self.closed:
            return
        now = ev.type != "DELETED" and self.matches(ev.obj)
        if ev.type == "DELETED":
            if self.matches(ev.obj):
                self._push(frame("DELETED", ev.object_bytes(self.api_version)), ev.rv)
            return
        before = self.matches(ev.prev)
        if now and before:
            self._push(frame("MODIFIED", ev.object_bytes(self.api_version)), ev.rv)
        elif now:
            self._push(frame("ADDED", ev.object_bytes(self.api_version)), ev.rv)
        elif before and ev.prev is not None:
            # The object left this watcher's selection: it sees a deletion of the old state at the new rv.
            gone = {**ev.prev, "metadata": {**ev.prev["metadata"], "resourceVersion": str(ev.rv)}}
            if self.api_version:
                gone["apiVersion"] = self.api_version
            self._push(frame("DELETED", orjson.dumps(gone)), ev.rv)

    def offer_added(self, obj: Obj, obj_bytes: bytes, rv: int) -> None:
        self._push(frame("ADDED", obj_bytes), rv)

    def bookmark(self, kind: str, api_version: str, rv: int) -> None:
        if self.closed:
            return
        body = {
            "kind": kind,
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(max(rv, self.last_rv)), "creationTimestamp": None},
        }
        self._push(frame("BOOKMARK", orjson.dumps(body)), self.last_rv)

    def error(self, status: Obj) -> None:
        self.lines.append(frame("ERROR", orjson.dumps(status)))
        self.close()

    def _push(self, line: bytes, rv: int) -> None:
        self.lines.append(line)
        self.last_rv = max(self.last_rv, rv)
        if len(self.lines) > self.max_buffer:
            # kube-apiserver terminates a watcher that cannot keep up; its client re-watches.
            self.lines.clear()
            self.close()
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def take(self) -> list[bytes]:
        """Everything queued so far, waiting for at least one line; empty once closed and drained."""
        while not self.lines and not self.closed:
            self._wake = anyio.Event()
            await self._wake.wait()
        out = list(self.lines)
        self.lines.clear()
        return out
