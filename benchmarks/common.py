"""What the benchmarks share: the object they write, the HTTP write load (run in a separate process so that
it does not share the measured process's core) and waiting for such a process."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.kube.resources import BUILD_WORKLOAD

GROUP, VERSION, PLURAL = BUILD_WORKLOAD.group, BUILD_WORKLOAD.version, BUILD_WORKLOAD.plural
NS = "bench"


def workload(i: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BuildWorkload",
        "metadata": {
            "name": f"bw-{i}",
            "namespace": NS,
            "labels": {"korifi.cloudfoundry.org/app-guid": f"app-{i}"},
        },
        "spec": {
            "buildRef": {"name": f"build-{i}"},
            "builderName": "kpack-image-builder",
            "source": {"registry": {"image": f"registry.example.com/apps/app-{i}:src"}},
            "buildpacks": ["paketo-buildpacks/python"],
        },
    }


async def _http_writes(url: str, n: int, concurrency: int, done: Any) -> None:
    """Create ``n`` workloads and merge-patch each, ``concurrency`` at a time; reports (start, end) on
    ``done``. perf_counter is CLOCK_MONOTONIC on Linux: comparable with the parent's."""
    base = f"{url}/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}"
    headers = {"Content-Type": "application/json"}
    patch_headers = {"Content-Type": "application/merge-patch+json"}
    patch = orjson.dumps({"metadata": {"labels": {"bench": "patched"}}})
    bodies = [orjson.dumps(workload(i)) for i in range(n)]
    todo = list(range(n - 1, -1, -1))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            while todo:
                i = todo.pop()
                async with session.post(base, data=bodies[i], headers=headers) as r:
                    assert r.status == 201, await r.text()
                async with session.patch(f"{base}/bw-{i}", data=patch, headers=patch_headers) as r:
                    assert r.status == 200, await r.text()

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        done.put((start, time.perf_counter()))


def load_writes(url: str, n: int, concurrency: int, done: Any) -> None:
    """The write load, as a process target."""
    anyio.run(_http_writes, url, n, concurrency, done)


async def join(proc: Any) -> None:
    """Wait for a multiprocessing process without blocking the event loop; fail if it failed."""
    await anyio.to_thread.run_sync(proc.join)
    if proc.exitcode != 0:
        raise SystemExit(f"benchmark load process failed (exit code {proc.exitcode})")
