"""Shared informers: a reflector (list, then watch) feeding a cache and cheap event handlers.

client-go's semantics (``tools/cache``): paginated initial list, watch from its resourceVersion with
bookmarks and a randomised server timeout, re-watch at once when a watch ends normally, relist on 410
(reconciling the cache: missed adds, updates and deletes are delivered, deletes with the last known
object), capped exponential backoff with jitter on errors, optional periodic resync from the cache.
Beyond client-go: an object a relist finds changed is also delivered as a resync (old and new the same),
so that an event filter that compares the two ends of what it missed cannot drop it for good.

A list is taken one page at a time, each item transformed and encoded (see ``store``) before the next
page is asked for, so that a list of N objects never holds N decoded objects at once: freed, those
would stay in the process as memory the allocator cannot give back (docs/cache-memory.md).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import orjson

from service.kube import errors
from service.kube.client import Page
from service.kube.resources import Resource
from service.runtime.clock import REAL_CLOCK, Clock
from service.runtime.store import IndexFunc, Obj, Store, encode, object_key, strip_managed_fields

log = logging.getLogger("service.runtime.informer")

PAGE_SIZE = 500
WATCH_TIMEOUT_RANGE = (300, 600)  # seconds, as client-go's reflector picks
VERY_SHORT_WATCH = 1.0


class ListWatchClient(Protocol):
    """What an informer needs of the Kubernetes client (``KubeClient`` has it)."""

    def pages(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = PAGE_SIZE,
        resource_version: str | None = None,
    ) -> AsyncIterator[Page]: ...

    def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        allow_bookmarks: bool = True,
        timeout_seconds: int | None = None,
    ) -> Any: ...


class Handler(Protocol):
    """Cheap, synchronous callbacks: map the object to keys and enqueue them. Must not block."""

    def on_add(self, obj: Obj, initial: bool) -> None: ...

    def on_update(self, old: Obj, new: Obj) -> None: ...

    def on_delete(self, obj: Obj, state_unknown: bool) -> None: ...


@dataclass
class FuncHandler:
    add: Callable[[Obj, bool], None] | None = None
    update: Callable[[Obj, Obj], None] | None = None
    delete: Callable[[Obj, bool], None] | None = None

    def on_add(self, obj: Obj, initial: bool) -> None:
        if self.add:
            self.add(obj, initial)

    def on_update(self, old: Obj, new: Obj) -> None:
        if self.update:
            self.update(old, new)

    def on_delete(self, obj: Obj, state_unknown: bool) -> None:
        if self.delete:
            self.delete(obj, state_unknown)


class Backoff:
    """apimachinery's reflector backoff: 0.8 s doubling, full jitter, capped at 30 s, reset after 2 min calm."""

    def __init__(
        self,
        clock: Clock,
        initial: float = 0.8,
        factor: float = 2.0,
        cap: float = 30.0,
        reset_after: float = 120.0,
        jitter: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.clock, self.initial, self.factor, self.cap = clock, initial, factor, cap
        self.reset_after, self.jitter = reset_after, jitter
        self._rng = rng or random.Random()
        self._delay = initial
        self._last = clock.now()

    def next(self) -> float:
        now = self.clock.now()
        if now - self._last > self.reset_after:
            self._delay = self.initial
        self._last = now
        delay = self._delay
        self._delay = min(self._delay * self.factor, self.cap)
        return delay + self._rng.random() * self.jitter * delay


class Informer:
    def __init__(
        self,
        client: ListWatchClient,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Callable[[Obj], Obj] | None = strip_managed_fields,
        resync_period: float = 0.0,
        indexers: Mapping[str, IndexFunc] | None = None,
        clock: Clock = REAL_CLOCK,
        watch_timeout: tuple[int, int] = WATCH_TIMEOUT_RANGE,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace if resource.namespaced else None
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.transform = transform
        self.resync_period = resync_period
        self.store = Store(indexers)
        self.clock = clock
        self.watch_timeout = watch_timeout
        self.handlers: list[Handler] = []
        self.last_sync_rv = ""
        self._synced = anyio.Event()
        self._rv_unavailable = False  # the last list said Expired: the next one is a consistent read
        self.relists = 0
        self.watches = 0

    @property
    def name(self) -> str:
        scope = self.namespace or "*"
        sel = "".join(f"[{x}]" for x in (self.label_selector, self.field_selector) if x)
        return f"{self.resource.qualified}@{scope}{sel}"

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def add_handler(self, handler: Handler) -> None:
        """Register a handler; one added after the first sync first gets an add for every cached object."""
        self.handlers.append(handler)
        if self.has_synced:
            for obj in self.store.values():
                self._call(handler.on_add, obj, True)

    def add_indexer(self, name: str, func: IndexFunc) -> None:
        if not self.store.has_index(name):
            self.store.add_indexer(name, func)

    # --------------------------------------------------------------- delivery
    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a failing handler must never stall the watch or the other handlers
            log.exception("informer %s: event handler failed", self.name)

    def _apply(self, event_type: str, obj: Obj, initial: bool = False) -> None:
        if self.transform is not None:
            obj = self.transform(obj)
        if event_type == "DELETED":
            self.store.remove(object_key(obj))
            for h in self.handlers:
                self._call(h.on_delete, obj, False)  # the server's last state of the object
            return
        old = self.store.put(obj)
        for h in self.handlers:
            if old is None:
                self._call(h.on_add, obj, initial)
            else:
                self._call(h.on_update, old, obj)

    def _encode(self, items: list[Obj], into: dict[str, bytes]) -> None:
        """Transform and encode a page's items, dropping each decoded item as soon as it is encoded."""
        items.reverse()
        while items:  # popped: the page's list holds no object past its turn
            obj = items.pop()
            if self.transform is not None:
                obj = self.transform(obj)
            into[object_key(obj)] = encode(obj)

    def _replace(self, fresh: dict[str, bytes], initial: bool) -> None:
        """Make the cache equal a fresh list, telling handlers what changed (deletes first)."""
        for key in [k for k in self.store.list_keys() if k not in fresh]:
            gone = self.store.remove(key)
            if gone is not None:
                for h in self.handlers:
                    self._call(h.on_delete, gone, True)
        for key in list(fresh):
            raw = fresh.pop(key)
            if raw == self.store.encoded(key):
                continue  # unchanged: same resourceVersion, nothing to tell
            obj: Obj = orjson.loads(raw)
            old = self.store.put(obj, raw)
            if old is None:
                for h in self.handlers:
                    self._call(h.on_add, obj, initial)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                for h in self.handlers:
                    self._call(h.on_update, old, obj)
                    # Events were missed between the two: a filter comparing old and new sees only their
                    # ends, which may look alike (a finalizer added, then removed by another). The object
                    # is also delivered as a resync, which such filters pass.
                    self._call(h.on_update, obj, obj)

    def resync(self) -> None:
        """Re-deliver every cached object as an update (old and new the same object)."""
        for obj in self.store.values():
            for h in self.handlers:
                self._call(h.on_update, obj, obj)

    # --------------------------------------------------------------- reflector
    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            if self.resync_period > 0:
                tg.start_soon(self._resync_loop)
            await self._reflect()

    async def _resync_loop(self) -> None:
        await self._synced.wait()
        while True:
            await self.clock.sleep_until(self.clock.now() + self.resync_period)
            self.resync()

    async def _relist(self) -> None:
        """List at client-go's resourceVersion: "0" the first time, then not older than the last synced
        one (from the last list *or watch event*), and "" (consistent) after that said Expired."""
        if not self._rv_unavailable:
            try:
                await self._list(self.last_sync_rv or "0")
                return
            except errors.Expired:
                self._rv_unavailable = True
        await self._list("")
        self._rv_unavailable = False

    async def _list(self, resource_version: str) -> None:
        # As client-go's reflector: a list at a resourceVersion other than "" or "0" is not paginated.
        # With a limit, kube-apiserver reads that exact version from etcd — old data, whose next watch is
        # 410 again, in a loop until etcd compacts; without one, the watch cache answers "not older than".
        paged = resource_version in ("", "0")
        fresh: dict[str, bytes] = {}
        rv = await self._list_into(fresh, resource_version, PAGE_SIZE if paged else 0)
        self._replace(fresh, initial=not self.has_synced)
        self.last_sync_rv = rv
        self.relists += 1
        self._synced.set()

    async def _list_into(self, fresh: dict[str, bytes], resource_version: str, page_size: int) -> str:
        """Every item, encoded into ``fresh``; returns the list's resourceVersion."""
        rv = ""
        async for page in self.client.pages(
            self.resource,
            self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            page_size=page_size,
            resource_version=resource_version,
        ):
            if page.restarted:
                fresh.clear()
            self._encode(page.items, fresh)
            rv = page.resource_version or rv
        return rv

    async def _reflect(self) -> None:
        backoff = Backoff(self.clock)
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch_once()
                continue  # a watch that ended normally is re-opened at once
            except errors.Expired as exc:
                log.info("informer %s: %s; relisting", self.name, exc.message)
                need_list = True
            except (errors.TooManyRequests, errors.ConnectionFailed, errors.RequestTimeout) as exc:
                # Re-watch from the same resourceVersion after the backoff; nothing was missed.
                log.info("informer %s: watch interrupted (%s); retrying", self.name, exc)
            except errors.ApiError as exc:
                log.warning("informer %s: %s; relisting", self.name, exc)
                need_list = True
            except _VeryShortWatch:
                log.info("informer %s: watch closed at once with no events; relisting", self.name)
                need_list = True
            await self.clock.sleep_until(self.clock.now() + backoff.next())

    async def _watch_once(self) -> None:
        started = self.clock.now()
        events = 0
        timeout = random.randrange(*self.watch_timeout)
        self.watches += 1
        async with self.client.watch(
            self.resource,
            self.namespace,
            resource_version=self.last_sync_rv,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            allow_bookmarks=True,
            timeout_seconds=timeout,
        ) as stream:
            async for event_type, obj in stream:
                events += 1
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if event_type != "BOOKMARK":
                    self._apply(event_type, obj)
                if rv:
                    self.last_sync_rv = rv
        if events == 0 and self.clock.now() - started < VERY_SHORT_WATCH:
            raise _VeryShortWatch


class _VeryShortWatch(Exception):
    pass


class Lister:
    """Reads across the informers of one resource (one per watched namespace, or one for all), so callers
    need not know how the watch was scoped. Lookups never hit the API."""

    def __init__(self, informers: Sequence[Informer]) -> None:
        self.informers = list(informers)

    @property
    def resource(self) -> Resource:
        return self.informers[0].resource

    def get(self, namespace: str | None, name: str) -> Obj | None:
        for informer in self.informers:
            obj = informer.store.get_by(namespace, name)
            if obj is not None:
                return obj
        return None

    def by_index(self, index: str, value: str) -> list[Obj]:
        return [obj for informer in self.informers for obj in informer.store.by_index(index, value)]

    def names_by_index(self, index: str, value: str) -> list[tuple[str, str]]:
        """``(namespace, name)`` of the objects ``by_index`` would return, without decoding them: what an
        event mapper needs, on every watch event."""
        out: list[tuple[str, str]] = []
        for informer in self.informers:
            for key in informer.store.index_keys(index, value):
                namespace, _, name = key.rpartition("/")
                out.append((namespace, name))
        return out

    def list(self) -> list[Obj]:
        """Every cached object, decoded at once: for small caches (``iterate`` scans a large one)."""
        return [obj for informer in self.informers for obj in informer.store.values()]

    def iterate(self) -> Iterator[Obj]:
        """Every cached object, decoded one at a time as iterated: a scan of a large cache then holds one
        decoded object at a time, where ``list`` holds them all at once (and decodes several times slower,
        the garbage collector scanning the growing heap)."""
        for informer in self.informers:
            yield from informer.store.values()

    def add_indexer(self, name: str, func: IndexFunc) -> None:
        for informer in self.informers:
            informer.add_indexer(name, func)

    @property
    def synced(self) -> bool:
        return all(i.has_synced for i in self.informers)


class InformerFactory:
    """One informer per (resource, namespace, label selector), shared by every controller that asks.

    The cache's scope is set here once: the namespaces to watch, and a default label selector per
    resource (``label_selectors``, keyed by ``plural.group``) that applies wherever no selector is asked
    for — so that, say, a shard's selector reaches every controller and lister without their knowing."""

    def __init__(
        self,
        client: ListWatchClient,
        *,
        clock: Clock = REAL_CLOCK,
        resync_period: float = 0.0,
        namespaces: tuple[str, ...] = (),
        label_selectors: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.resync_period = resync_period
        self.namespaces = namespaces  # empty: every namespace
        self.label_selectors = dict(label_selectors or {})
        self.informers: dict[tuple[str, str, str | None, str | None, str | None], Informer] = {}
        self._started = False

    def informers_for(
        self, resource: Resource, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[Informer]:
        """The informers covering ``resource`` in the watched namespaces (one per namespace, or one in all).
        A field selector narrows a cache to the few objects wanted (``metadata.name=x`` in every
        namespace), where a whole resource would cost too much to hold or to be allowed to read."""
        scopes: tuple[str | None, ...] = (
            self.namespaces if (resource.namespaced and self.namespaces) else (None,)
        )
        return [self.get(resource, ns, label_selector, field_selector) for ns in scopes]

    def lister(
        self, resource: Resource, label_selector: str | None = None, field_selector: str | None = None
    ) -> Lister:
        return Lister(self.informers_for(resource, label_selector, field_selector))

    def get(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Informer:
        if label_selector is None:
            label_selector = self.label_selectors.get(resource.qualified)
        key = (
            resource.group,
            resource.plural,
            namespace if resource.namespaced else None,
            label_selector,
            field_selector,
        )
        informer = self.informers.get(key)
        if informer is None:
            if self._started:
                raise RuntimeError(f"informer for {resource.qualified} requested after the factory started")
            informer = Informer(
                self.client,
                resource,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                clock=self.clock,
                resync_period=self.resync_period,
            )
            self.informers[key] = informer
        return informer

    @property
    def has_synced(self) -> bool:
        return all(i.has_synced for i in self.informers.values())

    def unsynced(self) -> list[str]:
        return [i.name for i in self.informers.values() if not i.has_synced]

    async def run(self) -> None:
        self._started = True
        async with anyio.create_task_group() as tg:
            for informer in self.informers.values():
                tg.start_soon(informer.run, name=f"informer {informer.name}")
