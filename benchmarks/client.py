"""Benchmark: the API client's CPU per request, by transport.

    python benchmarks/client.py [--requests N]

The API emulator runs in its own process (``python -m simcluster devcluster``), so that this process's CPU
(``time.process_time``) is the client's alone. N sequential requests each, over one keep-alive connection:
- ``aiohttp_get_us``: a GET through a bare aiohttp ClientSession (what KubeClient used before
  service/http/pool.py);
- ``pool_get_us``: the same GET through service/http/pool.py alone;
- ``client_get_us`` and ``client_patch_us``: KubeClient's get and merge_patch, all of it (retry loop,
  metrics, orjson), as the service calls it.

Prints one line per figure and then all of them as JSON.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from service.http.pool import Http1Pool
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import explicit

PATH = "/api/v1/namespaces/default/configmaps/bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def per_request(n: int, call: Callable[[], Awaitable[object]]) -> float:
    """Microseconds of this process's CPU per call, after a warm-up."""
    for _ in range(min(n, 200)):
        await call()
    started = time.process_time()
    for _ in range(n):
        await call()
    return (time.process_time() - started) / n * 1e6


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = await anyio.open_process(
        [sys.executable, "-m", "simcluster", "devcluster", f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # KubeClient retries reads while the emulator comes up; the first answer says it is serving.
        async with KubeClient(explicit(url), qps=0, connection_retries=50, backoff_cap=0.2) as client:
            await client.list(r.NAMESPACE)
            await client.create(r.CONFIG_MAP, {"metadata": {"name": "bench", "namespace": "default"}})
        figures: dict[str, float] = {}
        async with aiohttp.ClientSession() as session:

            async def aiohttp_get() -> object:
                async with session.get(url + PATH, headers={"Accept": "application/json"}) as response:
                    return orjson.loads(await response.read())

            figures["aiohttp_get_us"] = await per_request(args.requests, aiohttp_get)
        pool = Http1Pool(url)
        try:

            async def pool_get() -> object:
                answer = await pool.request("GET", PATH, [("Accept", "application/json")], None, 30)
                return orjson.loads(answer.body)

            figures["pool_get_us"] = await per_request(args.requests, pool_get)
        finally:
            pool.close()
        # Metrics on, as in the service: rest_client_requests_total is counted for every request.
        async with KubeClient(explicit(url), qps=0, registry=CollectorRegistry()) as client:
            figures["client_get_us"] = await per_request(
                args.requests, lambda: client.get(r.CONFIG_MAP, "bench", "default")
            )
            patch = {"data": {"a": "b"}}
            figures["client_patch_us"] = await per_request(
                args.requests, lambda: client.merge_patch(r.CONFIG_MAP, "bench", patch, "default")
            )
    finally:
        server.terminate()
        await server.wait()
    for name, value in figures.items():
        print(f"{name:18s} {value:8.1f} µs of client CPU per request")
    print(orjson.dumps({k: round(v, 1) for k, v in figures.items()}).decode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per figure (default 3000)")
    anyio.run(main, parser.parse_args())
