"""Benchmark: what an informer cache costs in memory per object, against the JSON of what it holds (issue 10 §3).

    .venv/bin/python benchmarks/cache_memory.py --objects 10000 [--objects 50000] [--resources ...]

The API emulator runs in this process with N objects of each resource, shaped as the service and the kpack
simulator write them after a successful build (a BuildWorkload with its droplet and provenance; an Image
with its latest build; a Build with stepStates, buildMetadata, stack and conditions), each with the
managedFields the emulator records. Each informer then runs alone in a fresh *spawned* process, so that
the resident memory measured is the informer's and nothing else's: VmRSS from /proc/self/status before the
informer starts and after it has synced (and a full collection), and VmHWM, the peak, which includes the
transient of the initial list. Per resource it prints:

- raw JSON: the bytes of the objects as a list returns them (compact JSON, managedFields included);
- kept JSON: the same after the informer's transform, i.e. what the cache has to hold;
- RSS growth per object and its ratio to the raw JSON (the issue's goal: <= 1.5x), and the peak;
- reads/s of ``Lister.get``, and objects/s of a scan with ``Lister.iterate`` (one decoded at a time) and
  of ``Lister.list`` (all decoded at once) on the synced cache, with the RSS per object after each.

The last line is every figure as JSON (``rss_per_raw_json``: all of them together).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import join
from service.kube.client import KubeClient
from service.kube.config import explicit
from service.kube.resources import BUILD, BUILD_WORKLOAD, IMAGE, Resource
from simcluster.cluster import Cluster
from simcluster.crds import new_cluster
from simcluster.server import running_apiserver

RESOURCES = {r.plural: r for r in (BUILD_WORKLOAD, IMAGE, BUILD)}
NAMESPACES = 20  # spaces: the objects spread over a few, as apps do
REGISTRY = "registry.example.com"
KORIFI = "korifi.cloudfoundry.org"
STEPS = ("prepare", "analyze", "detect", "restore", "build", "export", "completion")
DEADLINE = 1800


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def _condition(kind: str, reason: str, message: str | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": kind,
        "status": "True",
        "lastTransitionTime": "2026-12-05T17:12:43Z",
        "reason": reason,
    }
    if message is not None:
        cond |= {"message": message, "observedGeneration": 1}
    return cond


BUILDPACKS = [
    {"id": f"paketo-buildpacks/{bp}", "version": v, "homepage": f"https://github.com/paketo-buildpacks/{bp}"}
    for bp, v in (("bellsoft-liberica", "11.0.2"), ("java", "18.5.0"))
]
STACK = "io.buildpacks.stacks.jammy"


def objects(plural: str, i: int, owner_uid: str, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """One object of ``plural`` for app ``i``, and its status (written apart, as the status subresource).
    ``owner_uid``: the workload's for an Image, the Image's for a Build (the collector deletes orphans)."""
    ns, app, wl = f"space-{i % NAMESPACES}", f"app-{i}", f"wl-{i}"
    digest = f"sha256:{_hex(rng)}"
    droplet = f"{REGISTRY}/cf/{app}-droplets@{digest}"
    run_image = (
        f"{REGISTRY}/cf/kpack-builder@sha256:ef394cd73d314dac0f7b06668b0bc3a77641471638af9615a96b2cd3f9474f91"
    )
    source = {"registry": {"image": f"{REGISTRY}/packages/{app}:1"}}
    if plural == "buildworkloads":
        body = {
            "apiVersion": f"{KORIFI}/v1alpha1",
            "kind": "BuildWorkload",
            "metadata": {
                "name": wl,
                "namespace": ns,
                "labels": {f"{KORIFI}/app-guid": app, f"{KORIFI}/kpack-image-generation": "1"},
                "annotations": {f"kpack-image-builder.{KORIFI}/image-uid": f"{rng.getrandbits(128):032x}"},
                "finalizers": [f"kpack-image-builder.{KORIFI}/buildworkload"],
            },
            "spec": {"buildRef": {"name": wl}, "builderName": "kpack-image-builder", "source": source},
        }
        status = {
            "observedGeneration": 1,
            "conditions": [
                _condition("Succeeded", "BuildSucceeded", "Image built successfully"),
                _condition("Ready", "Ready", "Ready"),
            ],
            "provenance": {
                "image": droplet,
                "digest": digest,
                "stack": {"id": STACK, "runImage": run_image},
                "buildpacks": BUILDPACKS,
                "kpackBuild": {"name": f"{app}-build-1", "reason": "CONFIG"},
                "size": 11823,
            },
            "droplet": {
                "registry": {"image": droplet, "imagePullSecrets": [{"name": "image-registry-credentials"}]},
                "stack": STACK,
                "processTypes": [{"type": "web", "command": '/workspace/start "--port" "8080"'}],
                "ports": [8080],
            },
        }
        return body, status
    owner = {"apiVersion": f"{KORIFI}/v1alpha1", "kind": "BuildWorkload", "name": wl, "uid": owner_uid}
    if plural == "images":
        body = {
            "apiVersion": "kpack.io/v1alpha2",
            "kind": "Image",
            "metadata": {
                "name": app,
                "namespace": ns,
                "labels": {f"{KORIFI}/build-workload-name": wl},
                "ownerReferences": [owner],
            },
            "spec": {
                "tag": f"{REGISTRY}/cf/{app}-droplets",
                "builder": {
                    "kind": "ClusterBuilder",
                    "name": "cf-kpack-cluster-builder",
                    "apiVersion": "kpack.io/v1alpha2",
                },
                "serviceAccountName": "kpack-service-account",
                "source": source,
                "cache": {"volume": {"size": "2Gi"}},
                "failedBuildHistoryLimit": 10,
                "successBuildHistoryLimit": 10,
                "imageTaggingStrategy": "BuildNumber",
                "build": {"resources": {}},
            },
        }
        status = {
            "observedGeneration": 1,
            "conditions": [
                _condition("Ready", "UpToDate"),
                _condition("BuilderReady", "BuilderReady"),
                _condition("BuilderUpToDate", "BuilderUpToDate"),
            ],
            "latestBuildRef": f"{app}-build-1",
            "latestBuildImageGeneration": 1,
            "latestImage": droplet,
            "latestStack": STACK,
            "buildCounter": 1,
            "buildCacheName": f"{app}-cache",
            "latestBuildReason": "CONFIG",
        }
        return body, status
    changes = [
        {
            "reason": "CONFIG",
            "old": {"resources": {}, "source": {}},
            "new": {"resources": {}, "source": source},
        }
    ]
    body = {
        "apiVersion": "kpack.io/v1alpha2",
        "kind": "Build",
        "metadata": {
            "name": f"{app}-build-1",
            "namespace": ns,
            "ownerReferences": [
                {
                    "apiVersion": "kpack.io/v1alpha2",
                    "kind": "Image",
                    "name": app,
                    "uid": owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "labels": {
                f"{KORIFI}/build-workload-name": wl,
                "image.kpack.io/buildNumber": "1",
                "image.kpack.io/image": app,
                "image.kpack.io/imageGeneration": "1",
            },
            "annotations": {
                "image.kpack.io/reason": "CONFIG",
                "image.kpack.io/buildChanges": json.dumps(changes, separators=(",", ":")),
                "image.kpack.io/builderName": "cf-kpack-cluster-builder",
                "image.kpack.io/builderKind": "ClusterBuilder",
            },
            "finalizers": [f"{KORIFI}/kpackBuild"],
        },
        "spec": {
            "tags": [f"{REGISTRY}/cf/{app}-droplets", f"{REGISTRY}/cf/{app}-droplets:b1.20261205.171243"],
            "builder": {
                "image": f"{REGISTRY}/cf/kpack-builder:clusterbuilder-cf-kpack-cluster-builder@sha256:{_hex(rng)}"
            },
            "serviceAccountName": "kpack-service-account",
            "source": source,
            "cache": {"volume": {"persistentVolumeClaimName": f"{app}-cache"}},
            "runImage": {
                "image": f"{REGISTRY}/cf/kpack-builder:clusterbuilder-cf-kpack-cluster-builder-run-image@sha256:{_hex(rng)}"
            },
            "resources": {},
        },
    }
    steps = [
        {
            "terminated": {
                "exitCode": 0,
                "reason": "Completed",
                "message": f"Container {step} terminated successfully",
                "startedAt": "2026-12-05T17:12:43Z",
                "finishedAt": "2026-12-05T17:12:44Z",
                "containerID": f"containerd://{_hex(rng)}",
            }
        }
        for step in STEPS
    ]
    # The completion step's message is the build's report (base64 of gzip), as kpack's pods write it.
    steps[-1]["terminated"]["message"] = (
        "H4sIAAAAAAAA" + "".join(rng.choices("ABCDEFGHIJKLMNOPabcdefghijklmnop0123456789+/", k=480)) + "="
    )
    status = {
        "observedGeneration": 1,
        "conditions": [_condition("Succeeded", "Completed")],
        "buildMetadata": BUILDPACKS,
        "stack": {"runImage": run_image, "id": STACK},
        "lifecycleVersion": "0.20.12",
        "latestImage": droplet,
        "podName": f"{app}-build-1-build-pod",
        "stepStates": steps,
        "stepsCompleted": list(STEPS),
    }
    return body, status


def populate(cluster: Cluster, n: int) -> None:
    """``n`` apps, each a workload, its Image and its Build, owned as the service and kpack own them."""
    rng = random.Random(n)
    for s in range(NAMESPACES):
        cluster.ensure_namespace(f"space-{s}")
    for i in range(n):
        owner_uid = ""
        for res in (BUILD_WORKLOAD, IMAGE, BUILD):
            kind = cluster.lookup(res.group, res.version, res.plural)
            body, status = objects(res.plural, i, owner_uid, rng)
            created = cluster.create(kind, res.version, None, body, manager="kpack-controller")
            meta = created["metadata"]
            cluster.update(
                kind, res.version, meta["namespace"], meta["name"], dict(created, status=status),
                subresource="status", manager="kpack-controller",
            )  # fmt: skip
            owner_uid = meta["uid"]


async def raw_json_bytes(url: str, res: Resource) -> tuple[int, int]:
    """The compact JSON bytes of every item as a paginated list returns them, and the count."""
    total = count = 0
    base = f"{url}/apis/{res.group}/{res.version}/{res.plural}?limit=500"
    token = ""
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(base + (f"&continue={token}" if token else "")) as resp:
                page = orjson.loads(await resp.read())
            for item in page["items"]:
                total += len(orjson.dumps(item))
                count += 1
            token = page["metadata"].get("continue") or ""
            if not token:
                return total, count


# ---------------------------------------------------------------------------------- child process
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


async def _measure(url: str, plural: str) -> dict[str, float]:
    from service.runtime.informer import Informer, Lister

    res = RESOURCES[plural]
    async with KubeClient(explicit(url), qps=0) as client:
        await client.list(
            res, limit=1
        )  # the connection and the client's code paths, warmed outside the figure
        gc.collect()
        before_rss, before_hwm = _status_kb("VmRSS"), _status_kb("VmHWM")
        informer = Informer(client, res)
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(informer.run)
            with anyio.fail_after(DEADLINE):
                await informer.wait_synced()
            sync_s = time.perf_counter() - start
            tg.cancel_scope.cancel()
        gc.collect()
        after_rss, after_hwm = _status_kb("VmRSS"), _status_kb("VmHWM")

        lister = Lister([informer])
        keys = informer.store.list_keys()
        kept = sum(len(orjson.dumps(obj)) for obj in lister.list())
        rng = random.Random(0)
        sample = [tuple(k.split("/", 1)) for k in rng.choices(keys, k=20_000)]
        start = time.perf_counter()
        for ns, name in sample:
            lister.get(ns, name)
        get_per_s = len(sample) / (time.perf_counter() - start)
        start = time.perf_counter()
        scanned = sum(1 for _ in _scan(lister))
        scan_per_s = scanned / (time.perf_counter() - start)
        after_scan_rss = _status_kb("VmRSS")
        start = time.perf_counter()
        listed = len(lister.list())
        list_per_s = listed / (time.perf_counter() - start)
        gc.collect()
        after_list_rss = _status_kb("VmRSS")
    return {
        "objects": len(keys),
        "kept_json_bytes": kept,
        "rss_growth_bytes": (after_rss - before_rss) * 1024,
        "peak_growth_bytes": (max(after_hwm, before_hwm) - before_rss) * 1024,
        "sync_s": sync_s,
        "get_per_s": get_per_s,
        "list_objects_per_s": list_per_s,
        "scan_objects_per_s": scan_per_s,
        "rss_growth_after_scan_bytes": (after_scan_rss - before_rss) * 1024,
        "rss_growth_after_list_bytes": (after_list_rss - before_rss) * 1024,
    }


def _scan(lister: Any) -> Any:
    """One object at a time where the Lister can (``iterate``), else its whole list."""
    return lister.iterate() if hasattr(lister, "iterate") else iter(lister.list())


def _child(url: str, plural: str, out: Any) -> None:
    out.put(anyio.run(_measure, url, plural))


# ---------------------------------------------------------------------------------- parent
async def measure(n: int, plurals: list[str]) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    # A measured process leaves with its watch open: the emulator's note of that is noise here.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    cluster = new_cluster()
    rows = []
    populate_start = time.perf_counter()
    populate(cluster, n)
    print(
        f"# {n} objects per resource created in {time.perf_counter() - populate_start:.0f} s", file=sys.stderr
    )
    # The emulator's objects live in this process: spare the collector from scanning them while serving.
    gc.collect()
    gc.freeze()
    async with running_apiserver(cluster) as api:
        for plural in plurals:
            raw, count = await raw_json_bytes(api.url, RESOURCES[plural])
            out = ctx.Queue()
            proc = ctx.Process(target=_child, args=(api.url, plural, out))
            proc.start()
            with anyio.fail_after(DEADLINE):
                await join(proc)
            figures = out.get(timeout=5)
            assert figures["objects"] == count == n, (figures["objects"], count, n)
            rows.append({"resource": plural, "n": n, "raw_json_bytes": raw, **figures})
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'resource':15} {'N':>7} {'raw JSON/obj':>12} {'kept/obj':>9} {'RSS/obj':>9} {'RSS/raw':>8}"
        f" {'RSS/kept':>8} {'peak/obj':>9} {'sync s':>7} {'get/s':>9} {'list obj/s':>10} {'scan obj/s':>10}"
        f" {'RSS/obj after scan':>18} {'after list':>10}"
    )
    for row in rows:
        n = row["n"]
        raw, kept, rss, peak = (
            row[k] / n for k in ("raw_json_bytes", "kept_json_bytes", "rss_growth_bytes", "peak_growth_bytes")
        )
        row["rss_per_raw_json"] = rss / raw
        row["rss_per_kept_json"] = rss / kept
        print(
            f"{row['resource']:15} {n:>7} {raw:>12,.0f} {kept:>9,.0f} {rss:>9,.0f} {rss / raw:>8.2f}"
            f" {rss / kept:>8.2f} {peak:>9,.0f} {row['sync_s']:>7.1f} {row['get_per_s']:>9,.0f}"
            f" {row['list_objects_per_s']:>10,.0f} {row['scan_objects_per_s']:>10,.0f}"
            f" {row['rss_growth_after_scan_bytes'] / n:>18,.0f} {row['rss_growth_after_list_bytes'] / n:>10,.0f}"
        )
    total_raw = sum(r["raw_json_bytes"] for r in rows)
    total_rss = sum(r["rss_growth_bytes"] for r in rows)
    print(f"all resources: RSS / raw JSON = {total_rss / total_raw:.2f}")
    table = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    print(json.dumps({"rss_per_raw_json": round(total_rss / total_raw, 3), "rows": table}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--objects",
        type=int,
        action="append",
        help="objects per resource (repeatable; default 10000 and 50000)",
    )
    parser.add_argument("--resources", nargs="+", choices=list(RESOURCES), default=list(RESOURCES))
    args = parser.parse_args()
    rows = []
    for n in args.objects or [10_000, 50_000]:
        rows += anyio.run(measure, n, args.resources)
    report(rows)


if __name__ == "__main__":
    main()
