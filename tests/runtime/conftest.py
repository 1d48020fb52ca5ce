"""Helpers for the runtime tests: a live emulator, a KubeClient that never waits for long, recording event
handlers, and polling with deadlines for the few things nothing can be awaited on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from service.kube.client import KubeClient
from service.kube.resources import Resource
from service.runtime import informer as informer_mod
from service.runtime.informer import Backoff, Informer
from service.runtime.store import Obj, object_key
from tests.helpers import eventually, fast_client  # noqa: F401

C = TypeVar("C", bound=KubeClient)

DEADLINE = 10.0  # seconds any single awaited condition may take before a test fails


class SpyClient(KubeClient):
    """A real KubeClient that also records the parameters of every list page it asks for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[dict[str, Any]] = []

    async def list(self, res: Resource, namespace: str | None = None, **kwargs: Any) -> Obj:
        self.asked.append(kwargs)
        return await super().list(res, namespace, **kwargs)


@pytest.fixture
def bookmark_interval() -> float:
    return 0.05  # informer tests wait for bookmarks


def cm(name: str, namespace: str = "default", **extra: Any) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, **extra.pop("metadata", {})}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": extra.pop("data", {"k": "v"})}


async def settle() -> None:
    """Let every other task run until all of them are blocked.

    anyio's ``wait_all_tasks_blocked`` naps 0.1 s whenever a task is still runnable, far too slow for
    hypothesis; this only yields. Only for tests without network I/O (a socket wait counts as blocked).
    """
    await anyio.lowlevel.checkpoint()
    me = asyncio.current_task()
    for _ in range(10_000):
        if all(_blocked(t) for t in asyncio.all_tasks() if t is not me):
            return
        await asyncio.sleep(0)
    raise AssertionError("tasks never settled")


def _blocked(task: asyncio.Task[Any]) -> bool:
    waiter = getattr(task, "_fut_waiter", None)  # what anyio's wait_all_tasks_blocked inspects too
    return waiter is not None and not waiter.done()


@dataclass
class Recorder:
    """An informer handler that records every notification and lets a test await the one it expects."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def _record(self, *event: Any) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    def on_add(self, obj: Obj, initial: bool) -> None:
        self._record("add", object_key(obj), obj, initial)

    def on_update(self, old: Obj, new: Obj) -> None:
        self._record("update", object_key(new), old, new)

    def on_delete(self, obj: Obj, state_unknown: bool) -> None:
        self._record("delete", object_key(obj), obj, state_unknown)

    def of(self, kind: str, key: str | None = None) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind and (key is None or e[1] == key)]

    def keys(self, kind: str) -> list[str]:
        return [e[1] for e in self.events if e[0] == kind]

    async def wait_for(
        self, predicate: Callable[[Recorder], bool], within: float = DEADLINE
    ) -> list[tuple[Any, ...]]:
        with anyio.fail_after(within):
            while not predicate(self):
                changed = self._changed
                await changed.wait()
        return self.events

    async def wait_event(self, kind: str, key: str, within: float = DEADLINE) -> tuple[Any, ...]:
        await self.wait_for(lambda r: bool(r.of(kind, key)), within)
        return self.of(kind, key)[-1]


class RecordingBackoff(Backoff):
    """The reflector's backoff with the same shape but tiny delays; every delay handed out is recorded."""

    delays: list[float] = []
    initial_delay = 0.01
    cap_delay = 0.08

    def __init__(self, clock: Any, **kwargs: Any) -> None:
        kwargs.setdefault("initial", self.initial_delay)
        kwargs.setdefault("cap", self.cap_delay)
        super().__init__(clock, **kwargs)

    def next(self) -> float:
        delay = super().next()
        self.delays.append(delay)
        return delay


@pytest.fixture
def backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[RecordingBackoff]]:
    """Informers created in the test back off for milliseconds; the delays are in ``backoff.delays``."""

    class Recording(RecordingBackoff):
        delays: list[float] = []

    monkeypatch.setattr(informer_mod, "Backoff", Recording)
    yield Recording


@pytest.fixture
def real_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[RecordingBackoff]]:
    """The real reflector delays (0.8 s doubling, for tests on a fake clock), recorded."""

    class Recording(RecordingBackoff):
        delays: list[float] = []
        initial_delay = 0.8
        cap_delay = 30.0

    monkeypatch.setattr(informer_mod, "Backoff", Recording)
    yield Recording


@asynccontextmanager
async def running(*informers: Informer, sync: bool = True) -> AsyncIterator[anyio.abc.TaskGroup]:
    """Run informers for the duration of the block (waiting for their first sync unless told not to)."""
    async with anyio.create_task_group() as tg:
        for informer in informers:
            tg.start_soon(informer.run)
        if sync:
            with anyio.fail_after(DEADLINE):
                for informer in informers:
                    await informer.wait_synced()
        yield tg
        tg.cancel_scope.cancel()
