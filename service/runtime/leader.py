"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's algorithm.

- A candidate judges the lease by its own clock: the holder's lease is valid while the record it last
  saw changed less than ``leaseDurationSeconds`` ago (never by comparing ``renewTime`` to the local
  clock, so clock skew between nodes does not matter).
- Every write sends back the resourceVersion last read: two candidates cannot both win (409 Conflict).
- The leader renews every retry period, and only a lease whose holder is itself: a renewal is never
  built from a Lease object another replica wrote (that would take a validly held lease back).
- The leader has lost the lease (``LeadershipLost``, stop work at once) as soon as it reads another
  holder, or when its renew deadline has passed since the *start* of its last successful renewal. Time
  counts while the process is frozen (SIGSTOP, a paused VM, a stalled event loop): a leader that resumes
  after its deadline steps down before trying again, and a write answered after the freeze does not
  count as fresh, since the others measured the lease from when it was written.
- On a clean shutdown the leader releases the lease (empty holder, 1 s duration) so that a successor
  takes over at its next retry instead of waiting out the lease.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.resources import LEASE
from service.kube.timestamps import micro_time
from service.runtime.clock import REAL_CLOCK, Clock
from service.runtime.metrics import RuntimeMetrics

log = logging.getLogger("service.runtime.leader")

Obj = dict[str, Any]
JITTER = 1.2


class LeadershipLost(Exception):
    """The lease could not be renewed within the renew deadline."""


@dataclass(frozen=True)
class LeaderElectionConfig:
    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > JITTER * self.retry_period > 0:
            raise ValueError(
                "leader election needs lease duration > renew deadline > 1.2 x retry period > 0, got "
                f"{self.lease_duration} / {self.renew_deadline} / {self.retry_period}"
            )
        if not self.namespace:
            raise ValueError("leader election needs a namespace for its lease")


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        config: LeaderElectionConfig,
        *,
        metrics: RuntimeMetrics | None = None,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        self.client = client
        self.config = config
        self.clock = clock
        self._gauge = metrics.leader.labels(config.name) if metrics else None
        if self._gauge:
            self._gauge.set(0)
        self._lease: Obj | None = None  # the last Lease read or written
        self._observed_spec: Obj | None = None
        self._observed_at = 0.0
        self.leading = False
        self.last_renewal = 0.0  # on the clock, when the lease was last written by us
        self.current_holder = ""
        self.attempts = 0

    # --------------------------------------------------------------- public
    async def acquire(self) -> None:
        """Try every retry period (jittered) until this candidate holds the lease."""
        log.info(
            "attempting to acquire leader lease",
            extra={"lease": f"{self.config.namespace}/{self.config.name}", "identity": self.config.identity},
        )
        while True:
            if await self._try_acquire_or_renew():
                break
            await anyio.sleep(self.config.retry_period * (1 + random.random() * JITTER))
        self._set_leading(True)
        log.info(
            "successfully acquired lease", extra={"lease": self.config.name, "identity": self.config.identity}
        )

    async def hold(self) -> None:
        """Renew the lease until cancelled; raises ``LeadershipLost`` when the renew deadline passes or
        another replica holds the lease."""
        cfg = self.config
        while True:
            await self.clock.sleep_until(self.clock.now() + cfg.retry_period)
            while True:
                # The deadline counts from the last renewal, not from this attempt: after a freeze it may
                # have passed already, and then trying again could only take the lease from a successor.
                remaining = self.last_renewal + cfg.renew_deadline - self.clock.now()
                if remaining <= 0:
                    self._lose(f"lease {cfg.name} not renewed within the renew deadline")
                renewed = False
                with anyio.move_on_after(remaining):
                    renewed = await self._try_acquire_or_renew()
                if renewed:
                    break
                if self.current_holder and self.current_holder != cfg.identity:
                    self._lose(f"lease {cfg.name} is held by {self.current_holder}")
                remaining = self.last_renewal + cfg.renew_deadline - self.clock.now()
                await self.clock.sleep_until(self.clock.now() + max(0.0, min(cfg.retry_period, remaining)))

    def _lose(self, why: str) -> NoReturn:
        self._set_leading(False)
        log.error("leader election lost: %s", why, extra={"lease": self.config.name})
        raise LeadershipLost(f"leader election lost: {why}")

    async def release(self) -> None:
        """Give the lease up (if still ours) so that a successor need not wait for it to expire."""
        if not self.leading:
            return
        self._set_leading(False)
        with anyio.move_on_after(self.config.renew_deadline):
            while True:
                try:
                    lease = await self.client.get(LEASE, self.config.name, self.config.namespace)
                    spec = lease.get("spec") or {}
                    if spec.get("holderIdentity") != self.config.identity:
                        return
                    now = micro_time()
                    lease["spec"] = {
                        **spec,
                        "holderIdentity": "",
                        "leaseDurationSeconds": 1,
                        "acquireTime": now,
                        "renewTime": now,
                    }
                    await self.client.update(LEASE, lease)
                    log.info("released leader lease", extra={"lease": self.config.name})
                    return
                except errors.Conflict:
                    continue
                except errors.ApiError as exc:
                    log.warning("could not release lease: %s", exc, extra={"lease": self.config.name})
                    await anyio.sleep(self.config.retry_period)

    def valid(self) -> bool:
        """Whether this replica leads on a lease renewed within the renew deadline, by the clock now: what
        the renewal loop would conclude, known before that loop gets to run after a freeze."""
        return self.leading and self.clock.now() - self.last_renewal < self.config.renew_deadline

    def healthy(self, tolerance: float = 0.0) -> bool:
        """False when this replica thinks it leads but has not renewed for a whole lease duration."""
        if not self.leading:
            return True
        return self.clock.now() - self.last_renewal <= self.config.lease_duration + tolerance

    # --------------------------------------------------------------- the algorithm
    def _set_leading(self, leading: bool) -> None:
        self.leading = leading
        if self._gauge:
            self._gauge.set(1 if leading else 0)

    def _spec(self, previous: Obj | None, now: str) -> Obj:
        """The record to write: renewal keeps acquireTime and transitions, a takeover counts one more."""
        prev = previous or {}
        mine = prev.get("holderIdentity") == self.config.identity
        transitions = int(prev.get("leaseTransitions") or 0)
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": int(self.config.lease_duration),
            "acquireTime": prev.get("acquireTime", now) if mine else now,
            "renewTime": now,
            "leaseTransitions": transitions if mine else transitions + 1,
        }

    async def _try_acquire_or_renew(self) -> bool:
        self.attempts += 1
        try:
            return await self._attempt()
        except errors.ApiError as exc:
            log.info("lease attempt failed: %s", exc, extra={"lease": self.config.name})
            return False

    async def _attempt(self) -> bool:
        now = micro_time()
        started = self.clock.now()
        cfg = self.config
        # Fast path: the last Lease we read or wrote names us and is still valid: renew on that object.
        # Never on one another replica wrote: its resourceVersion is current, so the write would succeed
        # and take the lease back from a successor that holds it validly.
        if self.leading and self._lease is not None and self._held_by_me(self._lease) and self._valid():
            lease = {**self._lease, "spec": self._spec(self._lease.get("spec"), now)}
            try:
                self._remember(await self.client.update(LEASE, lease), renewed_at=started)
                return True
            except errors.ApiError:
                pass  # someone else wrote it: take the slow path
        try:
            lease = await self.client.get(LEASE, cfg.name, cfg.namespace)
        except errors.NotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                "spec": {**self._spec(None, now), "leaseTransitions": 0},  # a new lease, not a takeover
            }
            try:
                self._remember(await self.client.create(LEASE, body), renewed_at=started)
            except errors.AlreadyExists:
                return False
            return True
        spec = lease.get("spec") or {}
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_at = self.clock.now()
        self._lease = lease
        holder = spec.get("holderIdentity") or ""
        if holder != self.current_holder:
            self.current_holder = holder
            log.info("new leader observed", extra={"lease": cfg.name, "holder": holder or "(none)"})
        if holder and holder != cfg.identity and (self._valid() or self.leading):
            # Another holder's valid lease is not ours to take; and if we led, it took over from us: ``hold``
            # steps down, and must not take the lease back even once that record looks stale.
            return False
        update = {**lease, "spec": self._spec(spec, now)}
        try:
            self._remember(await self.client.update(LEASE, update), renewed_at=started)
        except errors.Conflict:
            return False
        return True

    def _held_by_me(self, lease: Obj) -> bool:
        return bool((lease.get("spec") or {}).get("holderIdentity") == self.config.identity)

    def _valid(self) -> bool:
        spec = self._observed_spec or {}
        duration = float(spec.get("leaseDurationSeconds") or 0)
        return self._observed_at + duration > self.clock.now()

    def _remember(self, lease: Obj, *, renewed_at: float) -> None:
        """A Lease we wrote; the renewal counts from ``renewed_at``, when the write was sent."""
        self._lease = lease
        self._observed_spec = lease.get("spec") or {}
        self._observed_at = renewed_at
        self.current_holder = self._observed_spec.get("holderIdentity") or ""
        self.last_renewal = renewed_at


def default_identity() -> str:
    """``POD_NAME`` (else the hostname) and a random suffix, so that a restarted pod is a new candidate."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4()}"
