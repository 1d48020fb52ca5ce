"""A stand-in for kpack that only makes Builds succeed: the convergence benchmark's other side.

``benchmarks/converge.py`` measures a controller, not kpack, so kpack's part must cost as little as
possible and take no time: this process watches kpack Images and, for each Image generation it has not
built, creates the Build kpack would (the Image's labels plus ``image.kpack.io/image``,
``imageGeneration`` and ``buildNumber``, the ``image.kpack.io/reason`` annotation, owned by the Image;
reference kpack.md §2.1) and writes its status at once as a successful one: ``Succeeded=True/Completed``
and a ``latestImage`` that really is in the registry, so that a controller can read its config and write
a droplet. Every Build points at the same image, pushed once at start to an in-process OCI registry.

It also creates what Korifi's Helm chart and kpack create next to kpack (``seed_defaults``: the root
namespace, the builder service account, the ClusterBuilder, ...) and marks the ClusterBuilder ready, which
the kpack simulator would do by building a builder image. Nothing else of kpack is played: no webhooks
(Images are neither defaulted nor validated), no Image status, no pods, no rebuilds on builder changes.

    .venv/bin/python benchmarks/standin.py --kubeconfig devcluster.kubeconfig

Once ready it prints one JSON line on stdout: ``{"registry": "<host:port>", "image": "<ref@digest>"}``.
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from service.reconcilers import korifi as k
from service.registry.client import RegistryClient
from simcluster.kpack import seed_defaults
from simcluster.kpack.simulator import CLUSTER_BUILDER, STACK_ID
from simcluster.registry import running_registry

Obj = dict[str, Any]

RUN_IMAGE = "paketobuildpacks/run-jammy-full@sha256:" + "0" * 64
BUILD_METADATA = {
    "processes": [
        {"type": "web", "command": "python", "args": ["app.py"], "direct": True, "buildpackID": "bench"}
    ],
    "buildpacks": [{"id": "paketo-buildpacks/python", "version": "1.0.0"}],
    "launcher": {"version": "0.20.0", "source": {}},
}
CONCURRENCY = 32  # Builds being written at once: enough to keep up with any controller on two cores
WATCH_SECONDS = 24 * 3600  # one watch for the whole run: a re-list would count against the controller


def droplet_config() -> Obj:
    """The config of the one image every Build "built": what the CNB lifecycle labels a droplet with."""
    config = {
        "ExposedPorts": {"8080/tcp": {}},
        "Labels": {
            k.BUILD_METADATA_LABEL: orjson.dumps(BUILD_METADATA).decode(),
            "io.buildpacks.stack.id": STACK_ID,
        },
        "Env": ["CNB_APP_DIR=/workspace"],
        "WorkingDir": "/workspace",
    }
    return {"created": "1980-01-01T00:00:01Z", "config": config}


def build_for(image: Obj, number: int, latest_image: str) -> Obj:
    """The Build kpack's Image reconciler makes for this Image generation (kpack.md §2.1)."""
    meta, spec = image["metadata"], image.get("spec") or {}
    return {
        "apiVersion": k.KPACK_API_VERSION,
        "kind": "Build",
        "metadata": {
            "name": f"{meta['name']}-build-{number}",
            "namespace": meta["namespace"],
            "labels": {
                **(meta.get("labels") or {}),
                k.KPACK_IMAGE_LABEL: meta["name"],
                k.KPACK_IMAGE_GENERATION_LABEL: str(meta.get("generation", 1)),
                k.KPACK_BUILD_NUMBER_LABEL: str(number),
            },
            "annotations": {k.KPACK_REASON_ANNOTATION: "CONFIG"},
            "ownerReferences": [
                {
                    "apiVersion": k.KPACK_API_VERSION,
                    "kind": "Image",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "tags": [spec.get("tag", "")],
            "builder": {"image": latest_image},
            "serviceAccountName": spec.get("serviceAccountName") or "default",
            "source": spec.get("source") or {},
            "cache": {},
            "resources": {},
        },
    }


def succeeded_status(build: Obj, latest_image: str) -> Obj:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "observedGeneration": build["metadata"].get("generation", 1),
        "conditions": [
            {"type": k.SUCCEEDED, "status": "True", "reason": "Completed", "lastTransitionTime": now}
        ],
        "podName": f"{build['metadata']['name']}-build-pod",
        "latestImage": latest_image,
        "stack": {"id": STACK_ID, "runImage": RUN_IMAGE},
        "buildMetadata": BUILD_METADATA["buildpacks"],
        "lifecycleVersion": "0.20.0",
        "stepsCompleted": ["prepare", "analyze", "detect", "restore", "build", "export"],
    }


class StandIn:
    def __init__(self, client: KubeClient, latest_image: str) -> None:
        self.client = client
        self.latest_image = latest_image
        self.built: dict[tuple[str, str], int] = {}  # (namespace, Image) → last generation built
        self.numbers: dict[tuple[str, str], int] = {}  # (namespace, Image) → last build number

    async def ready_cluster_builder(self) -> None:
        """What kpack writes once it has built the builder image (kpack.md §1.3)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {
            "observedGeneration": 1,
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "UpToDate", "status": "True", "lastTransitionTime": now},
            ],
            "latestImage": self.latest_image,
            "stack": {"id": STACK_ID, "runImage": RUN_IMAGE},
            "order": [{"group": [{"id": "paketo-buildpacks/python", "version": "1.0.0"}]}],
        }
        await self.client.patch_status(r.CLUSTER_BUILDER, CLUSTER_BUILDER, {"status": status})

    def wanted(self, image: Obj) -> int | None:
        """The build number of the Build this Image needs, if it needs one (marked as made)."""
        meta = image["metadata"]
        key, generation = (meta["namespace"], meta["name"]), int(meta.get("generation", 1))
        if meta.get("deletionTimestamp") or self.built.get(key, 0) >= generation:
            return None
        self.built[key] = generation
        self.numbers[key] = self.numbers.get(key, 0) + 1
        return self.numbers[key]

    async def build(self, image: Obj, number: int) -> None:
        body = build_for(image, number, self.latest_image)
        namespace = image["metadata"]["namespace"]
        try:
            made = await self.client.create(r.BUILD, body, namespace)
        except errors.AlreadyExists:
            return
        except errors.NotFound:
            return  # the Image's namespace is going away
        with suppress(errors.NotFound):
            await self.client.patch_status(
                r.BUILD,
                made["metadata"]["name"],
                {"status": succeeded_status(made, self.latest_image)},
                namespace,
            )

    async def run(self, ready: Callable[[], None]) -> None:
        """List the Images, then follow them with a watch (resumed where it ended; listed again after a 410)."""
        limiter = anyio.CapacityLimiter(CONCURRENCY)

        async def build(image: Obj, number: int) -> None:
            async with limiter:
                await self.build(image, number)

        async with anyio.create_task_group() as tg:
            version: str | None = None
            while True:
                if version is None:
                    listed = await self.client.list(r.IMAGE)
                    for image in listed["items"]:
                        if (number := self.wanted(image)) is not None:
                            tg.start_soon(build, image, number)
                    ready()
                    version = listed["metadata"]["resourceVersion"]
                try:
                    async with self.client.watch(
                        r.IMAGE, resource_version=version, timeout_seconds=WATCH_SECONDS
                    ) as stream:
                        async for kind, image in stream:
                            version = image["metadata"].get("resourceVersion", version)
                            if kind in ("ADDED", "MODIFIED") and (number := self.wanted(image)) is not None:
                                tg.start_soon(build, image, number)
                except errors.Expired:
                    version = None  # too old to resume from: list again


async def main(kubeconfig: str, registry_host: str) -> None:
    config = await load_kubeconfig(kubeconfig)
    async with (
        running_registry(host=registry_host) as registry,
        RegistryClient(insecure_registries=[registry.host]) as registry_client,
        KubeClient(config, qps=100_000, burst=100_000, connection_limit=CONCURRENCY + 4) as client,
    ):
        digest = await registry_client.push_image(f"{registry.host}/cf/bench-droplet:1", droplet_config())
        latest_image = f"{registry.host}/cf/bench-droplet@{digest}"
        await seed_defaults(client, registry_host=registry.host)
        standin = StandIn(client, latest_image)
        await standin.ready_cluster_builder()
        said = False

        def ready() -> None:
            nonlocal said
            if not said:
                said = True
                line = orjson.dumps({"registry": registry.host, "image": latest_image}).decode()
                print(line, flush=True)

        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(standin.run, ready)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--registry-host", default="127.0.0.1", help="address the registry listens on")
    args = parser.parse_args()
    anyio.run(main, args.kubeconfig, args.registry_host, backend_options={"use_uvloop": True})
