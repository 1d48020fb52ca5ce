"""The manager: owns informers, controllers, leader election, the event recorder and the sidecar, and the
order in which they start and stop — all in one anyio task group.

Start: sidecar (probes answer at once, not ready) → informers and runnables added with
``needs_leader=False`` on every replica (warm standby; ready once synced) → leader election, if enabled
→ runnables that need the leader (e.g. background I/O pools) and controllers' workers, only while leading.

Stop (``shutdown``, e.g. on SIGTERM): readiness goes false; controllers stop taking work and in-flight
reconciles get up to the graceful-shutdown timeout to finish; the Events they recorded are written (up to
``EVENT_DRAIN_TIMEOUT``); informers stop; the lease is released so
that a standby takes over at once; the sidecar stops last. ``run`` returns the exit code: 0 for a clean
stop; 1 when the lease was lost (workers are cancelled at once: another replica may already be running
them), when a component died, or when in-flight work overran the timeout.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry

from service.kube.client import KubeClient
from service.runtime.builder import Builder
from service.runtime.clock import REAL_CLOCK, Clock
from service.runtime.controller import Controller
from service.runtime.events import RECORDED_TYPES, EventRecorder
from service.runtime.informer import InformerFactory
from service.runtime.leader import LeaderElectionConfig, LeaderElector, LeadershipLost
from service.runtime.metrics import EventMetrics, RuntimeMetrics, new_registry
from service.runtime.metrics_auth import DelegatedAuth
from service.runtime.ratelimiters import default_rate_limiter
from service.runtime.reconcile import Reconcile
from service.runtime.sidecar import BindAddress, Checks, LoopMonitor, Sidecar

log = logging.getLogger("service.runtime.manager")

# On shutdown, how long queued Events may take to be written once the controllers have stopped (a
# leader that lost its Lease does not wait: it stops at once).
EVENT_DRAIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class ManagerOptions:
    name: str = "manager"  # the component name in Events
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    label_selectors: Mapping[str, str] = field(default_factory=dict)  # plural.group -> the cache's selector
    metrics_address: BindAddress | None = field(default_factory=lambda: BindAddress(None, 8080))
    probe_address: BindAddress | None = field(default_factory=lambda: BindAddress(None, 8081))
    graceful_shutdown_timeout: float = 30.0  # negative: wait for ever
    leader_election: LeaderElectionConfig | None = None
    workers: int = 1
    rate_limiter: str = "controller-runtime"
    reconcile_timeout: float | None = None
    sync_period: float = 0.0  # informer resync; 0: none
    instance: str = ""  # this replica's identity in Events
    event_types: tuple[str, ...] = RECORDED_TYPES["all"]  # the Event types recorded (runtime.events)
    # Secure metrics: HTTPS with this context, every scrape authenticated and authorized by the API server
    # (service.runtime.metrics_auth).
    metrics_tls: ssl.SSLContext | None = None
    metrics_authorized: bool = False


class Manager:
    def __init__(
        self,
        client: KubeClient,
        options: ManagerOptions,
        *,
        registry: CollectorRegistry | None = None,
        leader_client: KubeClient | None = None,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        self.client = client
        self.options = options
        self.clock = clock
        self.registry = registry or new_registry()
        self.metrics = RuntimeMetrics(self.registry)
        self.informers = InformerFactory(
            client,
            clock=clock,
            resync_period=options.sync_period,
            namespaces=options.namespaces,
            label_selectors=options.label_selectors,
        )
        self.events = EventRecorder(
            client,
            options.name,
            options.instance,
            metrics=EventMetrics(self.registry),
            types=options.event_types,
        )
        self.controllers: list[Controller] = []
        self.runnables: list[tuple[str, Callable[[], Awaitable[object]], bool]] = []
        self.elector = (
            LeaderElector(leader_client or client, options.leader_election, metrics=self.metrics, clock=clock)
            if options.leader_election
            else None
        )
        self.loop_monitor = LoopMonitor()
        self.healthz = Checks("/healthz")
        self.readyz = Checks("/readyz")
        self.sidecar = Sidecar(
            self.registry,
            self.healthz,
            self.readyz,
            options.metrics_address,
            options.probe_address,
            metrics_tls=options.metrics_tls,
            metrics_middleware=DelegatedAuth(client).middleware if options.metrics_authorized else None,
        )
        self.dead: dict[str, str] = {}
        self.stopping = False
        self.leading = anyio.Event()
        self.lost_lease = False
        self._shutdown = anyio.Event()
        self._register_checks()

    # --------------------------------------------------------------- wiring
    def _register_checks(self) -> None:
        self.healthz.add("ping", lambda: None)
        self.healthz.add("components", self._components_alive)
        self.healthz.add("event-loop", self.loop_monitor.check)
        if self.elector is not None:
            elector = self.elector
            self.healthz.add(
                "leader-election",
                lambda: (
                    None
                    if elector.healthy(tolerance=elector.config.renew_deadline)
                    else "this replica leads but has not renewed its lease for longer than a lease duration"
                ),
            )
        self.readyz.add("informers-synced", self._informers_synced)
        self.readyz.add("shutdown", lambda: "shutting down" if self.stopping else None)

    def _components_alive(self) -> str | None:
        return "; ".join(f"{name}: {why}" for name, why in self.dead.items()) or None

    def _informers_synced(self) -> str | None:
        unsynced = self.informers.unsynced()
        if not self.informers.informers:
            return "no informers started yet"
        return f"not synced: {', '.join(unsynced)}" if unsynced else None

    def controller(self, name: str) -> Builder:
        """Declare a controller: ``manager.controller(name).for_(...).owns(...).complete(reconcile)``."""
        return Builder(self, name)

    def new_controller(self, name: str, reconcile: Reconcile, *, workers: int | None = None) -> Controller:
        """A controller with the manager's defaults (workers, rate limiter, reconcile timeout, metrics)."""
        if any(c.name == name for c in self.controllers):
            raise ValueError(
                f"controller {name!r} already exists: names label every metric and must be unique"
            )
        controller = Controller(
            name,
            reconcile,
            max_concurrent=workers or self.options.workers,
            rate_limiter=default_rate_limiter(self.options.rate_limiter, clock=self.clock),
            reconcile_timeout=self.options.reconcile_timeout,
            metrics=self.metrics,
            clock=self.clock,
        )
        if self.elector is not None:
            controller.gate = self.elector.valid
        self.controllers.append(controller)
        return controller

    def add(self, name: str, run: Callable[[], Awaitable[object]], *, needs_leader: bool = True) -> None:
        """A component that runs until cancelled: on every replica, or only while this one leads (then it
        starts before the controllers and stops after them, so in-flight reconciles can still use it)."""
        self.runnables.append((name, run, needs_leader))

    # --------------------------------------------------------------- lifecycle
    def shutdown(self) -> None:
        """Begin a graceful stop (idempotent)."""
        self._shutdown.set()

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown.is_set()

    async def _guard(self, component: str, run: Callable[[], Awaitable[object]]) -> None:
        """Run a component; an unexpected end marks it dead (``/healthz`` fails) and stops the manager."""
        try:
            await run()
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            log.exception("component died", extra={"component": component})
            self.dead[component] = f"{type(exc).__name__}: {exc}"
            self.shutdown()
            return
        if not self._shutdown.is_set():
            self.dead[component] = "stopped unexpectedly"
            log.error("component stopped unexpectedly", extra={"component": component})
            self.shutdown()

    async def _hold_lease(self) -> None:
        assert self.elector is not None
        try:
            await self.elector.hold()
        except LeadershipLost as exc:
            log.error("%s", exc)
            self.lost_lease = True
            self.shutdown()

    async def run(self, *, task_status: TaskStatus[dict[str, int]] = anyio.TASK_STATUS_IGNORED) -> int:
        """Run until ``shutdown``; returns the process exit code. ``task_status`` gets the bound ports.

        The sidecar listens before anything else starts, so an address it cannot have (``ListenError``)
        stops the manager before it has sent a request to the API server."""
        exit_code = 0
        try:
            async with self.sidecar.serving() as ports, anyio.create_task_group() as background:
                background.start_soon(self._guard, "event-loop monitor", self.loop_monitor.run)
                background.start_soon(self._guard, "event recorder", self.events.run)
                background.start_soon(self._guard, "informers", self.informers.run)
                for name, runnable, needs_leader in self.runnables:
                    if not needs_leader:
                        background.start_soon(self._guard, name, runnable)
                task_status.started(ports)
                if await self._lead():
                    exit_code = await self._run_controllers()
                self.stopping = True
                if not self.lost_lease:
                    with anyio.move_on_after(EVENT_DRAIN_TIMEOUT):
                        await self.events.drain()
                background.cancel_scope.cancel()
        finally:
            self.events.close()
        if self.elector is not None and not self.lost_lease:
            with anyio.CancelScope(shield=True):
                await self.elector.release()
        if self.lost_lease or self.dead:
            exit_code = 1
        log.info("manager stopped", extra={"exitCode": exit_code})
        return exit_code

    async def _lead(self) -> bool:
        """Become leader (at once without leader election); False if shutdown came first."""
        if self.elector is not None:
            async with anyio.create_task_group() as tg:

                async def acquire() -> None:
                    assert self.elector is not None
                    await self.elector.acquire()
                    tg.cancel_scope.cancel()

                tg.start_soon(acquire)
                await self._shutdown.wait()
                tg.cancel_scope.cancel()
            if not self.elector.leading:
                return False
        self.leading.set()
        return True

    async def _run_controllers(self) -> int:
        exit_code = 0
        async with anyio.create_task_group() as tg:
            for name, runnable, needs_leader in self.runnables:
                if needs_leader:
                    tg.start_soon(self._guard, name, runnable)
            for controller in self.controllers:
                tg.start_soon(self._guard, f"controller {controller.name}", controller.run)
            if self.elector is not None:
                tg.start_soon(self._hold_lease)
            await self._shutdown.wait()
            self.stopping = True
            grace = 0.0 if self.lost_lease else self.options.graceful_shutdown_timeout
            if grace < 0:
                grace = float("inf")
            log.info("stopping controllers", extra={"gracePeriodSeconds": grace})
            finished: list[bool] = []

            async def stop(controller: Controller) -> None:
                finished.append(await controller.stop(grace))

            async with anyio.create_task_group() as stoppers:
                for controller in self.controllers:
                    stoppers.start_soon(stop, controller)
            if not all(finished) and not self.lost_lease:
                log.error(
                    "failed waiting for all runnables to end within grace period",
                    extra={"gracePeriodSeconds": grace},
                )
                exit_code = 1
            tg.cancel_scope.cancel()
        return exit_code
