"""The reconcilers against the API emulator and an in-process OCI registry, with kpack's side played by
the test (objects and statuses set by hand), as Korifi's own envtest suite does (korifi.md §4.2).

``env`` runs a manager with the three controllers; ``standard`` creates Korifi's "standard setup": a
namespace, a registry-credentials Secret, the builder ServiceAccount, a Ready ClusterBuilder with two
buildpacks, and (not yet created) a workload."""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import orjson
import pytest

from service.app import assemble
from service.config import Config
from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import ClusterConfig
from service.reconcilers import korifi as k
from service.reconcilers.settings import BuilderSettings
from service.registry.client import RegistryClient
from service.runtime import Manager
from simcluster.demo import SERVICE_ACCOUNT as SERVICE_ACCOUNT_OF_SPACES
from simcluster.demo import create_space
from simcluster.kpack import KpackOptions, KpackSimulator, running_kpack
from simcluster.kpack.simulator import CLUSTER_BUILDER, running_kpack_on_cluster
from simcluster.registry import RunningRegistry, running_registry
from simcluster.server import RunningApiServer
from tests.conftest import Target
from tests.helpers import eventually
from tests.kpack_world import isolated

Obj = dict[str, Any]

SERVICE_ACCOUNT = "builder-service-account"
PULL_SECRET = "image-registry-credentials"
PREFIX = "my.repository/my-prefix/"
READINESS_TIMEOUT = 1.5
APP_GUID = "app-guid"
BUILD_METADATA = {
    "processes": [
        {"type": "web", "command": "my-command", "args": ["foo", "bar"]},
        {"type": "db", "command": "my-command2"},
    ]
}


class RecordingRepositories:
    """The repository-creator seam (a no-op in production but for ECR): records what it was asked."""

    def __init__(self) -> None:
        self.created: list[str] = []

    async def create_repository(self, repository: str) -> None:
        self.created.append(repository)


@dataclass
class Env:
    api: RunningApiServer | None  # the emulator; None when the suite runs against another cluster
    client: KubeClient
    registry: RunningRegistry
    images: RegistryClient
    manager: Manager
    settings: BuilderSettings
    repositories: RecordingRepositories
    namespace: str = field(default_factory=lambda: f"namespace-{uuid.uuid4().hex[:8]}")
    # Cluster-scoped objects a test made, deleted after it on a cluster that outlives the test.
    cluster_scoped: list[tuple[r.Resource, str]] = field(default_factory=list)

    # ------------------------------------------------------------------ object helpers
    async def create(self, resource: r.Resource, obj: Obj) -> Obj:
        return await self.client.create(resource, obj, obj["metadata"].get("namespace"))

    async def get(self, resource: r.Resource, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return await self.client.get(
                resource, name, (namespace or self.namespace) if resource.namespaced else None
            )
        except errors.NotFound:
            return None

    async def set_status(
        self, resource: r.Resource, name: str, status: Obj, namespace: str | None = None
    ) -> Obj:
        ns = (namespace or self.namespace) if resource.namespaced else None
        return await self.client.patch_status(resource, name, {"status": status}, ns)

    async def workload(self, name: str) -> Obj:
        obj = await self.get(r.BUILD_WORKLOAD, name)
        assert obj is not None, f"workload {name} is gone"
        return obj

    async def succeeded(self, name: str) -> Obj | None:
        """The workload's Succeeded condition (None while it has none)."""
        obj = await self.get(r.BUILD_WORKLOAD, name)
        for condition in ((obj or {}).get("status") or {}).get("conditions") or ():
            if condition["type"] == k.SUCCEEDED:
                return dict(condition)
        return None

    async def condition(self, name: str, type_: str) -> Obj | None:
        obj = await self.get(r.BUILD_WORKLOAD, name)
        for condition in ((obj or {}).get("status") or {}).get("conditions") or ():
            if condition["type"] == type_:
                return dict(condition)
        return None

    async def wait_succeeded(self, name: str, status: str, within: float = 10.0) -> Obj:
        async def check() -> Obj | None:
            condition = await self.succeeded(name)
            return condition if condition and condition["status"] == status else None

        return await eventually(check, within, f"workload {name} Succeeded={status}")

    async def generation_label(self, name: str) -> str:
        async def check() -> str | None:
            labels = (await self.workload(name))["metadata"].get("labels") or {}
            return labels.get(k.IMAGE_GENERATION_LABEL)

        return await eventually(check, what=f"workload {name} labelled with its Image generation")

    # ------------------------------------------------------------------ kpack's side
    async def cluster_builder(
        self,
        name: str | None = None,
        *,
        ready: str | None = "True",
        message: str = "",
        order: list[str] | None = None,
    ) -> Obj:
        name = name or self.settings.cluster_builder_name
        await self.create(
            r.CLUSTER_BUILDER,
            {
                "apiVersion": k.KPACK_API_VERSION,
                "kind": "ClusterBuilder",
                "metadata": {"name": name},
                "spec": {
                    "tag": "my.repository/builder",
                    "stack": {"kind": "ClusterStack", "name": "my-cluster-stack"},
                    "store": {"kind": "ClusterStore", "name": "my-cluster-store"},
                    "serviceAccountRef": {"name": "kpack-service-account", "namespace": "cf"},
                },
            },
        )
        status: Obj = {
            "order": [
                {"group": [{"id": bp}]} for bp in (order or ["repo/my-buildpack", "repo/another-buildpack"])
            ],
            "stack": {"id": "io.buildpacks.stacks.jammy"},
        }
        if ready is not None:
            status["conditions"] = [{"type": "Ready", "status": ready, "message": message}]
        return await self.set_status(r.CLUSTER_BUILDER, name, status)

    async def build(
        self,
        name: str,
        generation: str,
        number: str | None = "1",
        *,
        image: str = APP_GUID,
        labels: Obj | None = None,
        status: Obj | None = None,
    ) -> Obj:
        build_labels = {
            k.KPACK_IMAGE_LABEL: image,
            k.KPACK_IMAGE_GENERATION_LABEL: generation,
            **(labels or {}),
        }
        if number is not None:
            build_labels[k.KPACK_BUILD_NUMBER_LABEL] = number
        created = await self.create(
            r.BUILD,
            {
                "apiVersion": k.KPACK_API_VERSION,
                "kind": "Build",
                "metadata": {"name": name, "namespace": self.namespace, "labels": build_labels},
                "spec": {"tags": [f"{PREFIX}{image}-droplets"]},
            },
        )
        if status is not None:
            created = await self.set_status(r.BUILD, name, status)
        return created

    async def push_droplet(
        self, metadata: Obj | None = None, ports: tuple[str, ...] = ("8080/tcp", "8443/tcp")
    ) -> str:
        """Push a built app image to the registry; its digest reference, as kpack's latestImage."""
        repo = f"{self.registry.host}/droplets/{APP_GUID}"
        config = {
            "config": {
                "Labels": {k.BUILD_METADATA_LABEL: orjson.dumps(metadata or BUILD_METADATA).decode()},
                "ExposedPorts": {p: {} for p in ports},
            }
        }
        digest = await self.images.push_image(f"{repo}:latest", config, [uuid.uuid4().bytes])
        return f"{repo}@{digest}"

    # ------------------------------------------------------------------ Korifi's standard setup
    async def standard(self) -> None:
        await create_space(
            self.client, self.namespace, "https://index.docker.io/v1/", service_account=SERVICE_ACCOUNT
        )
        await self.cluster_builder()

    def workload_body(self, name: str | None = None, *, source: str = "PACKAGE_IMAGE", **spec: Any) -> Obj:
        name = name or f"build-workload-{uuid.uuid4().hex[:8]}"
        return {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {k.APP_GUID_LABEL: APP_GUID}},
            "spec": {
                "buildRef": {"name": name},
                "source": {"registry": {"image": source, "imagePullSecrets": [{"name": PULL_SECRET}]}},
                "env": [
                    {
                        "name": "VCAP_SERVICES",
                        "valueFrom": {
                            "secretKeyRef": {"name": "some-vcap-services-secret", "key": "VCAP_SERVICES"}
                        },
                    }
                ],
                "services": [{"kind": "Secret", "name": "some-services-secret", "apiVersion": "v1"}],
                "builderName": k.BUILDER_NAME,
                **spec,
            },
        }

    async def create_workload(self, body: Obj) -> Obj:
        return await self.create(r.BUILD_WORKLOAD, copy.deepcopy(body))


@pytest.fixture
async def env(request: pytest.FixtureRequest, target: Target) -> AsyncIterator[Env]:
    """The controllers on the target cluster (the emulator, or ``TEST_KUBECONFIG``'s), an in-process
    registry, and Korifi's standard setup in a namespace of the test's own (deleted afterwards on another
    cluster). ``@pytest.mark.reconcile_timeout(s)`` gives the manager a reconcile timeout,
    ``@pytest.mark.readiness_timeout(s)`` another ``builderReadinessTimeout``."""
    marker = request.node.get_closest_marker("reconcile_timeout")
    timeout = float(marker.args[0]) if marker else None
    readiness = request.node.get_closest_marker("readiness_timeout")
    config = service_config(
        cluster_builder_name=f"cluster-builder-{uuid.uuid4().hex[:6]}",
        builder_service_account=SERVICE_ACCOUNT,
        builder_readiness_timeout=float(readiness.args[0]) if readiness else READINESS_TIMEOUT,
        container_repository_prefix=PREFIX,
        build_cache_mb=1024,
        disk_mb=2048,
        memory_mb=1234,
        cf_root_namespace=f"cf-{uuid.uuid4().hex[:6]}",
        reconcile_timeout=timeout or 0.0,
    )
    settings = config.builder_settings()
    async with (
        running_registry() as registry,
        KubeClient(target.cluster, timeout=5.0) as client,
        KubeClient(target.service, timeout=5.0) as manager_client,
        RegistryClient(timeout=5.0) as images,
    ):
        repositories = RecordingRepositories()
        async with running_controllers(manager_client, config, images, repositories) as manager:
            environment = Env(target.emulator, client, registry, images, manager, settings, repositories)
            await environment.standard()
            try:
                yield environment
            finally:
                if target.emulator is None:  # another cluster outlives the test: leave it as found
                    with anyio.CancelScope(shield=True):
                        await _forget(client, r.NAMESPACE, environment.namespace)
                        await _forget(client, r.NAMESPACE, settings.cf_root_namespace)
                        await _forget(client, r.CLUSTER_BUILDER, settings.cluster_builder_name)
                        for resource, name in environment.cluster_scoped:
                            await _forget(client, resource, name)


async def _forget(client: KubeClient, resource: r.Resource, name: str) -> None:
    with contextlib.suppress(errors.NotFound):
        await client.delete(resource, name)


def service_config(**settings: object) -> Config:
    """The service's configuration for a test: no metrics or probe servers, these settings over the
    defaults (field names of ``Config``)."""
    return replace(Config(), metrics_bind_address="0", health_probe_bind_address="0", **settings)  # type: ignore[arg-type]


@asynccontextmanager
async def running_controllers(
    client: KubeClient,
    config: Config,
    images: RegistryClient,
    repositories: RecordingRepositories | None = None,
) -> AsyncIterator[Manager]:
    """The service as ``run`` assembles it (``service.app.assemble``), on this client, for the block."""
    manager = assemble(config, client, images, repositories=repositories)
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.run)
        yield manager
        manager.shutdown()


# ---------------------------------------------------------------------------------------- with the kpack simulator
@dataclass
class KpackCluster:
    """A cluster with the kpack simulator playing kpack (its webhooks judge every write, its builds push
    to ``registry``): a space to work in, the root namespace with the BuilderInfo, the default
    ClusterBuilder, and the identity the service under test speaks as."""

    client: KubeClient  # the test's own (an administrator)
    registry: RunningRegistry
    kpack: KpackSimulator
    space: str
    root: str
    cluster_builder: str
    identity: ClusterConfig  # the service's

    def config(self, **settings: Any) -> Config:
        """The service's configuration for this cluster, ``settings`` over it."""
        return service_config(
            **{
                "builder_service_account": SERVICE_ACCOUNT_OF_SPACES,
                "container_repository_prefix": f"{self.registry.host}/cf/",
                "cf_root_namespace": self.root,
                "cluster_builder_name": self.cluster_builder,
                **settings,
            }
        )

    @asynccontextmanager
    async def service(self, **settings: Any) -> AsyncIterator[Manager]:
        """The service, configured with ``settings`` (``Config`` field names), for the block."""
        async with (
            KubeClient(self.identity, timeout=5.0) as client,
            RegistryClient(timeout=5.0) as images,
            running_controllers(client, self.config(**settings), images) as manager,
        ):
            yield manager


@pytest.fixture
async def kpack_cluster(target: Target) -> AsyncIterator[KpackCluster]:
    """On the emulator (``target``'s, the default), the simulator inside it as ``devcluster --kpack`` runs
    it, its defaults seeded; on another cluster (``TEST_KUBECONFIG``), the simulator against it with real
    admission webhooks, and the defaults under names of this test's (``tests/kpack_world.py``)."""
    options = KpackOptions(build_seconds=0.05)
    if target.emulator is not None:
        api = target.emulator
        async with (
            running_registry(host=api.host) as registry,
            running_kpack(api, replace(options, registry=registry.host), seed=True) as simulator,
            KubeClient(target.cluster, timeout=5.0) as client,
        ):
            await create_space(client, "space", registry.host)
            yield KpackCluster(client, registry, simulator, "space", "cf", CLUSTER_BUILDER, target.service)
        return
    async with (
        running_registry() as registry,
        KubeClient(target.cluster, timeout=5.0) as client,
    ):
        world = isolated(registry.host, uuid.uuid4().hex[:6])
        try:
            await world.create(client)
            async with running_kpack_on_cluster(client, replace(options, registry=registry.host)) as kpack:
                await create_space(client, world.spaces[0], registry.host)
                yield KpackCluster(
                    client,
                    registry,
                    kpack.simulator,
                    world.spaces[0],
                    world.root,
                    world.cluster_builder,
                    target.service,
                )
        finally:
            with anyio.CancelScope(shield=True):
                await world.remove(client)
