"""Benchmark: the controller runtime's throughput (work queue, informer, controller).

    python benchmarks/runtime.py [--keys N] [--consumers K] [--objects M] [--sync-objects S]
                                 [--workers W] [--reconciles R] [--concurrency C] [--repeat X]

Prints a header line (CPU count, Python version, the 1-minute load average: figures taken on a busy
machine are low), then each figure on one line:
- queue cycles/s (metrics): add+get+done cycles per second through a named WorkQueue reporting to
  Prometheus, for N distinct keys added while K consumer tasks wait; each consumer awaits one
  checkpoint per key, as a worker awaits its reconcile, so that all K take turns;
- queue cycles/s (no metrics): the same through an unnamed queue, which reports nothing: the difference
  between the two is what the metrics cost;
- queue floor cycles/s: the same K consumers awaiting only the two checkpoints of a cycle (``get`` yields
  once, then the consumer's reconcile), with no queue: the ceiling of the two figures above on this
  machine, whatever the queue's own code costs;
- queue dedup adds/s: adds of keys that are already queued (the dirty-set hit of a chatty informer);
- queue rate-limited adds/s: ``add_rate_limited`` of distinct keys (per-item backoff plus the delay heap);
- queue trickle cycles/s, 1 and K consumers: keys added one at a time, the producer yielding after each
  (as informer events arrive), with 1 or K idle consumers waiting in ``get``; with no wasted wake-ups
  the two are about equal;
- informer events/s: events received by the handler of an ``Informer`` (a real ``KubeClient`` over HTTP,
  all namespaces) per second, from the first to the last, while a separate process creates then
  merge-patches M BuildWorkloads over HTTP as fast as the emulator takes them; the writer's own rate and
  the informer's lag behind its last write say whether the informer kept up (then the figure is the
  writer's rate, not the informer's limit);
- informer catch-up events/s: a second informer replays the same 2M events from the emulator's watch
  history (its list is skipped: empty at the resourceVersion before the writes), so the events come as
  fast as it takes them: the informer's own limit, emulator's write-out included;
- informer list+sync objects/s: a fresh informer's initial paginated list of S pre-created objects until
  ``has_synced`` (emulator's list serving included: it runs in this process; its objects are frozen out
  of the garbage collector's view, else collections scanning them dominate the figure as S grows);
- informer memory / cached object: what a synced informer retains per object (tracemalloc, counting only
  allocations made by service/kube and service/runtime code, in a separate untimed sync), next to the
  size of the object's JSON;
- controller reconciles/s (metrics / no metrics): a ``Controller`` with W workers draining R requests
  already queued, through a trivial reconcile that awaits one checkpoint and makes no API call: the
  runtime's own per-reconcile cost; with the longest event-loop stall seen by a 1 ms ticker meanwhile;
- controller reconciles/s (no yield): the same with a reconcile that returns without
  awaiting anything, as one that finds nothing to do in the cache; its event-loop stall shows how long
  other tasks (watches, probes, lease renewals) wait while the workers drain the queue.

With ``--repeat X`` each queue and controller figure is the best of X runs (other load only slows a run).
The writer runs in its own process (spawned) so that it does not share the informer's core; the
emulator runs in this process, as the informer's API server.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import orjson
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import GROUP, NS, PLURAL, VERSION, join, load_writes, workload
from service.kube.client import KubeClient, Page
from service.kube.config import explicit
from service.kube.resources import BUILD_WORKLOAD, Resource
from service.runtime import Controller, Request
from service.runtime.informer import FuncHandler, Informer
from service.runtime.metrics import RuntimeMetrics
from service.runtime.queue import ShutDown, WorkQueue
from simcluster.cluster import Cluster
from simcluster.crds import new_cluster
from simcluster.server import running_apiserver

R = TypeVar("R", float, tuple[float, float])
DEADLINE = 120.0  # seconds any single awaited stage may take before the benchmark gives up


def requests(n: int) -> list[Request]:
    return [Request(NS, f"bw-{i}") for i in range(n)]


# ---------------------------------------------------------------------------------------- work queue
async def queue_cycles(n: int, consumers: int, *, named: bool) -> float:
    """N adds while K consumers wait, then get+done of every key; cycles per second."""
    queue: WorkQueue[Request] = WorkQueue(
        "bench" if named else "", metrics=RuntimeMetrics(CollectorRegistry(auto_describe=True))
    )
    keys = requests(n)
    handled = 0

    async def consume() -> None:
        nonlocal handled
        while True:
            try:
                item = await queue.get()
            except ShutDown:
                return
            queue.done(item)
            handled += 1
            await anyio.lowlevel.checkpoint()  # the worker's reconcile

    async with anyio.create_task_group() as tg:
        for _ in range(consumers):
            tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()  # every consumer is waiting in get()
        start = time.perf_counter()
        for key in keys:
            queue.add(key)
        queue.shutdown()  # queued keys are still handed out; then get() raises ShutDown
    elapsed = time.perf_counter() - start
    assert handled == n, (handled, n)
    return n / elapsed


async def queue_dedup_adds(n: int, rounds: int) -> float:
    queue: WorkQueue[Request] = WorkQueue("bench", metrics=RuntimeMetrics(CollectorRegistry()))
    keys = requests(n)
    for key in keys:
        queue.add(key)
    start = time.perf_counter()
    for _ in range(rounds):
        for key in keys:
            queue.add(key)
    elapsed = time.perf_counter() - start
    assert len(queue) == n
    return n * rounds / elapsed


async def queue_rate_limited_adds(n: int) -> float:
    queue: WorkQueue[Request] = WorkQueue("bench", metrics=RuntimeMetrics(CollectorRegistry()))
    keys = requests(n)
    start = time.perf_counter()
    for key in keys:
        queue.add_rate_limited(key)
    elapsed = time.perf_counter() - start
    assert queue.waiting == n
    return n / elapsed


async def queue_trickle(n: int, consumers: int) -> float:
    """One add at a time, the producer yielding after each, ``consumers`` idle getters; cycles per second."""
    queue: WorkQueue[Request] = WorkQueue("bench", metrics=RuntimeMetrics(CollectorRegistry()))
    keys = requests(n)
    handled = 0

    async def consume() -> None:
        nonlocal handled
        while True:
            try:
                item = await queue.get()
            except ShutDown:
                return
            queue.done(item)
            handled += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for _ in range(consumers):
            tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        start = time.perf_counter()
        for key in keys:
            queue.add(key)
            await anyio.lowlevel.checkpoint()
        queue.shutdown()
    elapsed = time.perf_counter() - start
    assert handled == n, (handled, n)
    return n / elapsed


async def queue_floor(n: int, consumers: int) -> float:
    """What ``queue_cycles`` would measure with a queue that cost nothing: per key, the checkpoint ``get``
    takes (a worker must yield between keys) and the consumer's own; cycles per second."""
    handled = 0

    async def consume() -> None:
        nonlocal handled
        while handled < n:
            await anyio.lowlevel.checkpoint()  # get()'s
            handled += 1
            await anyio.lowlevel.checkpoint()  # the worker's reconcile

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(consumers):
            tg.start_soon(consume)
    elapsed = time.perf_counter() - start
    assert n <= handled < n + consumers, (handled, n)
    return n / elapsed


# ---------------------------------------------------------------------------------------- informer
class EventCounter:
    """A handler that counts events and notes the time of the first and the last."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.count = 0
        self.first = self.last = 0.0
        self.all_seen = anyio.Event()

    def _seen(self) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.last = now
        self.count += 1
        if self.count == self.expect:
            self.all_seen.set()

    def handler(self) -> FuncHandler:
        return FuncHandler(
            add=lambda obj, initial: self._seen(),
            update=lambda old, new: self._seen(),
            delete=lambda obj, unknown: self._seen(),
        )

    def rate(self) -> float:
        return (self.count - 1) / (self.last - self.first) if self.count > 1 else 0.0


class ListedEmptyAt:
    """A list-watch client whose list is empty at resourceVersion ``rv``: the watch replays everything since."""

    def __init__(self, client: KubeClient, rv: str) -> None:
        self.client = client
        self.rv = rv

    async def pages(self, res: Resource, namespace: str | None = None, **kwargs: Any) -> AsyncIterator[Page]:
        yield Page([], self.rv)

    def watch(self, res: Resource, namespace: str | None = None, **kwargs: Any) -> Any:
        return self.client.watch(res, namespace, **kwargs)


async def informer_watch(objects: int, concurrency: int) -> dict[str, float]:
    """Live events while a separate process writes, then the catch-up replay of the same events."""
    ctx = mp.get_context("spawn")
    size = max(100_000, 2 * objects + 100)
    cluster = new_cluster(history_limit=size, watch_buffer=size)
    cluster.ensure_namespace(NS)
    kind = cluster.lookup(GROUP, VERSION, PLURAL)
    expect = 2 * objects  # an ADDED and a MODIFIED per object
    figures: dict[str, float] = {}
    async with (
        running_apiserver(cluster) as api,
        KubeClient(explicit(api.url), qps=0) as client,
        anyio.create_task_group() as tg,
    ):
        live = EventCounter(expect)
        informer = Informer(client, BUILD_WORKLOAD)
        informer.add_handler(live.handler())
        tg.start_soon(informer.run)
        with anyio.fail_after(DEADLINE):
            await informer.wait_synced()
            while not cluster.watchers[kind.key]:
                await anyio.sleep(0.01)
        start_rv = str(cluster.rv)
        done = ctx.Queue()
        proc = ctx.Process(target=load_writes, args=(api.url, objects, concurrency, done))
        proc.start()
        with anyio.fail_after(DEADLINE):
            await join(proc)
        with anyio.fail_after(DEADLINE):
            await live.all_seen.wait()
        write_start, write_end = done.get(timeout=5)
        figures["informer_events_per_s"] = live.rate()
        figures["writer_writes_per_s"] = expect / (write_end - write_start)
        figures["informer_lag_ms"] = max(0.0, live.last - write_end) * 1000

        replay = EventCounter(expect)
        catch_up = Informer(ListedEmptyAt(client, start_rv), BUILD_WORKLOAD)
        catch_up.add_handler(replay.handler())
        tg.start_soon(catch_up.run)
        with anyio.fail_after(DEADLINE):
            await replay.all_seen.wait()
        figures["informer_catch_up_events_per_s"] = replay.rate()
        tg.cancel_scope.cancel()
    return figures


def _retained(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    """Bytes allocated by the client and the runtime between the snapshots and still alive."""
    only = [
        tracemalloc.Filter(True, "*/service/kube/*"),
        tracemalloc.Filter(True, "*/service/runtime/*"),
    ]
    diff = after.filter_traces(only).compare_to(before.filter_traces(only), "filename")
    return sum(stat.size_diff for stat in diff)


async def informer_sync(objects: int) -> dict[str, float]:
    """A fresh informer's initial list of ``objects`` pre-created objects; then its memory per object."""
    cluster = new_cluster()
    cluster.ensure_namespace(NS)
    kind = cluster.lookup(GROUP, VERSION, PLURAL)
    for i in range(objects):
        cluster.create(kind, VERSION, NS, workload(i))
    # The emulator's objects live in this process, as they would not in production: keep the garbage
    # collector from scanning them again and again while the informer's allocations trigger collections.
    gc.collect()
    gc.freeze()
    try:
        return await _sync(cluster, objects)
    finally:
        gc.unfreeze()


async def _sync(cluster: Cluster, objects: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with running_apiserver(cluster) as api, KubeClient(explicit(api.url), qps=0) as client:
        counter = EventCounter(objects)
        informer = Informer(client, BUILD_WORKLOAD)
        informer.add_handler(counter.handler())
        async with anyio.create_task_group() as tg:
            start = time.perf_counter()
            tg.start_soon(informer.run)
            with anyio.fail_after(DEADLINE):
                await informer.wait_synced()
            figures["informer_sync_objects_per_s"] = objects / (time.perf_counter() - start)
            tg.cancel_scope.cancel()
        assert counter.count == objects and len(informer.store) == objects

        # Memory, untimed: tracemalloc slows every allocation down.
        gc.collect()
        tracemalloc.start(1)
        try:
            before = tracemalloc.take_snapshot()
            measured = Informer(client, BUILD_WORKLOAD)
            async with anyio.create_task_group() as tg:
                tg.start_soon(measured.run)
                with anyio.fail_after(DEADLINE):
                    await measured.wait_synced()
                tg.cancel_scope.cancel()
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        assert len(measured.store) == objects
        figures["informer_bytes_per_object"] = _retained(before, after) / objects
        sample = measured.store.get(f"{NS}/bw-0")
        figures["object_json_bytes"] = float(len(orjson.dumps(sample)))
    return figures


# ---------------------------------------------------------------------------------------- controller
async def controller_reconciles(n: int, workers: int, *, metrics: bool, yields: bool) -> tuple[float, float]:
    """Reconciles per second draining ``n`` queued requests, and the longest event-loop stall (ms)."""
    all_done = anyio.Event()
    reconciled = 0

    async def reconcile(request: Request) -> None:
        nonlocal reconciled
        if yields:
            await anyio.lowlevel.checkpoint()
        reconciled += 1
        if reconciled == n:
            all_done.set()

    controller = Controller(
        "bench",
        reconcile,
        max_concurrent=workers,
        metrics=RuntimeMetrics(CollectorRegistry()) if metrics else None,
    )
    for request in requests(n):
        controller.enqueue(request)
    stall = 0.0
    tick = 0.001

    async def ticker() -> None:
        nonlocal stall
        last = time.perf_counter()
        while True:
            await anyio.sleep(tick)
            now = time.perf_counter()
            stall = max(stall, now - last - tick)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        start = time.perf_counter()
        tg.start_soon(controller.run)
        with anyio.fail_after(DEADLINE):
            await all_done.wait()
        elapsed = time.perf_counter() - start
        await anyio.sleep(3 * tick)  # the ticker notes a stall that lasted until now
        await controller.stop(grace=1.0)  # its run() returns
        tg.cancel_scope.cancel()  # the ticker
    return n / elapsed, stall * 1000


# ---------------------------------------------------------------------------------------- main
def _rate(result: float | tuple[float, float]) -> float:
    return result[0] if isinstance(result, tuple) else result


async def best(repeat: int, measure: Callable[[], Awaitable[R]]) -> R:
    """The best of ``repeat`` runs (the highest rate, first in a tuple): other load only ever slows a run."""
    results = [await measure() for _ in range(max(1, repeat))]
    return max(results, key=_rate)


async def run_all(args: argparse.Namespace) -> dict[str, float]:
    f: dict[str, float] = {}
    n, k, r = args.keys, args.consumers, args.repeat
    f["queue_cycles_per_s"] = await best(r, lambda: queue_cycles(n, k, named=True))
    f["queue_cycles_no_metrics_per_s"] = await best(r, lambda: queue_cycles(n, k, named=False))
    f["queue_floor_cycles_per_s"] = await best(r, lambda: queue_floor(n, k))
    f["queue_dedup_adds_per_s"] = await best(r, lambda: queue_dedup_adds(n, 10))
    f["queue_rate_limited_adds_per_s"] = await best(r, lambda: queue_rate_limited_adds(n))
    trickle = max(1, n // 5)
    f["queue_trickle_1_consumer_per_s"] = await best(r, lambda: queue_trickle(trickle, 1))
    f["queue_trickle_k_consumers_per_s"] = await best(r, lambda: queue_trickle(trickle, k))
    f.update(await informer_watch(args.objects, args.concurrency))
    f.update(await informer_sync(args.sync_objects))
    for key, metrics, yields in (
        ("controller", True, True),
        ("controller_no_metrics", False, True),
        ("controller_no_yield", True, False),
    ):
        measure = partial(
            controller_reconciles, args.reconciles, args.workers, metrics=metrics, yields=yields
        )
        f[f"{key}_reconciles_per_s"], f[f"{key}_stall_ms"] = await best(r, measure)
    return f


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=100_000, help="distinct keys through the work queue")
    parser.add_argument("--consumers", type=int, default=8, help="concurrent consumer tasks of the queue")
    parser.add_argument("--objects", type=int, default=5000, help="objects the writer creates and patches")
    parser.add_argument("--sync-objects", type=int, default=5000, help="objects listed by the initial sync")
    parser.add_argument("--workers", type=int, default=4, help="controller workers (max_concurrent)")
    parser.add_argument("--reconciles", type=int, default=100_000, help="requests queued for the controller")
    parser.add_argument("--concurrency", type=int, default=32, help="the writer's concurrent requests")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each queue and controller figure; the best is printed"
    )
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default="asyncio",
        help="the loop to run on, as the service's eventLoop (default: asyncio, as `run`)",
    )
    args = parser.parse_args()

    print(
        f"runtime benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()} "
        f"({platform.python_implementation()}), anyio on {args.event_loop}, load average {os.getloadavg()[0]:.2f}"
    )
    f = anyio.run(run_all, args, backend_options={"use_uvloop": args.event_loop == "uvloop"})
    k, w = args.consumers, args.workers
    print(
        f"queue cycles/s (metrics):              {f['queue_cycles_per_s']:>10,.0f}  ({args.keys:,} keys, {k} consumers)"
    )
    print(f"queue cycles/s (no metrics):           {f['queue_cycles_no_metrics_per_s']:>10,.0f}")
    print(f"queue floor cycles/s (checkpoints):    {f['queue_floor_cycles_per_s']:>10,.0f}")
    print(f"queue dedup adds/s:                    {f['queue_dedup_adds_per_s']:>10,.0f}")
    print(f"queue rate-limited adds/s:             {f['queue_rate_limited_adds_per_s']:>10,.0f}")
    print(f"queue trickle cycles/s (1 consumer):   {f['queue_trickle_1_consumer_per_s']:>10,.0f}")
    print(f"queue trickle cycles/s ({k} consumers): {f['queue_trickle_k_consumers_per_s']:>10,.0f}")
    print(
        f"informer events/s:                     {f['informer_events_per_s']:>10,.0f}  "
        f"(writer {f['writer_writes_per_s']:,.0f} writes/s, lag {f['informer_lag_ms']:,.0f} ms, "
        f"{2 * args.objects:,} events)"
    )
    print(f"informer catch-up events/s:            {f['informer_catch_up_events_per_s']:>10,.0f}")
    print(
        f"informer list+sync objects/s:          {f['informer_sync_objects_per_s']:>10,.0f}  "
        f"({args.sync_objects:,} objects)"
    )
    print(
        f"informer memory / cached object:       {f['informer_bytes_per_object']:>10,.0f}  bytes "
        f"(its JSON: {f['object_json_bytes']:,.0f} bytes)"
    )
    print(
        f"controller reconciles/s (metrics):     {f['controller_reconciles_per_s']:>10,.0f}  "
        f"({args.reconciles:,} requests, {w} workers; stall {f['controller_stall_ms']:,.1f} ms)"
    )
    print(
        f"controller reconciles/s (no metrics):  {f['controller_no_metrics_reconciles_per_s']:>10,.0f}  "
        f"(stall {f['controller_no_metrics_stall_ms']:,.1f} ms)"
    )
    print(
        f"controller reconciles/s (no yield):    {f['controller_no_yield_reconciles_per_s']:>10,.0f}  "
        f"(stall {f['controller_no_yield_stall_ms']:,.1f} ms)"
    )
    print(json.dumps({key: round(value, 2) for key, value in f.items()}))


if __name__ == "__main__":
    main()
