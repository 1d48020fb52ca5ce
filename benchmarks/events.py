"""Benchmark: the event recorder's write rate and losses against the API emulator.

    python benchmarks/events.py [--events N] [--objects M] [--repeats R] [--latency S]
                                [--writers W ...] [--qps Q] [--module PATH]

Records N distinct Events (M objects, N/M reasons each: under client-go's spam burst of 25 per object,
and no two messages alike, so none is aggregated) as fast as a loop can, plus R repeats of the first
ones, then drains the recorder as a graceful shutdown does, and lists the Events on the API. For each
writer count W it prints one line: Events/s written (distinct Events on the API over the time from the
first ``record`` to the end of the drain), how many were lost (recorded but not on the API, repeats
counted by the Events' ``count``), and the recorder's own ``dropped``. ``--latency`` adds that many
seconds to every Event write in the emulator, as a real API server's round trip and etcd commit would.

``--module PATH`` measures another version of ``service/runtime/events.py`` instead (e.g. the serial one:
``git show <commit>:service/runtime/events.py > /tmp/old.py``); one that takes no ``writers`` runs once.

The emulator runs in its own process (spawned), so that it does not share the recorder's core.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import explicit
from service.runtime import events as current
from simcluster.crds import new_cluster
from simcluster.faults import FaultRule
from simcluster.server import running_apiserver

NS = "bench"


def serve(ready: Any, stop: Any, latency: float) -> None:
    """The emulator, as a process target: puts its URL on ``ready``, serves until ``stop`` is set."""

    async def main() -> None:
        cluster = new_cluster()
        cluster.ensure_namespace(NS)
        async with running_apiserver(cluster) as api:
            if latency > 0:
                for method in ("POST", "PATCH"):
                    api.faults.add(FaultRule(method=method, path="/events", status=0, latency=latency))
            ready.put(api.url)
            await anyio.to_thread.run_sync(stop.wait)

    anyio.run(main)


def load_module(path: str | None) -> ModuleType:
    if path is None:
        return current
    spec = importlib.util.spec_from_file_location("events_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def obj(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"app-{i}", "namespace": NS, "uid": f"uid-{i}", "resourceVersion": "1"},
    }


async def once(
    url: str, module: ModuleType, writers: int | None, n: int, objects: int, repeats: int, qps: float | None
) -> dict[str, float]:
    async with KubeClient(explicit(url), qps=0) as client:
        await client.delete_collection(r.EVENT, NS)
        kwargs: dict[str, Any] = {} if writers is None else {"writers": writers}
        if qps is not None and writers is not None:
            kwargs["qps"] = qps
        recorder = module.EventRecorder(client, "bench", **kwargs)
        per_object = -(-n // objects)
        targets = [obj(i) for i in range(objects)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(recorder.run)
            await anyio.lowlevel.checkpoint()  # let it start: ``drain`` waits only for a running one
            start = time.perf_counter()
            for k in range(n):
                recorder.record(targets[k % objects], "Normal", f"Step{k // objects}", f"event {k}")
            for k in range(repeats):
                recorder.record(targets[k % objects], "Normal", f"Step{k // objects}", f"event {k}")
            await recorder.drain()
            elapsed = time.perf_counter() - start
            tg.cancel_scope.cancel()
        items = (await client.list(r.EVENT, NS))["items"]
    occurrences = sum(e["count"] for e in items)
    assert per_object <= current.SPAM_BURST, "more events per object than client-go's spam filter lets by"
    return {
        "events_per_s": len(items) / elapsed,
        "seconds": elapsed,
        "on_api": len(items),
        "lost": n + repeats - occurrences,
        "dropped": recorder.dropped,
    }


async def run(args: argparse.Namespace, url: str) -> list[tuple[str, dict[str, float]]]:
    module = load_module(args.module)
    takes_writers = "writers" in inspect.signature(module.EventRecorder).parameters
    counts: list[int | None] = list(args.writers) if takes_writers else [None]
    results = []
    for writers in counts:
        label = "serial (no writers parameter)" if writers is None else f"{writers} writer(s)"
        results.append(
            (label, await once(url, module, writers, args.events, args.objects, args.repeats, args.qps))
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=3000, help="distinct Events recorded")
    parser.add_argument("--objects", type=int, default=300, help="objects they are about")
    parser.add_argument("--repeats", type=int, default=1000, help="repeats of the first Events")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each Event write")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, current.WRITERS])
    parser.add_argument("--qps", type=float, help="the writers' token bucket rate (default: the recorder's)")
    parser.add_argument("--module", help="another events.py to measure")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=serve, args=(ready, stop, args.latency))
    server.start()
    try:
        url = ready.get(timeout=60)
        results = anyio.run(run, args, url)
    finally:
        stop.set()
        server.join(10)
    print(
        f"{args.events} distinct Events on {args.objects} objects + {args.repeats} repeats, "
        f"write latency {args.latency * 1000:.0f} ms"
    )
    for label, f in results:
        print(
            f"{label:<30} {f['events_per_s']:>8,.0f} Events/s  ({f['on_api']:.0f} on the API in "
            f"{f['seconds']:.2f} s)  lost {f['lost']:.0f}  dropped {f['dropped']:.0f}"
        )
    print(json.dumps({label: {k: round(v, 2) for k, v in f.items()} for label, f in results}))


if __name__ == "__main__":
    main()
