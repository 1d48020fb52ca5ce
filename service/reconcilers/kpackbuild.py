"""The kpack Build controller: a Build made for a workload holds the ``korifi.cloudfoundry.org/kpackBuild``
finalizer until its droplet's tags are deleted from the registry (reference: korifi.md §4.1.5).

Korifi adds that finalizer with a fail-closed mutating webhook on every kpack Build in the cluster; here
this controller adds it to Builds carrying the ``build-workload-name`` label as soon as it sees them, so
that kpack keeps working when this service is down. A registry failure is logged and never holds the
deletion: a leaked image is cheaper than a Build that cannot be deleted.

A Build deleted while its pod runs is stopped first (``build_stop``: ``Succeeded=False``, reason
``BuildDeleted``, its pod deleted and confirmed gone): released at once, as Korifi does, its pod would be
collected with it, but a pod already exporting pushes its droplet meanwhile and nothing is left to delete
it. Once a Build this service stopped (deleted, canceled or timed out) is done, its ``latestImage`` is
empty whatever the pod managed to push, so the droplet is looked up by the Build's own build-number tag
(``b<N>.<date>.<time>``) and deleted from there. A pod killed between its push of the Image's tag and of
that one leaves the Image's tag behind: nothing names it as this Build's.

The registry deletion runs off the workers (``service.runtime.offload``): a registry that hangs holds the
Builds waiting for it, never the workers that release the others. Credentials come from the namespace's
builder service account, else from the root namespace's (``images.deletion_secrets``): when a whole space
is deleted, its Secrets go before its Builds let go.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.resources import BUILD
from service.kube.server_clock import server_now
from service.reconcilers import build_stop
from service.reconcilers import korifi as k
from service.reconcilers.images import ImageDeleter, deletion_secrets, registry_lane
from service.reconcilers.settings import BuilderSettings
from service.registry.reference import tag_of_build_tag, tags_of_build_tags, try_parse_reference
from service.runtime import Controller, Lister, Manager, Obj, Offload, Request, Result, changed, where

log = logging.getLogger("service.reconcilers.kpackbuild")

CONTROLLER = "kpackbuild"
SAFETY_REQUEUE = 60.0  # a Build whose droplet deletion runs in the background is looked at again
CACHE_CATCH_UP = 2.0  # seconds a finalizer written is awaited in the cache before it is written again
BUILD_NUMBER_TAG = re.compile(r"(?:^|-)b[0-9]+\.[0-9]{8}\.[0-9]{6}$")  # kpack.md §2.3
DELETED_MESSAGE = "stopped by kpack-image-builder: the Build is being deleted"


def build_number_tag(build: Obj) -> str | None:
    """The entry of ``spec.tags`` that kpack generated for this Build alone (none with
    ``imageTaggingStrategy: None``)."""
    for entry in (build.get("spec") or {}).get("tags") or ():
        tag = tag_of_build_tag(entry)
        if tag is not None and BUILD_NUMBER_TAG.search(tag):
            return str(entry)
    return None


def for_a_workload(build: Obj) -> bool:
    return k.BUILD_WORKLOAD_LABEL in (build.get("metadata", {}).get("labels") or {})


def wanted(build: Obj) -> bool:
    """Whether this controller has anything to do for a Build: add the finalizer to one made for a
    workload, or release a deleted one that holds it. ``reconcile`` and its event filter both ask this."""
    if not for_a_workload(build):
        return False
    meta = build.get("metadata", {})
    held = k.KPACK_BUILD_FINALIZER in (meta.get("finalizers") or ())
    return held if meta.get("deletionTimestamp") else not held


def acted_on(build: Obj) -> tuple[object, ...]:
    """What ``reconcile`` reads of a Build. An update brings it back only when this changed and the
    Build is ``wanted``: kpack's status writes to a running Build, and the finalizer's own arrival in the
    cache, were reconciles that did nothing (2.4 of the 3.4 per Build in benchmarks/converge.py). The image
    and tags matter only once the Build is deleted; the uid tells a Build made again under the same name.

    After a relist the filter sees only the cached object and the listed one, not the states between:
    should this controller's finalizer land, its event be lost with a broken watch, and someone remove the
    finalizer before the relist, both would look the same (controller-runtime's predicates have that gap).
    The informer therefore also delivers what a relist found changed as a resync, which ``changed`` passes."""
    meta = build.get("metadata", {})
    deleting = meta.get("deletionTimestamp")
    view: tuple[object, ...] = (meta.get("uid"), for_a_workload(build), deleting, meta.get("finalizers"))
    if deleting:
        view += ((build.get("status") or {}).get("latestImage"), (build.get("spec") or {}).get("tags"))
    return view


class KpackBuildReconciler:
    def __init__(
        self, manager: Manager, settings: BuilderSettings, images: ImageDeleter, offload: Offload
    ) -> None:
        self.client: KubeClient = manager.client
        self.settings = settings
        self.images = images
        self.offload = offload
        self.controller: Controller | None = None  # set by ``register``: deletions wake through it
        self.builds: Lister = manager.informers.lister(BUILD)
        # Builds whose finalizer this controller added and the cache does not show yet: by key, the Build's
        # uid and until when that is awaited. kpack writes a new Build's status at once, so its watch
        # event often arrives between the finalizer's write and that write's own event; a second patch
        # then would fail its test of the finalizers (a wasted request and a retry for ~40% of Builds).
        self._added: dict[tuple[str, str], tuple[str, float]] = {}
        self._clock = manager.clock

    async def reconcile(self, request: Request) -> Result | None:
        build = self.builds.get(request.namespace, request.name)
        key = (request.namespace, request.name)
        added = self._added.pop(key, None)
        if build is None or not wanted(build):
            return None
        meta = build["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if not meta.get("deletionTimestamp"):  # wanted: the finalizer is missing
            now = self._clock.now()
            if added is not None and added[0] == meta.get("uid") and now < added[1]:
                # The cache has not shown our write yet (an event of someone else's write came first);
                # the requeue is only a safety net.
                self._added[key] = added
                return Result(requeue_after=added[1] - now)
            if await self._set_finalizers(build, [*finalizers, k.KPACK_BUILD_FINALIZER]):
                self._forget_expired(now)
                self._added[key] = (str(meta.get("uid")), now + CACHE_CATCH_UP)
            return None
        image = (build.get("status") or {}).get("latestImage")
        if not image:
            wait = await self._stopped(build)
            if wait is not None:
                return Result(requeue_after=wait)
            if build_stop.stop_written_at(build, build_stop.STOPPED_BY_SERVICE) is not None:
                image = build_number_tag(build)  # whatever the pod pushed before it was stopped
        if image and not await self._droplet_deleted(request, build, image):
            return Result(requeue_after=SAFETY_REQUEUE)  # the deletion's end wakes it sooner
        await self._set_finalizers(build, [f for f in finalizers if f != k.KPACK_BUILD_FINALIZER])
        return None

    async def _stopped(self, build: Obj) -> float | None:
        """None once nothing of the deleted Build can push any more; else how soon to look again."""
        meta = build["metadata"]
        written: datetime | None
        if build_stop.is_running(build):
            if not (build.get("status") or {}).get("podName"):
                return None  # kpack has not made its pod: nothing runs
            try:
                await build_stop.write_stop(self.client, build, k.BUILD_DELETED, DELETED_MESSAGE)
            except errors.NotFound:
                return None
            log.info(
                "stopping a deleted kpack Build before its release",
                extra={"namespace": meta["namespace"], "build": meta["name"]},
            )
            written = server_now()
        else:
            written = build_stop.stop_written_at(build, build_stop.STOPPED_BY_SERVICE)
            if written is None:
                return None  # finished by kpack: its status says what it pushed
        return build_stop.still_to_wait(
            written, await build_stop.pod_gone(self.client, meta["namespace"], build_stop.pod_name(build))
        )

    def _forget_expired(self, now: float) -> None:
        """Drop the writes awaited past their time: their own watch event is filtered out (the Build is no
        longer ``wanted``), so no reconcile comes to pop them. From the front, up to the first still awaited:
        one put back by the requeue path keeps its older deadline behind newer ones, so an expired entry may
        stay a little longer; there are never more than a few seconds' writes."""
        while self._added:
            key, (_, until) = next(iter(self._added.items()))
            if until > now:
                return
            del self._added[key]

    async def _droplet_deleted(self, request: Request, build: Obj, image: str) -> bool:
        """Whether the droplet's deletion has been tried (successfully or not); False while it runs."""
        tags = tags_of_build_tags((build.get("spec") or {}).get("tags") or ())
        namespace = build["metadata"]["namespace"]
        secrets = await deletion_secrets(
            self.client,
            namespace,
            self.settings.builder_service_account,
            self.settings.cf_root_namespace,
            image,
        )
        outcome = await self.offload.collect(
            ("delete-droplet", namespace, build["metadata"]["name"], image),
            registry_lane(image),
            lambda: self._delete(build, image, tags, secrets),
            lambda: self._wake(request),
        )
        return outcome is not None

    async def _delete(self, build: Obj, image: str, tags: Sequence[str], secrets: Sequence[Obj]) -> None:
        try:
            ref = try_parse_reference(image)
            if ref is not None and ref.digest is None:  # the Build's own tag: what it names now
                resolved = await self.images.digest_reference(image, secrets)
                if resolved is None:
                    return  # the pod pushed nothing
                image = resolved
            await self.images.delete_image(image, tags, secrets)
        except Exception as exc:  # never hold the Build: log and let go
            log.warning(
                "could not delete the droplet image of a deleted kpack Build: %s",
                exc,
                extra={
                    "namespace": build["metadata"]["namespace"],
                    "build": build["metadata"]["name"],
                    "image": image,
                },
            )

    def _wake(self, request: Request) -> None:
        if self.controller is not None:
            self.controller.enqueue(request)

    async def _set_finalizers(self, build: Obj, finalizers: list[str]) -> bool:
        """Replace the Build's finalizers with ``finalizers``, guarded by a JSON patch ``test`` of the list
        as the cache saw it rather than by resourceVersion: kpack writes a Build's status often while it
        runs, and a resourceVersion guard turned about one finalizer write per Build into a conflict
        (issue 10). The test still refuses the write if anybody changed the finalizers meanwhile (a
        ``test`` of null passes for "none yet", as kube-apiserver's patch library does it). Returns whether
        the Build was there to patch."""
        meta = build["metadata"]
        current = list(meta.get("finalizers") or []) or None
        ops: list[Obj] = [{"op": "test", "path": "/metadata/finalizers", "value": current}]
        if finalizers:
            ops.append({"op": "add", "path": "/metadata/finalizers", "value": finalizers})
        elif current is not None:
            ops.append({"op": "remove", "path": "/metadata/finalizers"})
        try:
            await self.client.json_patch(BUILD, meta["name"], ops, meta["namespace"], answer=False)
        except errors.NotFound:
            return False  # gone already: nothing to hold or release
        except errors.Invalid:
            # The test failed: the finalizers moved since the cache saw them. Retried from fresh state.
            raise errors.Conflict(f'the finalizers of Build "{meta["name"]}" changed; retrying') from None
        return True


def register(
    manager: Manager, settings: BuilderSettings, images: ImageDeleter, offload: Offload
) -> KpackBuildReconciler:
    reconciler = KpackBuildReconciler(manager, settings, images, offload)
    reconciler.controller = (
        manager.controller(CONTROLLER)
        .for_(BUILD, predicates=[where(wanted), changed(acted_on)])
        .complete(reconciler.reconcile)
    )
    return reconciler
