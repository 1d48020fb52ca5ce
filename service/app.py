"""``kpack-image-builder run``: the service, wired from its configuration.

Configuration → cluster connection → manager (informers, controllers, leader election, sidecar) → run
until SIGTERM/SIGINT. A second signal exits at once with status 1, as controller-runtime's handler does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry

from service import __version__
from service.config import Config, ConfigError, require_builder_settings
from service.kube import config as kube_config
from service.kube.client import KubeClient
from service.kube.config import ClusterConfig
from service.kube.metrics import RestClientMetrics
from service.observability import BuildMetrics, ClockCollector
from service.reconcilers.buildworkload.observed import waiting_workloads
from service.reconcilers.images import RegistryImages, RepositoryCreator
from service.reconcilers.wiring import add_controllers
from service.registry.client import RegistryClient
from service.registry.metrics import RegistryMetrics
from service.runtime.events import RECORDED_TYPES
from service.runtime.leader import LeaderElectionConfig, default_identity
from service.runtime.manager import Manager, ManagerOptions
from service.runtime.metrics import new_registry
from service.runtime.metrics_auth import server_tls
from service.runtime.sidecar import BindAddress

log = logging.getLogger("service.app")

COMPONENT = "kpack-image-builder"


@dataclass(frozen=True)
class ServiceMetrics:
    """The service's one ``CollectorRegistry`` with its clients' metrics on it; the manager adds the
    runtime's, ``assemble`` the domain's."""

    registry: CollectorRegistry
    rest: RestClientMetrics
    images: RegistryMetrics


def service_metrics() -> ServiceMetrics:
    registry = new_registry()
    return ServiceMetrics(registry, RestClientMetrics(registry), RegistryMetrics(registry))


def manager_options(config: Config, identity: str, pod_namespace: str | None) -> ManagerOptions:
    election = None
    if config.leader_elect:
        namespace = config.leader_election_namespace or pod_namespace
        if not namespace:
            raise ConfigError(
                "leaderElectionNamespace: required outside a cluster (no service-account namespace file); "
                "set --leader-election-namespace"
            )
        election = LeaderElectionConfig(
            config.leader_election_id,
            namespace,
            identity,
            config.lease_duration,
            config.renew_deadline,
            config.retry_period,
        )
    tls = None
    if config.metrics_secure and config.metrics_cert_dir:
        try:
            tls = server_tls(config.metrics_cert_dir)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"metricsCertDir: cannot load tls.crt and tls.key: {exc}") from None
    return ManagerOptions(
        name=COMPONENT,
        namespaces=config.namespaces,
        metrics_address=BindAddress.parse(config.metrics_bind_address),
        probe_address=BindAddress.parse(config.health_probe_bind_address),
        graceful_shutdown_timeout=config.graceful_shutdown_timeout,
        leader_election=election,
        workers=config.workers,
        event_types=RECORDED_TYPES[config.events],
        rate_limiter=config.rate_limiter,
        reconcile_timeout=config.reconcile_timeout or None,
        sync_period=config.sync_period,
        instance=identity,
        metrics_tls=tls,
        metrics_authorized=config.metrics_secure,
    )


def assemble(
    config: Config,
    client: KubeClient,
    registry: RegistryClient,
    *,
    options: ManagerOptions | None = None,
    leader_client: KubeClient | None = None,
    metrics: CollectorRegistry | None = None,
    repositories: RepositoryCreator | None = None,
) -> Manager:
    """The service on a manager, from its configuration: the one composition root, which ``run``, the
    demo and the tests all use. Nothing runs until ``Manager.run``. ``options`` default to the
    configuration's, for a new identity outside a pod. The domain metrics (``service.observability``) go
    on the manager's registry; the registry client's are the caller's (``serve_cluster``)."""
    options = options or manager_options(config, default_identity(), None)
    manager = Manager(client, options, registry=metrics, leader_client=leader_client)
    controllers = add_controllers(
        manager,
        config.builder_settings(),
        RegistryImages(registry),
        repositories,
        registry_concurrency=config.registry_concurrency,
    )
    caches = controllers.buildworkload.caches
    controllers.buildworkload.metrics = BuildMetrics(manager.registry, lambda: waiting_workloads(caches))
    # The client's view of the server's clock, which the domain's limits are counted by.
    manager.registry.register(ClockCollector())
    return manager


async def _handle_signals(manager: Manager) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if manager.shutdown_requested:
                log.error("second signal: exiting at once", extra={"signal": signal.Signals(signum).name})
                os._exit(1)
            log.info("shutting down", extra={"signal": signal.Signals(signum).name})
            manager.shutdown()


async def serve(config: Config, *, task_status: TaskStatus[Manager] = anyio.TASK_STATUS_IGNORED) -> int:
    """Run the service until a signal stops it; returns the exit code."""
    require_builder_settings(config)
    cluster = await kube_config.load(config.kubeconfig)
    return await serve_cluster(cluster, config, task_status=task_status)


async def serve_cluster(
    cluster: ClusterConfig, config: Config, *, task_status: TaskStatus[Manager] = anyio.TASK_STATUS_IGNORED
) -> int:
    """Run the service against ``cluster`` until a signal (or ``Manager.shutdown``) stops it."""
    require_builder_settings(config)
    identity = default_identity()
    # Before any connection: a configuration error stops us here.
    options = manager_options(config, identity, kube_config.incluster_namespace())
    metrics = service_metrics()
    agent = f"{COMPONENT}/{__version__}"
    # Leader election has its own client, as controller-runtime's: short timeouts (half the renew
    # deadline) and no throttling behind a burst of controller requests.
    le_timeout = max(config.renew_deadline / 2, 1.0)
    async with (
        KubeClient(
            cluster,
            qps=config.kube_api_qps,
            burst=config.kube_api_burst,
            metrics=metrics.rest,
            user_agent=agent,
        ) as client,
        KubeClient(cluster, qps=0, metrics=metrics.rest, timeout=le_timeout, user_agent=agent) as le_client,
        RegistryClient(
            insecure_registries=config.insecure_registries,
            timeout=config.registry_timeout,
            user_agent=agent,
            metrics=metrics.images,
        ) as images,
    ):
        manager = assemble(
            config,
            client,
            images,
            options=options,
            leader_client=le_client,
            metrics=metrics.registry,
        )
        log.info(
            "starting",
            extra={
                "version": __version__,
                "identity": identity,
                "apiServer": cluster.host,
                "leaderElection": options.leader_election is not None,
                # What runs, not what was asked for: "uvloop" or "asyncio".
                "eventLoop": type(asyncio.get_running_loop()).__module__.partition(".")[0],
            },
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_handle_signals, manager)
            task_status.started(manager)
            code = await manager.run()
            tg.cancel_scope.cancel()
    return code
