"""The service's core logic written with kopf: the peer ``benchmarks/converge.py --peer kopf`` measures.

What a developer would write to do this service's main job with kopf's idioms (handlers, kopf's own
watching, state and patching; ``kubernetes_asyncio`` for what kopf does not do: create objects and write
another object's status), and no more:

* a BuildWorkload for ``kpack-image-builder`` is created → its app's kpack Image (the same Image the
  service makes: tag ``<prefix><app>-droplets``, the default ClusterBuilder, the builder service account,
  the source) and ``Succeeded=Unknown/BuildRunning``;
* a kpack Build of such an Image succeeds → the image's config is read from the registry (once per
  digest) and the workload gets its droplet (image, stack, process types, ports, pull secrets) and
  ``Succeeded=True/BuildSucceeded``, ``Ready=True``; a failed Build gives ``BuildFailed``.

The Events the service records on that path, with ``kopf.event`` (``--events``, as the service's
``events``): with ``all`` (the service's default) a Normal ``BuildRunning`` when the Image is made and a
Normal ``BuildSucceeded`` with the droplet, with ``all`` or ``warnings`` a Warning ``BuildFailed``. kopf's
own Event per handler run is turned off: the service records nothing like it.

None of the rest of the service: no custom Builders, no cancel or timeouts, no finalizers and droplet
deletion, no BuilderInfo, no stack updates. It is not part of the project: it runs in a venv of its own
that ``converge.py`` creates, with only ``kopf``, ``kubernetes_asyncio`` and ``uvloop`` installed, and it
imports nothing from the repository. With ``--event-loop uvloop`` it runs on uvloop, as ``kopf run`` does
wherever uvloop is installed; ``--consistency-timeout`` sets kopf's ``persistence.consistency_timeout``.

    <venv>/bin/python benchmarks/peers/kopf_peer.py --kubeconfig FILE --repository-prefix HOST/cf/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
import uvloop
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

KORIFI, KORIFI_VERSION, WORKLOADS = "korifi.cloudfoundry.org", "v1alpha1", "buildworkloads"
KPACK, KPACK_VERSION = "kpack.io", "v1alpha2"
APP_GUID = "korifi.cloudfoundry.org/app-guid"
WORKLOAD_LABEL = "korifi.cloudfoundry.org/build-workload-name"
BUILDER_NAME = "kpack-image-builder"
CLUSTER_BUILDER = "cf-kpack-cluster-builder"
SERVICE_ACCOUNT = "kpack-service-account"
METADATA_LABEL = "io.buildpacks.build.metadata"
MERGE_PATCH = "application/merge-patch+json"  # kubernetes_asyncio sends a JSON patch unless told
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)

Obj = dict[str, Any]


class Peer:
    """What the handlers share: the API client, the registry session and the configs read so far."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.events = "all"  # the Events recorded: all, warnings or none (the service's ``events``)
        self.api: k8s.CustomObjectsApi | None = None
        self.core: k8s.CoreV1Api | None = None
        self.http: aiohttp.ClientSession | None = None
        self.configs: dict[str, Obj] = {}  # image digest → its config (content-addressed: never stale)


PEER = Peer(os.environ.get("KOPF_PEER_PREFIX", ""))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: str, reason: str, message: str, generation: int) -> Obj:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now(),
        "observedGeneration": generation,
    }


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    """The emulator's kubeconfig names no user: kopf's own kubeconfig login finds no credentials in it. A
    real control plane's names a client certificate (``converge.py --cluster real``)."""
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(os.environ["KUBECONFIG"], client_configuration=configuration)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert or None,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
        insecure=not configuration.ssl_ca_cert,
    )


def record(obj: Obj, type_: str, reason: str, message: str) -> None:
    """An Event about ``obj``, if ``--events`` asks for its type; kopf posts it in the background."""
    if PEER.events == "all" or (PEER.events == "warnings" and type_ == "Warning"):
        kopf.event(obj, type=type_, reason=reason, message=message)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # kopf posts an Event per handler run otherwise
    settings.batching.worker_limit = int(os.environ.get("KOPF_PEER_WORKERS", "0")) or None
    if os.environ.get("KOPF_PEER_CONSISTENCY"):
        settings.persistence.consistency_timeout = float(os.environ["KOPF_PEER_CONSISTENCY"])
    await k8s_config.load_kube_config(os.environ["KUBECONFIG"])
    api_client = k8s.ApiClient()
    PEER.api, PEER.core = k8s.CustomObjectsApi(api_client), k8s.CoreV1Api(api_client)
    PEER.http = aiohttp.ClientSession()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if PEER.http is not None:
        await PEER.http.close()
    if PEER.api is not None:
        await PEER.api.api_client.close()


def ours(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("builderName") == BUILDER_NAME


@kopf.on.create(KORIFI, KORIFI_VERSION, WORKLOADS, when=ours)
async def workload_created(
    name: str,
    namespace: str,
    spec: kopf.Spec,
    labels: kopf.Labels,
    meta: kopf.Meta,
    body: kopf.Body,
    **_: Any,
) -> None:
    """The app's Image, then BuildRunning (written first: a Build can succeed before kopf's own patch)."""
    assert PEER.api is not None
    app = labels.get(APP_GUID, "")
    generation = int(meta.get("generation") or 1)
    await PEER.api.patch_namespaced_custom_object_status(
        KORIFI,
        KORIFI_VERSION,
        namespace,
        WORKLOADS,
        name,
        {
            "status": {
                "conditions": [
                    condition(
                        "Succeeded",
                        "Unknown",
                        "BuildRunning",
                        "Waiting for image build to complete",
                        generation,
                    )
                ]
            }
        },
        _content_type=MERGE_PATCH,
    )
    source = dict((spec.get("source") or {}).get("registry") or {})
    image = {
        "apiVersion": f"{KPACK}/{KPACK_VERSION}",
        "kind": "Image",
        "metadata": {
            "name": app,
            "namespace": namespace,
            "labels": {WORKLOAD_LABEL: name, APP_GUID: app},
        },
        "spec": {
            "tag": f"{PEER.prefix}{app}-droplets",
            "builder": {"kind": "ClusterBuilder", "name": CLUSTER_BUILDER},
            "serviceAccountName": SERVICE_ACCOUNT,
            "source": {"registry": source},
            "build": {"env": list(spec.get("env") or [])},
        },
    }
    kopf.adopt(image)  # owned by the workload, as the service's Image is
    try:
        await PEER.api.create_namespaced_custom_object(KPACK, KPACK_VERSION, namespace, "images", image)
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise
        await PEER.api.patch_namespaced_custom_object(
            KPACK,
            KPACK_VERSION,
            namespace,
            "images",
            app,
            {"metadata": image["metadata"], "spec": image["spec"]},
            _content_type=MERGE_PATCH,
        )
    record(body, "Normal", "BuildRunning", f"kpack Image {app} ready to build")


def finished(status: kopf.Status, labels: kopf.Labels, **_: Any) -> bool:
    done = next((c for c in status.get("conditions") or () if c.get("type") == "Succeeded"), {})
    return WORKLOAD_LABEL in labels and done.get("status") in ("True", "False")


@kopf.index(KORIFI, KORIFI_VERSION, WORKLOADS, when=ours)
def workloads(name: str, namespace: str, meta: kopf.Meta, status: kopf.Status, **_: Any) -> Obj:
    """(namespace, name) → (generation, whether it has finished): kopf's in-memory view of workloads."""
    done = next((c for c in status.get("conditions") or () if c.get("type") == "Succeeded"), {})
    return {(namespace, name): (int(meta.get("generation") or 1), done.get("status") in ("True", "False"))}


@kopf.on.event(KPACK, KPACK_VERSION, "builds", when=finished)
async def build_finished(
    name: str, namespace: str, status: kopf.Status, labels: kopf.Labels, workloads: kopf.Index, **_: Any
) -> None:
    """The workload's droplet or failure, unless kopf's view says it has one already."""
    assert PEER.api is not None
    workload = labels[WORKLOAD_LABEL]
    generation, written = next(iter(workloads.get((namespace, workload), ())), (1, False))
    if written:
        return
    done = next(c for c in status.get("conditions") or () if c.get("type") == "Succeeded")
    ready = condition("Ready", "True", "Ready", "Ready", generation)
    patch: Obj
    event: tuple[str, str, str]
    if done["status"] == "False":
        failed = condition("Succeeded", "False", "BuildFailed", "Check build log output", generation)
        patch = {"status": {"conditions": [failed, ready]}}
        why = done.get("message") or "no reason given"
        event = ("Warning", "BuildFailed", f"kpack Build {name} failed: {why}")
    else:
        image = status.get("latestImage", "")
        config = await image_config(image)
        secrets = await pull_secrets(namespace)
        droplet: Obj = {
            "registry": {"image": image, **({"imagePullSecrets": secrets} if secrets else {})},
            "stack": (status.get("stack") or {}).get("id", ""),
            "processTypes": process_types((config.get("Labels") or {}).get(METADATA_LABEL)),
            "ports": sorted({int(p.split("/")[0]) for p in config.get("ExposedPorts") or {}}),
        }
        succeeded = condition("Succeeded", "True", "BuildSucceeded", "Image built successfully", generation)
        patch = {"status": {"droplet": droplet, "conditions": [succeeded, ready]}}
        event = ("Normal", "BuildSucceeded", f"droplet {image}")
    written_workload = await PEER.api.patch_namespaced_custom_object_status(
        KORIFI, KORIFI_VERSION, namespace, WORKLOADS, workload, patch, _content_type=MERGE_PATCH
    )
    record(written_workload, *event)  # about the workload (its uid from the write's answer), as the service's


async def pull_secrets(namespace: str) -> list[Obj]:
    assert PEER.core is not None
    account = await PEER.core.read_namespaced_service_account(SERVICE_ACCOUNT, namespace)
    return [{"name": s.name} for s in account.image_pull_secrets or ()]


async def image_config(image: str) -> Obj:
    """The image's config (anonymous pulls: the benchmark's registry has no auth)."""
    repository, _, digest = image.partition("@")
    if digest in PEER.configs:
        return PEER.configs[digest]
    assert PEER.http is not None
    host, _, path = repository.partition("/")
    base = f"http://{host}/v2/{path}"
    async with PEER.http.get(f"{base}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}) as reply:
        reply.raise_for_status()
        manifest = json.loads(await reply.read())
    async with PEER.http.get(f"{base}/blobs/{manifest['config']['digest']}") as reply:
        reply.raise_for_status()
        config: Obj = json.loads(await reply.read()).get("config") or {}
    PEER.configs[digest] = config
    return config


def process_types(metadata: str | None) -> list[Obj]:
    processes = json.loads(metadata or "{}").get("processes") or []
    return [
        {
            "type": p["type"],
            "command": " ".join([p.get("command", ""), *map(json.dumps, p.get("args") or [])]),
        }
        for p in processes
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--repository-prefix", required=True, help="e.g. 127.0.0.1:5000/cf/")
    parser.add_argument("--workers", type=int, default=0, help="kopf's worker limit (0: unlimited)")
    parser.add_argument("--event-loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument(
        "--events", choices=["all", "warnings", "none"], default="all", help="as the service's events"
    )
    parser.add_argument(
        "--consistency-timeout",
        type=float,
        help="kopf's persistence.consistency_timeout (default kopf's, 5 s): how long it waits to see its own "
        "handler-state patch before it handles a newer event without it, running an on.create handler again",
    )
    args = parser.parse_args()
    if args.consistency_timeout is not None:
        os.environ["KOPF_PEER_CONSISTENCY"] = str(args.consistency_timeout)
    PEER.events = args.events
    os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's own login reads it
    os.environ["KOPF_PEER_WORKERS"] = str(args.workers)
    PEER.prefix = args.repository_prefix
    logging.basicConfig(level=logging.WARNING)
    kopf.configure(verbose=False, debug=False, quiet=True)
    # On uvloop as kopf's CLI runs wherever uvloop is importable (kopf._kits.loops.proper_loop).
    factory = uvloop.new_event_loop if args.event_loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(kopf.operator(clusterwide=True, standalone=True))


if __name__ == "__main__":
    main()
