"""Kubernetes Events, recorded as client-go's legacy recorder does (core/v1 ``Event``).

``record`` never blocks and never fails: it puts the event in a bounded buffer that ``run`` writes out,
and drops (counting, logging once) when the API server cannot keep up — events are advisory, and a
reconcile must never wait on them. Repeats of the same event (same object, type, reason and message)
are aggregated as client-go's EventCorrelator does: the first is created, later ones raise its
``count`` and ``lastTimestamp``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import anyio

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.resources import EVENT
from service.kube.timestamps import rfc3339

log = logging.getLogger("service.runtime.events")

Obj = dict[str, Any]

NORMAL = "Normal"
WARNING = "Warning"
BUFFER = 1000  # client-go's broadcaster queue length
CACHE_SIZE = 4096  # client-go's correlator LRU size
MAX_MESSAGE = 1024  # kube-apiserver refuses longer event notes


def involved_object(obj: Obj) -> Obj:
    meta = obj.get("metadata") or {}
    ref = {
        "apiVersion": obj.get("apiVersion", ""),
        "kind": obj.get("kind", ""),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "resourceVersion": meta.get("resourceVersion", ""),
    }
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    return ref


@dataclass(frozen=True)
class _Pending:
    involved: Obj
    type: str
    reason: str
    message: str
    at: float

    @property
    def key(self) -> tuple[str, ...]:
        i = self.involved
        return (i["kind"], i.get("namespace", ""), i["name"], i["uid"], self.type, self.reason, self.message)


@dataclass
class _Seen:
    name: str
    namespace: str
    count: int
    first: float


class EventRecorder:
    def __init__(
        self, client: KubeClient, component: str, instance: str = "", *, buffer: int = BUFFER
    ) -> None:
        self.client = client
        self.component = component
        self.instance = instance
        # A plain deque, not an anyio memory stream: a recorder that is never run or closed (a manager
        # built and dropped) must not leave an unclosed stream behind to warn at garbage collection.
        self._buffer: deque[_Pending] = deque()
        self._capacity = buffer
        self._wakeup: anyio.Event | None = None
        self._finished: anyio.Event | None = None  # set when ``run`` returns (made there: it needs a loop)
        self._closed = False
        self._seen: OrderedDict[tuple[str, ...], _Seen] = OrderedDict()
        self.dropped = 0
        self.written = 0

    def record(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        """Queue an event about ``obj`` (``Normal`` or ``Warning``); returns at once."""
        if type_ not in (NORMAL, WARNING):  # client-go drops these too; the API server would refuse them
            log.error("dropping event of unsupported type", extra={"type": type_, "reason": reason})
            return
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        if self._closed or len(self._buffer) >= self._capacity:
            if self.dropped == 0:
                log.warning("event buffer full or closed: dropping events", extra={"reason": reason})
            self.dropped += 1
            return
        self._buffer.append(_Pending(involved_object(obj), type_, reason, message, time.time()))
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        """Write queued events until cancelled, or until ``close`` and the buffer is empty."""
        self._finished = anyio.Event()
        try:
            while True:
                while self._buffer:
                    pending = self._buffer.popleft()
                    try:
                        await self._write(pending)
                        self.written += 1
                    except errors.ApiError as exc:
                        log.info("could not write event: %s", exc, extra={"reason": pending.reason})
                    except Exception:  # events are advisory: a bug must not stop the writer (and the manager)
                        log.exception("could not write event", extra={"reason": pending.reason})
                if self._closed:
                    return
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
        finally:
            self._closed = True  # no writer any more: later events are dropped, not queued for no one
            self._finished.set()

    def close(self) -> None:
        """Take no more events; ``run`` returns once it has written those already queued."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def drain(self) -> None:
        """``close``, and wait for ``run`` to write what is queued (on graceful shutdown, under a deadline
        of the caller's: the last reconciles' events are the ones that say how things ended)."""
        self.close()
        if self._finished is not None:
            await self._finished.wait()

    async def _write(self, p: _Pending) -> None:
        seen = self._seen.get(p.key)
        if seen is not None:
            self._seen.move_to_end(p.key)
            seen.count += 1
            patch = {"count": seen.count, "lastTimestamp": rfc3339(p.at)}
            try:
                await self.client.merge_patch(EVENT, seen.name, patch, seen.namespace)
                return
            except errors.NotFound:
                pass  # the event expired on the server (its TTL is an hour): start a new one
        namespace = p.involved.get("namespace") or "default"
        name = f"{p.involved['name']}.{time.time_ns():x}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": p.involved,
            "reason": p.reason,
            "message": p.message,
            "type": p.type,
            "source": {"component": self.component, **({"host": self.instance} if self.instance else {})},
            "firstTimestamp": rfc3339(p.at),
            "lastTimestamp": rfc3339(p.at),
            "count": 1,
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }
        await self.client.create(EVENT, event, namespace)
        self._seen[p.key] = _Seen(name, namespace, 1, p.at)
        if len(self._seen) > CACHE_SIZE:
            self._seen.popitem(last=False)
