"""API requests per workload: what the service asks of kube-apiserver to build one app (issue 10 §2).

The whole system in one process, as the demo runs it (the API emulator, an OCI registry, the kpack
simulator making every Build succeed quickly, the service as ``run`` assembles it); N workloads spread over
a few namespaces, each its own app. Once all have succeeded, the service's own request counts
(``rest_client_requests_total``, the client-go metric it keeps) are printed per workload, by method and by
answer, with the conflicts (409) apart: those are requests that were wasted.

    .venv/bin/python benchmarks/requests.py --workloads 200
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import replace

import anyio
from common import NS  # noqa: F401  (sys.path: the repository root)

from service.app import serve_cluster
from service.config import Config
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import explicit
from service.reconcilers import korifi as k
from service.runtime import Manager
from simcluster.crds import new_cluster
from simcluster.demo import create_space
from simcluster.kpack import KpackOptions, running_kpack
from simcluster.registry import running_registry
from simcluster.server import running_apiserver


def workload(i: int, space: str, registry: str) -> dict[str, object]:
    return {
        "apiVersion": k.KORIFI_API_VERSION,
        "kind": "BuildWorkload",
        "metadata": {"name": f"wl-{i}", "namespace": space, "labels": {k.APP_GUID_LABEL: f"app-{i}"}},
        "spec": {
            "buildRef": {"name": f"wl-{i}"},
            "builderName": k.BUILDER_NAME,
            "source": {"registry": {"image": f"{registry}/packages/app-{i}:1"}},
        },
    }


def requests_by(manager: Manager) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for metric in manager.registry.collect():
        if metric.name != "rest_client_requests":
            continue
        for sample in metric.samples:
            if sample.name == "rest_client_requests_total":
                counts[(sample.labels["method"], sample.labels["code"])] += int(sample.value)
    return counts


async def measure(n: int, spaces: int) -> None:
    async with running_apiserver(new_cluster()) as api, running_registry(host=api.host) as registry:
        options = KpackOptions(build_seconds=0.05, registry=registry.host)
        async with running_kpack(api, options, seed=True), KubeClient(explicit(api.url)) as client:
            names = [f"space-{s}" for s in range(spaces)]
            for space in names:
                await create_space(client, space, registry.host)
            config = replace(
                Config(),
                container_repository_prefix=f"{registry.host}/cf/",
                metrics_bind_address="0",
                health_probe_bind_address="0",
                log_level="warn",
            )
            async with anyio.create_task_group() as tg:
                manager: Manager = await tg.start(serve_cluster, explicit(api.url), config)
                before = requests_by(manager)  # startup: lists, watches, leader election
                start = time.monotonic()
                for i in range(n):
                    space = names[i % spaces]
                    await client.create(r.BUILD_WORKLOAD, workload(i, space, registry.host), space)
                while True:
                    items = (await client.list(r.BUILD_WORKLOAD))["items"]
                    done = sum(
                        1
                        for w in items
                        for c in (w.get("status") or {}).get("conditions") or ()
                        if c["type"] == k.SUCCEEDED and c["status"] == "True"
                    )
                    if done == n:
                        break
                    await anyio.sleep(0.2)  # a benchmark's progress poll, not a test
                seconds = time.monotonic() - start
                after = requests_by(manager)
                manager.shutdown()
    delta = after - before
    total = sum(delta.values())
    conflicts = sum(v for (_, code), v in delta.items() if code == "409")
    print(f"{n} workloads in {spaces} namespaces converged in {seconds:.1f} s")
    print(f"requests per workload: {total / n:.2f} (conflicts 409: {conflicts / n:.2f})")
    for method in sorted({m for m, _ in delta}):
        codes = ", ".join(f"{code} {v / n:.2f}" for (m, code), v in sorted(delta.items()) if m == method)
        print(f"  {method:7} {sum(v for (m, _), v in delta.items() if m == method) / n:.2f}  ({codes})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=200)
    parser.add_argument("--namespaces", type=int, default=4)
    args = parser.parse_args()
    anyio.run(measure, args.workloads, args.namespaces)


if __name__ == "__main__":
    main()
