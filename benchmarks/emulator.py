"""Benchmark: the API emulator's write rate and watch fan-out rate.

    python benchmarks/emulator.py [--writes N] [--watchers K] [--concurrency C] [--gc tuned|default]

``--gc tuned`` (the default) sets Python's garbage collector as ``python -m simcluster devcluster`` does
(``service.runtime.collector.tune``); ``--gc default`` leaves CPython's settings.

Prints, each on one line:
- core writes/s: creates and merge patches straight into the cluster state (no HTTP);
- core lifecycle writes/s: each workload as the service writes it in benchmarks/converge.py (a create, a
  status patch with a condition, a metadata patch, a status patch with the droplet), into a store that
  keeps all of them, as the dev cluster's does over a run;
- HTTP writes/s: creates and merge patches over HTTP from a separate load process;
- core fan-out: watch lines queued per second for K watchers of one resource;
- HTTP fan-out: watch events received per second by K HTTP watchers in a separate process,
  and how many times each event's object was serialised (the target is once).

The load generator runs in its own process so that it does not share the emulator's core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio.lowlevel
import anyio.to_thread

from benchmarks.common import GROUP, NS, PLURAL, VERSION, join, load_writes, workload
from service.runtime import collector
from simcluster import watch as sim_watch
from simcluster.crds import new_cluster
from simcluster.server import running_apiserver


def core_writes(n: int) -> float:
    cluster = new_cluster()
    cluster.ensure_namespace(NS)
    kind = cluster.lookup(GROUP, VERSION, PLURAL)
    bodies = [workload(i) for i in range(n)]
    patch = orjson.dumps({"metadata": {"labels": {"bench": "patched"}}})
    start = time.perf_counter()
    for body in bodies:
        cluster.create(kind, VERSION, NS, body)
    for i in range(n):
        cluster.patch(kind, VERSION, NS, f"bw-{i}", "application/merge-patch+json", patch)
    return 2 * n / (time.perf_counter() - start)


def _condition(kind: str, status: str, reason: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": reason,
        "lastTransitionTime": "2026-12-07T06:00:00Z",
        "observedGeneration": 1,
    }


_BEGUN = orjson.dumps({"status": {"conditions": [_condition("Succeeded", "Unknown", "BuildRunning")]}})
_LABELLED = orjson.dumps(
    {
        "metadata": {
            "labels": {"korifi.cloudfoundry.org/build-workload-name": "bw"},
            "annotations": {"kpack-image-builder.korifi.cloudfoundry.org/image-uid": "uid"},
            "finalizers": ["kpack-image-builder.korifi.cloudfoundry.org/buildworkload"],
        }
    }
)
_DROPLET = orjson.dumps(
    {
        "status": {
            "conditions": [
                _condition("Succeeded", "True", "BuildSucceeded"),
                _condition("Ready", "True", "Ready"),
            ],
            "droplet": {
                "registry": {"image": "registry.example.com/droplets@sha256:" + "a" * 64},
                "stack": "cflinuxfs4",
                "processTypes": [{"type": "web", "command": "python app.py"}],
                "ports": [8080],
            },
        }
    }
)


def core_lifecycle(n: int) -> float:
    cluster = new_cluster()
    cluster.ensure_namespace(NS)
    kind = cluster.lookup(GROUP, VERSION, PLURAL)
    bodies = [workload(i) for i in range(n)]
    merge = "application/merge-patch+json"
    start = time.perf_counter()
    for body in bodies:
        name = body["metadata"]["name"]
        cluster.create(kind, VERSION, NS, body)
        cluster.patch(kind, VERSION, NS, name, merge, _BEGUN, subresource="status")
        cluster.patch(kind, VERSION, NS, name, merge, _LABELLED)
        cluster.patch(kind, VERSION, NS, name, merge, _DROPLET, subresource="status")
    return 4 * n / (time.perf_counter() - start)


def core_fanout(n: int, watchers: int) -> float:
    cluster = new_cluster()
    cluster.ensure_namespace(NS)
    kind = cluster.lookup(GROUP, VERSION, PLURAL)
    ws = [cluster.watch(kind, VERSION, None, resource_version=str(cluster.rv)) for _ in range(watchers)]
    bodies = [workload(i) for i in range(n)]
    start = time.perf_counter()
    for body in bodies:
        cluster.create(kind, VERSION, NS, body)
    lines = sum(len(w.lines) for w in ws)
    return lines / (time.perf_counter() - start)


# ---------------------------------------------------------------- load processes (HTTP)
async def _http_watch(url: str, watchers: int, expect: int, rv: str, ready: Any, done: Any) -> None:
    path = f"{url}/apis/{GROUP}/{VERSION}/{PLURAL}?watch=true&resourceVersion={rv}"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        responses = [await session.get(path) for _ in range(watchers)]
        ready.set()

        async def drain(resp: aiohttp.ClientResponse) -> int:
            seen = 0
            async for _line in resp.content:
                seen += 1
                if seen >= expect:
                    break
            resp.close()
            return seen

        counts = await asyncio.gather(*(drain(r) for r in responses))
        done.put(sum(counts))


def _load_watch(url: str, watchers: int, expect: int, rv: str, ready: Any, done: Any) -> None:
    asyncio.run(_http_watch(url, watchers, expect, rv, ready, done))


async def http_benchmarks(n: int, watchers: int, concurrency: int) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    cluster = new_cluster()
    cluster.ensure_namespace(NS)
    async with running_apiserver(cluster) as api:
        # writes
        start_rv, timing = cluster.rv, ctx.Queue()
        proc = ctx.Process(target=load_writes, args=(api.url, n, concurrency, timing))
        proc.start()
        await join(proc)
        write_start, write_end = timing.get(timeout=5)
        writes = (cluster.rv - start_rv) / (write_end - write_start)

        # fan-out: K watchers in another process, writes made in this one
        ready, done = ctx.Event(), ctx.Queue()
        kind = cluster.lookup(GROUP, VERSION, PLURAL)
        proc = ctx.Process(target=_load_watch, args=(api.url, watchers, n, str(cluster.rv), ready, done))
        proc.start()
        await anyio.to_thread.run_sync(ready.wait)
        with anyio.fail_after(60):
            while sum(len(ws) for ws in cluster.watchers.values()) < watchers:
                await anyio.sleep(0.01)
        fanout_rv = cluster.rv
        patch = orjson.dumps({"metadata": {"labels": {"bench": "fanout"}}})
        start = time.perf_counter()
        for i in range(n):
            cluster.patch(kind, VERSION, NS, f"bw-{i}", "application/merge-patch+json", patch)
            if i % 50 == 0:
                await (
                    anyio.lowlevel.checkpoint()
                )  # let the watch writers run, as a server between requests would
        await join(proc)
        elapsed = time.perf_counter() - start
        received = done.get(timeout=5)
        events: list[sim_watch.Event] = [e for e in cluster.history[kind.key] if e.rv > fanout_rv]
        serialisations = sum(len(e._bytes) for e in events) / max(len(events), 1)
        return writes, received / elapsed, serialisations


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=5000, help="objects created (each is also patched)")
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--gc", choices=["tuned", "default"], default="tuned")
    args = parser.parse_args()
    if args.gc == "tuned":
        collector.tune()
    figures = {
        "core_writes_per_s": core_writes(args.writes),
        "core_lifecycle_writes_per_s": core_lifecycle(args.writes),
        "core_fanout_lines_per_s": core_fanout(args.writes, args.watchers),
    }
    http_writes, http_fanout, per_event = anyio.run(
        http_benchmarks, args.writes, args.watchers, args.concurrency
    )
    figures["http_writes_per_s"] = http_writes
    figures["http_fanout_events_per_s"] = http_fanout
    figures["serialisations_per_event"] = per_event
    print(f"core writes/s:                 {figures['core_writes_per_s']:>10,.0f}")
    print(f"core lifecycle writes/s:       {figures['core_lifecycle_writes_per_s']:>10,.0f}  (gc {args.gc})")
    print(f"HTTP writes/s:                 {http_writes:>10,.0f}  (concurrency {args.concurrency})")
    print(
        f"core fan-out lines/s:          {figures['core_fanout_lines_per_s']:>10,.0f}  ({args.watchers} watchers)"
    )
    print(f"HTTP fan-out events/s:         {http_fanout:>10,.0f}  ({args.watchers} watchers)")
    print(f"object serialisations / event: {per_event:>10.2f}")
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
