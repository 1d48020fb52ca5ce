"""Single objects read through a short-lived cache: for objects a controller reads by name, often, and must
not watch cluster-wide (Secrets: an informer would hold every Secret of the cluster in memory).

The kubelet reads pod Secrets the same way in its TTL mode (``cacheBasedManager``): an entry is served for
``ttl`` seconds after it was read, then read again. Two more things matter to a controller with many
workers: concurrent misses for one object share one request (a burst of workloads in one namespace asks
for its pull Secret at once), and a caller that finds an entry wrong (a registry refused the credentials it
held) ``forget``s it, so its retry reads the object again instead of waiting out the TTL. Absences are not
cached: a missing object is looked for again on every read, and appears as soon as it is created.

Hand-written rather than ``cachetools.TTLCache``: what saves requests here is sharing a read in flight,
which an LRU of values does not do, and the rest is a dict in insertion order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from service.kube.client import KubeClient
from service.kube.resources import Resource
from service.runtime.clock import REAL_CLOCK, Clock
from service.runtime.store import Obj

MAX_ENTRIES = 4096  # objects kept at most; the oldest read goes first (a bound, not a tuning knob)


@dataclass
class _Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    value: Obj | None = None
    error: Exception | None = None  # an API error every waiter sees; a cancelled read leaves both None


class TTLReads:
    """``get`` an object of one resource by name, from the API at most once per ``ttl`` (0: every time, still
    one request for concurrent reads). Returned objects are shared: callers must not change them."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        ttl: float,
        *,
        clock: Clock = REAL_CLOCK,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.client = client
        self.resource = resource
        self.ttl = ttl
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[tuple[str | None, str], tuple[float, Obj]] = {}  # oldest read first
        self._flights: dict[tuple[str | None, str], _Flight] = {}

    async def get(self, name: str, namespace: str | None = None) -> Obj:
        """The object, from the cache while its entry is fresh; raises the client's errors
        (``errors.NotFound`` for a missing object) as ``client.get`` does."""
        key = (namespace, name)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self.clock.now():
            return entry[1]
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._read(key)
            await flight.done.wait()
            if flight.value is not None:
                return flight.value
            if flight.error is not None:
                raise flight.error
            # The reader was cancelled: read again (this task may become the reader).

    def forget(self, name: str, namespace: str | None = None) -> None:
        """Drop the entry: the next ``get`` reads the API (a read in flight is not affected)."""
        self._entries.pop((namespace, name), None)

    def __len__(self) -> int:
        return len(self._entries)

    async def _read(self, key: tuple[str | None, str]) -> Obj:
        flight = self._flights[key] = _Flight()
        namespace, name = key
        try:
            obj = await self.client.get(self.resource, name, namespace)
        except Exception as exc:
            flight.error = exc
            self._entries.pop(key, None)
            raise
        else:
            flight.value = obj
            if self.ttl > 0:
                self._store(key, obj)
            return obj
        finally:
            del self._flights[key]
            flight.done.set()

    def _store(self, key: tuple[str | None, str], obj: Obj) -> None:
        self._entries.pop(key, None)  # re-inserted last: the dict's order is the order of reads
        self._entries[key] = (self.clock.now() + self.ttl, obj)
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
