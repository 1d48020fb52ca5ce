"""Wiring of the simulated kpack, and the objects Korifi's Helm chart creates next to kpack.

The controllers run on the project's own runtime (shared informers, work queues, workers) and reach the API
over HTTP with a ``KubeClient``, as kpack's controller does with client-go, so the service under test meets
the same caches, conflicts and event timing as against kpack. The webhooks are wired separately from the
controllers: in the emulator they live in the API server, in process (``running_kpack``); against any
other API server they are real admission webhooks, served over HTTPS by this process and registered with
webhook configurations (``running_kpack_on_cluster``, ``serve_on_cluster`` behind ``python -m simcluster
kpack``). Both ways run one implementation (``webhooks.KpackAdmission``).
"""

from __future__ import annotations

import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import anyio

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import explicit, load_kubeconfig
from service.kube.resources import Resource
from service.registry.auth import docker_config_secret
from service.registry.client import RegistryClient
from service.runtime import (
    Builder,
    Controller,
    Funcs,
    Manager,
    ManagerOptions,
    Predicate,
    Reconcile,
    Request,
    Result,
)
from service.runtime.informer import FuncHandler
from simcluster.kpack import apis, gotypes, pods
from simcluster.kpack.base import Obj, Shared, log
from simcluster.kpack.builders import BuilderControllers
from simcluster.kpack.builds import BuildController
from simcluster.kpack.images import BUILDS_BY_IMAGE, ImageController, builds_by_image
from simcluster.kpack.options import CatalogBuildpack, KpackOptions, repository_key
from simcluster.kpack.stores import StoreControllers
from simcluster.kpack.validation import KPACK_CONTROLLER
from simcluster.kpack.webhook_server import WebhookServer, registered
from simcluster.kpack.webhooks import KpackAdmission, default_storage_class, install_webhooks
from simcluster.server import RunningApiServer

RESOURCES: tuple[Resource, ...] = (
    r.IMAGE,
    r.BUILD,
    r.BUILDER,
    r.CLUSTER_BUILDER,
    r.CLUSTER_STACK,
    r.CLUSTER_STORE,
    r.CLUSTER_BUILDPACK,
    r.BUILDPACK,
    apis.CLUSTER_LIFECYCLE_RESOURCE,
    apis.SOURCE_RESOLVER_RESOURCE,
)


def _not_deleting(obj: Obj) -> bool:
    return not obj["metadata"].get("deletionTimestamp")


SKIP_DELETING = Funcs(create=_not_deleting, update=lambda old, new: _not_deleting(new), delete=_not_deleting)


def _build_of_pod(pod: Obj) -> list[Request]:
    meta = pod["metadata"]
    build = (meta.get("labels") or {}).get(pods.BUILD_LABEL)
    return [Request(meta.get("namespace", ""), build)] if build else []


# Only a pod's deletion matters to its Build's run (the simulator writes the pod's status itself).
POD_DELETES = Funcs(create=lambda obj: False, update=lambda old, new: False)


def _skip_undecodable(reconcile: Reconcile) -> Reconcile:
    """An object kpack's Go types cannot decode is skipped, not retried. (A 409 from a write with a stale
    cache needs nothing here: every controller requeues a raised ``Conflict`` quietly, as kpack retries.)"""

    async def wrapped(request: Request) -> Result | None:
        try:
            return await reconcile(request)
        except gotypes.DecodeError as exc:
            # kpack's typed informers cannot decode such an object (one written without the webhooks): it
            # stays invisible to kpack's controllers.
            log.warning("%s: cannot decode: %s", request, exc)
            return None

    return wrapped


class KpackSimulator:
    """kpack's controllers, simulated. ``run()`` until cancelled; the webhooks are separate
    (``install_webhooks``), because they live in the API server, not in the controller."""

    def __init__(
        self,
        client: KubeClient,
        options: KpackOptions | None = None,
        *,
        registry: RegistryClient | None = None,
    ) -> None:
        self.options = options or KpackOptions()
        self.client = client
        self.registry = registry
        self.shared = Shared(client, self.options)
        # kpack's controllers on the project's manager, as any product runs: one informer per resource,
        # shared by the controllers and the simulator's own lookups.
        self.manager = Manager(
            client,
            ManagerOptions(
                name="kpack-sim",
                metrics_address=None,
                probe_address=None,
                workers=max(1, self.options.workers),
            ),
        )
        for res in RESOURCES:
            self.shared.informers[res.plural] = self.manager.informers.get(res)
        self.shared.informers["builds"].add_indexer(BUILDS_BY_IMAGE, builds_by_image)
        # kpack's informer on build pods: only those it labels, as its own is (and the controller's watch
        # below shares it).
        self.shared.informers["pods"] = self.manager.informers.get(r.POD, label_selector=pods.BUILD_LABEL)
        self.stores = StoreControllers(self.shared)
        self.builders = BuilderControllers(self.shared)
        self.images = ImageController(self.shared)
        self.builds = BuildController(self.shared, registry)
        self.shared.informers["pods"].add_handler(FuncHandler(delete=self.builds.pod_deleted))
        self.controllers: list[Controller] = []
        self._store_controllers: dict[str, Controller] = {}  # by plural
        self._wire()

    def _controller(self, name: str, resource: Resource, predicates: Sequence[Predicate] = ()) -> Builder:
        return self.manager.controller(f"kpack-sim-{name}").for_(resource, predicates=predicates)

    def _complete(self, builder: Builder, reconcile: Reconcile) -> Controller:
        controller = builder.complete(_skip_undecodable(reconcile))
        self.controllers.append(controller)
        return controller

    def _wire(self) -> None:
        st = self.stores
        stores: tuple[tuple[str, Resource, Reconcile], ...] = (
            ("clusterlifecycles", apis.CLUSTER_LIFECYCLE_RESOURCE, st.cluster_lifecycle),
            ("clusterstacks", r.CLUSTER_STACK, st.cluster_stack),
            ("clusterstores", r.CLUSTER_STORE, st.cluster_store),
            ("clusterbuildpacks", r.CLUSTER_BUILDPACK, st.cluster_buildpack),
            ("buildpacks", r.BUILDPACK, st.buildpack),
            ("sourceresolvers", apis.SOURCE_RESOLVER_RESOURCE, st.source_resolver),
        )
        for name, resource, reconcile in stores:
            self._store_controllers[name] = self._complete(self._controller(name, resource), reconcile)

        b = self.builders
        builders: tuple[tuple[str, Resource, Reconcile], ...] = (
            ("clusterbuilders", r.CLUSTER_BUILDER, b.cluster_builder),
            ("builders", r.BUILDER, b.builder),
        )
        for plural, resource, reconcile in builders:

            def using(field: str, default: str = "", plural: str = plural) -> Callable[[Obj], list[Request]]:
                return lambda obj: b.builders_using(plural, field, obj["metadata"]["name"], default)

            c = (
                self._controller(plural, resource)
                .watches(r.CLUSTER_STACK, using("stack"))
                .watches(r.CLUSTER_STORE, using("store"))
                .watches(apis.CLUSTER_LIFECYCLE_RESOURCE, using("lifecycle", "default-lifecycle"))
                .watches(r.CLUSTER_BUILDPACK, self._all(plural))
            )
            if plural == "builders":
                c.watches(r.BUILDPACK, lambda obj: b.all_builders("builders", obj["metadata"]["namespace"]))
            self._complete(c, reconcile)

        self._complete(
            self._controller("images", r.IMAGE, [SKIP_DELETING])
            .owns(r.BUILD)
            .owns(apis.SOURCE_RESOLVER_RESOURCE)
            .watches(r.BUILDER, self.images.images_using)
            .watches(r.CLUSTER_BUILDER, self.images.images_using),
            self.images.reconcile,
        )
        self._complete(
            self._controller("builds", r.BUILD).watches(
                r.POD, _build_of_pod, predicates=[POD_DELETES], label_selector=pods.BUILD_LABEL
            ),
            self.builds.reconcile,
        )

    def _all(self, plural: str) -> Callable[[Obj], list[Request]]:
        return lambda obj: self.builders.all_builders(plural)

    # ------------------------------------------------------------------ knobs at run time
    def skip_next_build(self, namespace: str, name: str) -> None:
        """See ``ImageController.skip_next_build``."""
        self.images.skip_next_build(namespace, name)

    async def update_stack(self, name: str, run_image: str, build_image: str | None = None) -> Obj:
        """A stack update: point ClusterStack ``name`` at another run (and build) image. Builders pick up
        the new run image, and Images whose last build succeeded get a ``STACK`` rebuild."""
        spec: Obj = {"runImage": {"image": run_image}}
        if build_image is not None:
            spec["buildImage"] = {"image": build_image}
        return await self.client.merge_patch(r.CLUSTER_STACK, name, {"spec": spec})

    def publish_buildpackage(self, image: str, buildpacks: Sequence[CatalogBuildpack]) -> None:
        """Push a buildpackage: the simulated registry now holds ``buildpacks`` (root first) at ``image``'s
        repository, over the catalogue. The ClusterStores, ClusterBuildpacks and Buildpacks that name that
        repository read it again, as kpack's would on their next reconcile."""
        key = repository_key(image)
        self.shared.published[key] = tuple(buildpacks)
        for plural in ("clusterstores", "clusterbuildpacks", "buildpacks"):
            for obj in self.shared.list(plural):
                spec = obj.get("spec") or {}
                images = [spec.get("image")] + [s.get("image") for s in spec.get("sources") or ()]
                if any(isinstance(i, str) and repository_key(i) == key for i in images):
                    meta = obj["metadata"]
                    self._store_controllers[plural].enqueue(Request(meta.get("namespace", ""), meta["name"]))

    async def wait_synced(self) -> None:
        for informer in self.shared.informers.values():
            await informer.wait_synced()

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        async with AsyncExitStack() as stack:
            if self.registry is None and self.options.registry:
                self.registry = await stack.enter_async_context(
                    RegistryClient(insecure_registries=[self.options.registry], timeout=10.0)
                )
                self.builds.registry = self.registry
            log.info("kpack simulator running (%d controllers)", len(self.controllers))
            await self.manager.run()


async def run_kpack_simulator(
    client: KubeClient,
    options: KpackOptions | None = None,
    *,
    registry: RegistryClient | None = None,
    seed: bool = False,
    registry_host: str | None = None,
) -> None:
    """Run the simulated kpack controllers against the API ``client`` talks to, until cancelled. With
    ``seed``, first create what Korifi's Helm chart creates next to kpack (``seed_defaults``)."""
    simulator = KpackSimulator(client, options, registry=registry)
    async with anyio.create_task_group() as tg:
        tg.start_soon(simulator.run)
        if seed:
            await seed_defaults(client, registry_host=registry_host or simulator.options.registry)


@asynccontextmanager
async def running_kpack(
    api: RunningApiServer,
    options: KpackOptions | None = None,
    *,
    seed: bool = False,
    registry: RegistryClient | None = None,
    qps: float = 0.0,
) -> AsyncIterator[KpackSimulator]:
    """kpack in an in-process emulator for the duration of the block: its webhooks installed in the
    cluster, its controllers running with their own client, authenticated as kpack's service account."""
    webhooks = install_webhooks(
        api.cluster, reject_env_secret_key_refs=(options or KpackOptions()).reject_env_secret_key_refs
    )
    token = secrets.token_hex(16)
    api.server.users[token] = KPACK_CONTROLLER
    try:
        async with KubeClient(
            explicit(api.url, token=token), qps=qps, burst=1000, user_agent="kpack-sim"
        ) as client:
            simulator = KpackSimulator(client, options, registry=registry)
            async with anyio.create_task_group() as tg:
                tg.start_soon(simulator.run)
                with anyio.fail_after(30):
                    await simulator.wait_synced()
                if seed:
                    await seed_defaults(client, registry_host=simulator.options.registry)
                yield simulator
                tg.cancel_scope.cancel()
    finally:
        api.server.users.pop(token, None)
        webhooks.uninstall()


@dataclass(frozen=True)
class KpackOnCluster:
    simulator: KpackSimulator
    webhooks: WebhookServer


@asynccontextmanager
async def running_kpack_on_cluster(
    client: KubeClient,
    options: KpackOptions | None = None,
    *,
    webhook_host: str = "127.0.0.1",
    webhook_port: int = 0,
    webhook_url: str | None = None,
    seed: bool = False,
    registry: RegistryClient | None = None,
) -> AsyncIterator[KpackOnCluster]:
    """kpack against the API server ``client`` talks to (one with kpack's CRDs and without kpack) for the
    duration of the block: the controllers, and the webhooks served on ``webhook_host:webhook_port`` and
    registered (called at ``webhook_url``, default the address served), in use when the block starts and
    unregistered when it ends."""
    options = options or KpackOptions()
    simulator = KpackSimulator(client, options, registry=registry)
    # kpack's webhook reads StorageClasses from an informer; this one shares the controllers' cache.
    storage_classes = simulator.manager.informers.lister(r.STORAGE_CLASS)
    admission = KpackAdmission(
        lambda: default_storage_class(storage_classes.list()),
        reject_env_secret_key_refs=options.reject_env_secret_key_refs,
    )
    server = WebhookServer(admission, host=webhook_host, port=webhook_port, url=webhook_url)
    async with server.serving(), anyio.create_task_group() as tg:
        tg.start_soon(simulator.run)
        try:
            with anyio.fail_after(30):
                await simulator.wait_synced()
                for informer in storage_classes.informers:
                    await informer.wait_synced()
            async with registered(client, server):
                if seed:
                    await seed_defaults(client, registry_host=simulator.options.registry)
                yield KpackOnCluster(simulator, server)
        finally:
            tg.cancel_scope.cancel()


async def serve_on_cluster(
    *,
    kubeconfig: str | None,
    context: str | None = None,
    webhook_host: str = "127.0.0.1",
    webhook_port: int = 0,
    webhook_url: str | None = None,
    options: KpackOptions | None = None,
    registry_url: str | None = None,
    registry_host: str = "127.0.0.1",
    seed: bool = False,
) -> None:
    """``python -m simcluster kpack``: the simulator against a kubeconfig's cluster until SIGINT or SIGTERM,
    with an in-process OCI registry on ``registry_host`` unless ``registry_url`` names one."""
    from simcluster.devcluster import registry_host as host_of
    from simcluster.registry import running_registry

    options = options or KpackOptions()

    def say(message: str) -> None:
        print(f"kpack: {message}", file=sys.stderr, flush=True)

    config = await load_kubeconfig(kubeconfig, context)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with AsyncExitStack() as stack:
            if registry_url:
                host = host_of(registry_url)
            else:
                reg = await stack.enter_async_context(running_registry(host=registry_host))
                host = reg.host
                say(f"serving an OCI registry on {reg.url}")
            options = replace(options, registry=host)
            client = await stack.enter_async_context(KubeClient(config, qps=0.0, user_agent="kpack-sim"))
            running = await stack.enter_async_context(
                running_kpack_on_cluster(
                    client,
                    options,
                    webhook_host=webhook_host,
                    webhook_port=webhook_port,
                    webhook_url=webhook_url,
                    seed=seed,
                )
            )
            say(
                f"kpack simulator running against {config.host}: webhooks {running.webhooks.url} "
                f"registered, builds take {options.build_seconds:g} s, images pushed to {host}"
            )
            async for _ in signals:
                break
    say("stopped (webhook configurations removed)")


# ---------------------------------------------------------------------- the objects around kpack
ROOT_NAMESPACE = "cf"
CLUSTER_BUILDER = "cf-kpack-cluster-builder"
CLUSTER_STACK = "cf-default-stack"
CLUSTER_STORE = "cf-default-buildpacks"
LIFECYCLE = "default-lifecycle"
SERVICE_ACCOUNT = "kpack-service-account"
REGISTRY_SECRET = "image-registry-credentials"
STACK_ID = "io.buildpacks.stacks.jammy"
LIFECYCLE_IMAGE = "ghcr.io/buildpacks-community/kpack/lifecycle@sha256:85b41ff08a1a6d1d0f5a0fb0c3a3e6f7d7b8e9a1c2d3e4f5a6b7c8d9e0f1a2b3"


def default_objects(registry_host: str | None = None) -> list[tuple[Resource, Obj]]:
    """What Korifi's Helm chart (korifi.md §3.3) and kpack's release manifest create: the ``cf`` root
    namespace, a default StorageClass, the builder service account with its registry secret, the
    ``kpack-image-builder`` BuilderInfo, the ``default-lifecycle``, and the ClusterStack, ClusterStore
    and ClusterBuilder Korifi builds with."""
    host = registry_host or "registry.example.com"
    kpack = "kpack.io/v1alpha2"
    return [
        (r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ROOT_NAMESPACE}}),
        (
            r.STORAGE_CLASS,
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": "standard",
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": "rancher.io/local-path",
                "allowVolumeExpansion": True,
            },
        ),
        (r.SECRET, docker_config_secret(REGISTRY_SECRET, ROOT_NAMESPACE, host, "user", "password")),
        (
            r.SERVICE_ACCOUNT,
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": SERVICE_ACCOUNT, "namespace": ROOT_NAMESPACE},
                "secrets": [{"name": REGISTRY_SECRET}],
                "imagePullSecrets": [{"name": REGISTRY_SECRET}],
            },
        ),
        (
            r.BUILDER_INFO,
            {
                "apiVersion": "korifi.cloudfoundry.org/v1alpha1",
                "kind": "BuilderInfo",
                "metadata": {"name": "kpack-image-builder", "namespace": ROOT_NAMESPACE},
                "spec": {},
            },
        ),
        (
            apis.CLUSTER_LIFECYCLE_RESOURCE,
            {
                "apiVersion": kpack,
                "kind": "ClusterLifecycle",
                "metadata": {"name": LIFECYCLE},
                "spec": {"image": LIFECYCLE_IMAGE},
            },
        ),
        (
            r.CLUSTER_STACK,
            {
                "apiVersion": kpack,
                "kind": "ClusterStack",
                "metadata": {"name": CLUSTER_STACK},
                "spec": {
                    "id": STACK_ID,
                    "buildImage": {"image": "paketobuildpacks/build-jammy-full"},
                    "runImage": {"image": "paketobuildpacks/run-jammy-full"},
                },
            },
        ),
        (
            r.CLUSTER_STORE,
            {
                "apiVersion": kpack,
                "kind": "ClusterStore",
                "metadata": {"name": CLUSTER_STORE},
                "spec": {
                    "sources": [
                        {"image": f"paketobuildpacks/{n}"}
                        for n in ("java", "nodejs", "ruby", "procfile", "go")
                    ]
                },
            },
        ),
        (
            r.CLUSTER_BUILDER,
            {
                "apiVersion": kpack,
                "kind": "ClusterBuilder",
                "metadata": {"name": CLUSTER_BUILDER},
                "spec": {
                    "tag": f"{host}/cf/kpack-builder",
                    "serviceAccountRef": {"name": SERVICE_ACCOUNT, "namespace": ROOT_NAMESPACE},
                    "stack": {"kind": "ClusterStack", "name": CLUSTER_STACK},
                    "store": {"kind": "ClusterStore", "name": CLUSTER_STORE},
                    "order": [
                        {"group": [{"id": f"paketo-buildpacks/{n}"}]}
                        for n in ("java", "go", "nodejs", "ruby", "procfile")
                    ],
                },
            },
        ),
    ]


async def seed_defaults(client: KubeClient, *, registry_host: str | None = None) -> list[Obj]:
    """Create ``default_objects`` (those that exist already are left alone); returns what was created."""
    created = []
    for res, obj in default_objects(registry_host):
        namespace: Any = obj["metadata"].get("namespace")
        try:
            created.append(await client.create(res, obj, namespace))
        except errors.AlreadyExists:
            continue
    return created
