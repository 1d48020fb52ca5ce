"""Kubernetes Events, recorded as client-go's legacy recorder does (core/v1 ``Event``).

``record`` never blocks and never fails: it runs client-go's ``EventCorrelator`` at once and queues what
is left to write; ``run`` writes the queue out with a few concurrent writers paced by a token bucket of
their own (events must not crowd out the controllers' requests, nor wait one at a time behind the API
server's latency). Events are advisory, and a reconcile must never wait on them.

The correlator, with client-go's numbers (``tools/record/events_cache.go``):

- aggregation: events about one object with the same type and reason but ``AGGREGATE_MAX`` (10)
  different messages within ``AGGREGATE_INTERVAL`` (10 minutes) of one another become one Event whose
  message is ``(combined from similar events): <latest message>``;
- repeats: an event seen before (same object, type, reason and message, or the same aggregate) is
  written as a PATCH of the existing Event's ``count``, ``lastTimestamp`` and ``message``; the first is a
  POST (of an Event named ``<object>.<hex nanoseconds>``, as client-go names them);
- spam filter: per source and object and type a token bucket of ``SPAM_BURST`` (25), refilled at one
  per ``SPAM_REFILL`` (5 minutes); an event over it is dropped (counted), though its Event's count still
  takes it in, as client-go's does.

Unlike client-go's broadcaster the queue holds Events to write, not occurrences: a repeat of an Event
already queued or being written only raises the count that write (or the next) sends, so a chatty object
takes one slot, not one per occurrence. ``drain`` (graceful shutdown) writes everything queued; what is
still queued when the writers stop, or arrives after ``close``, is dropped — counted in ``dropped`` and,
given ``metrics``, in ``event_recorder_dropped_events_total`` by reason, and logged.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.ratelimit import TokenBucket
from service.kube.resources import EVENT
from service.kube.timestamps import rfc3339
from service.runtime.metrics import EventMetrics

log = logging.getLogger("service.runtime.events")

Obj = dict[str, Any]
Key = tuple[str, ...]
K = TypeVar("K")
V = TypeVar("V")

NORMAL = "Normal"
WARNING = "Warning"
# What an operator may choose to record (``events``): each choice's types. "warnings" keeps what a person
# must act on and drops the routine progress Events, which on a real API server are a large share of a
# controller's writes (docs/performance.md).
RECORDED_TYPES: dict[str, tuple[str, ...]] = {"all": (NORMAL, WARNING), "warnings": (WARNING,), "none": ()}
# Distinct Events waiting to be written. client-go queues 1,000 occurrences; a start-up burst (an event
# per object of a large initial list) is distinct Events, and each costs a few hundred bytes here.
BUFFER = 10_000
# Concurrent writes: the API server's round trip, not its throughput, bounded the serial writer (about
# 85 Events/s at 10 ms a write; 8 writers: about 580/s — benchmarks/events.py).
WRITERS = 8
# The writers' own token bucket, apart from the client's: a storm of Events is paced so that it cannot
# flood the API server, while an ordinary burst (a start-up's, a thousand objects) goes out at once.
QPS = 1000.0
BURST = 1000
CACHE_SIZE = 4096  # client-go's correlator LRU size (each of its three caches)
MAX_MESSAGE = 1024  # kube-apiserver refuses longer event notes
AGGREGATE_MAX = 10
AGGREGATE_INTERVAL = 600.0
AGGREGATE_PREFIX = "(combined from similar events): "
SPAM_BURST = 25
SPAM_REFILL = 300.0

# Reasons of ``event_recorder_dropped_events_total`` (``EventMetrics.REASONS``).
QUEUE_FULL = "queue_full"
SPAM = "spam_filter"
WRITE_ERROR = "write_error"
SHUTDOWN = "shutdown"


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


def _object_key(involved: Obj, type_: str) -> Key:
    # client-go's spam key (the source is this recorder's, the same for all).
    i = involved
    return (i["kind"], i.get("namespace", ""), i["name"], i["uid"], i["apiVersion"], type_)


@dataclass
class _Series:
    """One Event on the server (client-go's ``eventLog``) and what its next write sends."""

    name: str
    namespace: str
    involved: Obj
    type: str
    reason: str
    message: str
    first: float
    last: float
    count: int = 0  # occurrences taken in: the Event's count (dropped ones too, as client-go's)
    unsent: int = 0  # occurrences accepted since the last write began: what it settles
    on_server: bool = False  # created (a later write is a PATCH)
    queued: bool = False
    writing: bool = False
    again: bool = False  # taken in during a write: write again after it


@dataclass
class _Similar:
    """client-go's ``aggregateRecord``: the messages seen recently for one object, type and reason."""

    messages: set[str] = field(default_factory=set)
    last: float = 0.0


def _remember(cache: OrderedDict[K, V], key: K, value: V) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


class EventRecorder:
    def __init__(
        self,
        client: KubeClient,
        component: str,
        instance: str = "",
        *,
        buffer: int = BUFFER,
        writers: int = WRITERS,
        qps: float = QPS,
        burst: int = BURST,
        metrics: EventMetrics | None = None,
        clock: Callable[[], float] = time.time,
        types: tuple[str, ...] = (NORMAL, WARNING),
    ) -> None:
        self.client = client
        self.types = frozenset(types)  # the types recorded; others are left out by configuration
        self.component = component
        self.instance = instance
        # A plain deque, not an anyio memory stream: a recorder that is never run or closed (a manager
        # built and dropped) must not leave an unclosed stream behind to warn at garbage collection.
        self._queue: deque[_Series] = deque()
        self._capacity = buffer
        self._writers = max(1, writers)
        self.limiter = TokenBucket(qps, burst)
        self._metrics = metrics
        self._clock = clock
        self._wakeup = anyio.Event()
        self._finished: anyio.Event | None = None  # set when ``run`` returns (made there: it needs a loop)
        self._closed = False
        self._similar: OrderedDict[Key, _Similar] = OrderedDict()
        self._series: OrderedDict[Key, _Series] = OrderedDict()
        self._spam: OrderedDict[Key, TokenBucket] = OrderedDict()
        self._last_ns = 0
        # Every occurrence recorded (of a valid type) ends up in exactly one of these two, or is still to
        # be written. A dropped one may yet show in its Event's count (as client-go's), if a later write of
        # that Event succeeds.
        self.written = 0
        self.dropped = 0
        self._warned = False

    # ------------------------------------------------------------------ recording
    def record(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        """Queue an event about ``obj`` (``Normal`` or ``Warning``); returns at once."""
        if type_ not in (NORMAL, WARNING):  # client-go drops these too; the API server would refuse them
            log.error("dropping event of unsupported type", extra={"type": type_, "reason": reason})
            return
        if type_ not in self.types:
            return  # not wanted (``events``): not a drop, nothing is counted
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        now = self._clock()
        involved = involved_object(obj)
        series = self._correlate(involved, type_, reason, message, now)
        series.count += 1
        if self._closed:
            self._drop(1, SHUTDOWN, reason)
            return
        if not self._spam_allows(involved, type_):
            self._drop(1, SPAM, reason)
            return
        if not (series.queued or series.writing) and len(self._queue) >= self._capacity:
            self._drop(1, QUEUE_FULL, reason)
            return
        series.last = now
        series.unsent += 1
        if series.queued:
            return  # the queued write sends the new count
        if series.writing:
            series.again = True
            return
        series.queued = True
        self._queue.append(series)
        self._wakeup.set()

    def _correlate(self, involved: Obj, type_: str, reason: str, message: str, now: float) -> _Series:
        """client-go's ``EventAggregate`` then ``eventObserve``: the Event this occurrence belongs to."""
        similar_key = (*_object_key(involved, type_), reason)
        similar = self._similar.get(similar_key)
        if similar is None or now - similar.last > AGGREGATE_INTERVAL:
            similar = _Similar()
        similar.messages.add(message)
        similar.last = now
        _remember(self._similar, similar_key, similar)
        if len(similar.messages) >= AGGREGATE_MAX:
            similar.messages.pop()  # client-go's PopAny: the set stays at the threshold
            key: Key = ("aggregate", *similar_key)
            message = AGGREGATE_PREFIX + message
        else:
            key = (*similar_key, message)
        series = self._series.get(key)
        if series is None:
            series = _Series(
                name=f"{involved['name']}.{self._unique_ns(now):x}",
                namespace=involved.get("namespace") or "default",
                involved=involved,
                type=type_,
                reason=reason,
                message=message,
                first=now,
                last=now,
            )
        series.message = message  # an aggregate Event shows the latest of its messages
        _remember(self._series, key, series)
        return series

    def _unique_ns(self, now: float) -> int:
        # Two Events about one object in the same nanosecond (a fast loop, a coarse clock) must not share
        # a name: the second POST would fail with AlreadyExists.
        self._last_ns = max(int(now * 1e9), self._last_ns + 1)
        return self._last_ns

    def _spam_allows(self, involved: Obj, type_: str) -> bool:
        key = _object_key(involved, type_)
        bucket = self._spam.get(key)
        if bucket is None:
            bucket = TokenBucket(1.0 / SPAM_REFILL, SPAM_BURST, clock=self._clock)
        _remember(self._spam, key, bucket)
        return bucket.try_acquire()

    def _drop(self, lost: int, why: str, reason: str) -> None:
        self.dropped += lost
        if self._metrics is not None:
            self._metrics.dropped.labels(why).inc(lost)
        if why in (QUEUE_FULL, SHUTDOWN) and not self._warned:
            self._warned = True  # once: a storm must not become a storm of log lines too
            log.warning("event buffer full or closed: dropping events", extra={"reason": reason, "why": why})

    # ------------------------------------------------------------------ writing
    async def run(self) -> None:
        """Write queued events until cancelled, or until ``close`` and the queue is empty."""
        self._finished = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self._writers):
                    tg.start_soon(self._writer)
        finally:
            self._closed = True  # no writer any more: later events are dropped, not queued for no one
            while self._queue:
                series = self._queue.popleft()
                series.queued = False
                self._drop(series.unsent, SHUTDOWN, series.reason)
                series.unsent = 0
            self._finished.set()

    async def _writer(self) -> None:
        while True:
            while self._queue:
                series = self._queue.popleft()
                series.queued = False
                series.writing = True
                try:
                    await self._write(series)
                finally:
                    series.writing = False
                if series.again:  # taken in during the write (before any close): not lost at shutdown
                    series.again = False
                    series.queued = True
                    self._queue.append(series)
            if self._closed:
                return
            if self._wakeup.is_set():
                self._wakeup = anyio.Event()
            await self._wakeup.wait()

    def close(self) -> None:
        """Take no more events; ``run`` returns once it has written those already queued."""
        self._closed = True
        self._wakeup.set()

    async def drain(self) -> None:
        """``close``, and wait for ``run`` to write what is queued (on graceful shutdown, under a deadline
        of the caller's: the last reconciles' events are the ones that say how things ended)."""
        self.close()
        if self._finished is not None:
            await self._finished.wait()

    async def _write(self, s: _Series) -> None:
        count, last, message, settles = s.count, s.last, s.message, s.unsent
        s.unsent = 0
        lost_as = SHUTDOWN  # unless it lands or fails: cancelled with the writers, it may not have landed
        try:
            await self.limiter.acquire()
            if s.on_server:
                try:
                    await self.client.merge_patch(
                        EVENT, s.name, self._patch(count, last, message), s.namespace, answer=False
                    )
                except errors.NotFound:
                    # Expired on the server (its TTL is an hour): client-go creates it again, same name.
                    await self.client.create(
                        EVENT, self._event(s, count, last, message), s.namespace, answer=False
                    )
            else:
                try:
                    await self.client.create(
                        EVENT, self._event(s, count, last, message), s.namespace, answer=False
                    )
                except errors.AlreadyExists:
                    # An earlier POST whose answer was lost did land: this write is a repeat of it.
                    await self.client.merge_patch(
                        EVENT, s.name, self._patch(count, last, message), s.namespace, answer=False
                    )
            s.on_server = True
            self.written += settles
            settles = 0
        except Exception as exc:  # events are advisory: neither the API nor a bug may stop the writers
            # Not retried (client-go retries only transport failures); the Event's next write, if any,
            # still counts them, as client-go's does.
            lost_as = WRITE_ERROR
            if isinstance(exc, errors.ApiError):
                log.info("could not write event: %s", exc, extra={"reason": s.reason})
            else:
                log.exception("could not write event", extra={"reason": s.reason})
        finally:
            if settles:
                self._drop(settles, lost_as, s.reason)

    @staticmethod
    def _patch(count: int, last: float, message: str) -> Obj:
        # client-go's two-way merge patch of an observed Event carries exactly these.
        return {"count": count, "lastTimestamp": rfc3339(last), "message": message}

    def _event(self, s: _Series, count: int, last: float, message: str) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "involvedObject": s.involved,
            "reason": s.reason,
            "message": message,
            "type": s.type,
            "source": {"component": self.component, **({"host": self.instance} if self.instance else {})},
            "firstTimestamp": rfc3339(s.first),
            "lastTimestamp": rfc3339(last),
            "count": count,
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }
