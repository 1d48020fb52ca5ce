"""The reconcile skeleton: fetch the workload from the cache → run its phase on a copy → store what
changed → record the pass's Events. The phase is decided from the ``Succeeded`` condition: none yet →
``begin``; ``Unknown`` → ``track``; ``True``/``False`` → done, but for the droplet following kpack's stack
updates (``stack_updates``); being deleted → ``finalize``.

How a pass ends: ``Ready=True`` when it went through; ``Ready=False`` with the reason when it failed (an
API or registry error, retried with backoff) or waits for another actor (``Waiting``: polled, not an
error); a 409 is retried from fresh state without a word; a workload deleted meanwhile (404 on the write)
ends the pass quietly. Out of time (the reconcile's deadline), the phase stops and the pass still writes
why. Writes are merge patches guarded by the cached resourceVersion, metadata first, then status, each
only if it changed.
"""

from __future__ import annotations

import copy
import logging

import anyio

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.conditions import find, set_condition
from service.kube.objects import add_finalizer, generation, is_deleting, meta
from service.kube.patches import merge_diff
from service.kube.resources import BUILD_WORKLOAD, SECRET
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload.attempt import Failure, Pass, Waiting, completed, conditions, is_ours
from service.reconcilers.buildworkload.begin import Begin
from service.reconcilers.buildworkload.caches import Caches
from service.reconcilers.buildworkload.finalize import Finalize
from service.reconcilers.buildworkload.observed import BuildMetrics, NoMetrics, observe
from service.reconcilers.buildworkload.siblings import Siblings
from service.reconcilers.buildworkload.stack_updates import StackUpdates
from service.reconcilers.buildworkload.track import Track
from service.reconcilers.droplet import DropletError
from service.reconcilers.images import ImageConfigReader, NoRepositoryCreator, RepositoryCreator
from service.reconcilers.settings import BuilderSettings
from service.runtime import Controller, Manager, Obj, Offload, Request, Result, TTLReads, current

log = logging.getLogger("service.reconcilers.buildworkload")

CACHE_CATCH_UP = 1.0  # seconds: a pass the cache is not ready for is looked at again at the latest then


class BuildWorkloadReconciler:
    def __init__(
        self,
        manager: Manager,
        settings: BuilderSettings,
        images: ImageConfigReader,
        offload: Offload,
        repositories: RepositoryCreator | None = None,
    ) -> None:
        self.client: KubeClient = manager.client
        self.settings = settings
        self.events = manager.events
        self.metrics: BuildMetrics = NoMetrics()  # the composition hands in the real one (service.app)
        self.controller: Controller | None = None  # set by ``register``: registry reads wake through it
        # Per workload, the resourceVersions its last writes replaced (metadata, then status: two), while
        # the cache may still show one of them.
        self._replaced: dict[tuple[str, str], tuple[str | None, ...]] = {}
        secrets = TTLReads(self.client, SECRET, settings.registry_secret_cache_ttl)
        self.caches = Caches(manager.informers, settings.builder_service_account, secrets)
        self.begin = Begin(
            self.client, settings, self.caches, repositories or NoRepositoryCreator(), self.events
        )
        siblings = Siblings(self.client, self.caches, self.events)
        self.track = Track(
            self.client,
            settings,
            self.caches,
            siblings,
            images,
            offload,
            self._wake,
            remake_builder=self.begin._ensure_custom_builder,
            begin_again=self.begin,
        )
        self.stack_updates = StackUpdates(self.caches, self.track.droplet)
        self.finalize = Finalize(self.client, self.caches)

    def _wake(self, request: Request) -> None:
        if self.controller is not None:
            self.controller.enqueue(request)

    async def reconcile(self, request: Request) -> Result | None:
        cached = self.caches.workloads.get(request.namespace, request.name)
        if cached is None or not is_ours(cached):
            self._replaced.pop((request.namespace, request.name), None)
            return None
        key = (request.namespace, request.name)
        if cached["metadata"].get("resourceVersion") in self._replaced.get(key, ()):
            # The cache has not seen this service's own last write yet: a pass now would work from the
            # state before it and its write would conflict. The write's watch event brings the key back;
            # the requeue is only a safety net should that event be late.
            return Result(requeue_after=CACHE_CATCH_UP)
        self._replaced.pop(key, None)
        # A second read is a second, independent copy (the cache decodes each read): the pass changes its
        # copy, and the writes are diffed against the cached one.
        fresh = self.caches.workloads.get(request.namespace, request.name)
        attempt = Pass(request, fresh if fresh is not None else copy.deepcopy(cached))
        result: Result | None = None
        failure: Exception | None = None
        context = current()
        try:
            # Out of time, the phase stops at the deadline and the pass still writes why: the controller
            # cancels only a grace period later. No deadline (the default), no cancel scope (one costs
            # some 6 us, a few percent of a pass).
            if context and context.deadline:
                with anyio.fail_after(context.remaining()):
                    result = await self._run_phase(attempt)
            else:
                result = await self._run_phase(attempt)
            ready = ("True", k.READY_REASON, k.READY_MESSAGE)
        except TimeoutError:
            ready = ("False", k.UNKNOWN_REASON, "the reconcile ran out of time (reconcileTimeout); retrying")
            failure = TimeoutError("the reconcile ran out of time")
        except errors.Conflict:
            raise  # the cache was behind a write: retried from fresh state, nothing to report
        except Waiting as exc:
            ready = ("False", k.UNKNOWN_REASON, str(exc))
            result = Result(requeue_after=attempt.wait_poll())
            log.info("build workload waits: %s", exc)
        except (errors.ApiError, DropletError, Failure) as exc:
            ready = (
                "False",
                k.UNKNOWN_REASON,
                str(exc) if not isinstance(exc, errors.ApiError) else exc.message,
            )
            failure = exc
        set_condition(conditions(attempt.work), k.READY, *ready, generation(cached))
        try:
            await self._store(cached, attempt.work)
        except errors.NotFound:
            return None  # deleted meanwhile: nothing is left to report on, and nothing to retry
        for type_, reason, message in attempt.events:
            self.events.record(attempt.work, type_, reason, message)
        observe(self.metrics, cached, attempt.work, attempt.events)
        if failure is not None:
            raise failure
        return result

    async def _run_phase(self, attempt: Pass) -> Result | None:
        work = attempt.work
        work.setdefault("status", {})["observedGeneration"] = generation(work)
        if is_deleting(work):
            return await self.finalize(attempt)
        add_finalizer(work, k.BUILD_WORKLOAD_FINALIZER)
        if completed(work):
            return await self.stack_updates(attempt)
        if find(conditions(work), k.SUCCEEDED) is None:
            await self.begin(attempt)
            return None
        return await self.track(attempt)

    async def _store(self, cached: Obj, work: Obj) -> None:
        """Persist metadata, then status, each only if it changed, each guarded by resourceVersion."""
        replaced = await self._write(cached, work)
        if replaced:
            key = (cached["metadata"].get("namespace", ""), cached["metadata"]["name"])
            self._replaced[key] = replaced  # see ``reconcile``

    async def _write(self, cached: Obj, work: Obj) -> tuple[str | None, ...]:
        """The resourceVersions the writes replaced (none: nothing was written)."""
        old, ns, name = cached["metadata"], cached["metadata"].get("namespace"), cached["metadata"]["name"]
        rv = old.get("resourceVersion")
        replaced: tuple[str | None, ...] = ()
        meta_patch: Obj = {}
        for field in ("labels", "annotations"):
            changed = merge_diff(old.get(field) or {}, meta(work).get(field) or {})
            if changed:
                meta_patch[field] = changed
        finalizers = meta(work).get("finalizers") or None
        if (old.get("finalizers") or None) != finalizers:
            meta_patch["finalizers"] = finalizers
        if meta_patch:
            written = await self.client.merge_patch(
                BUILD_WORKLOAD, name, {"metadata": {**meta_patch, "resourceVersion": rv}}, ns
            )
            replaced, rv = (rv,), written["metadata"].get("resourceVersion")
            if old.get("deletionTimestamp") and not written["metadata"].get("finalizers"):
                return replaced  # the last finalizer is gone, and with it the object: no status to write
        status_patch = merge_diff(cached.get("status") or {}, work.get("status") or {})
        if status_patch:
            await self.client.patch_status(
                BUILD_WORKLOAD,
                name,
                {"metadata": {"resourceVersion": rv}, "status": status_patch},
                ns,
                answer=False,
            )
            replaced = (*replaced, rv)
        return replaced
