"""The second phase of a workload: following kpack until its build ends, then the droplet.

Recover a build kpack skipped (kpack issue #1198: a change to a non-build field of the Image builds
nothing), wait for the builder (woken by its events; the readiness timeout is one delayed requeue), find
the latest Build of this workload's Image generation, fail older siblings kpack skipped, then write
``BuildFailed``, or the droplet and ``BuildSucceeded``. Absences that would end the workload (its Image's
builder, its Builds) are confirmed with the API first. The droplet's image config is read from the
registry beside the workers (``service.runtime.offload``): a registry that hangs holds no worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.conditions import find, is_true, status_of
from service.kube.objects import generation, is_deleting, labels
from service.kube.resources import BUILD
from service.kube.server_clock import server_now
from service.kube.timestamps import parse_rfc3339
from service.reconcilers import korifi as k
from service.reconcilers.build_steps import failed_step
from service.reconcilers.build_stop import CONFIRM_POLL, is_running
from service.reconcilers.buildworkload import pending
from service.reconcilers.buildworkload.attempt import Failure, Pass, Waiting, is_ours
from service.reconcilers.buildworkload.caches import Caches
from service.reconcilers.buildworkload.pending import next_check
from service.reconcilers.buildworkload.siblings import Siblings, builds_exist
from service.reconcilers.buildworkload.stopping import (
    Stop,
    Stopper,
    age,
    cancel_requested,
    stopped_by,
    stopped_for,
    stopping,
)
from service.reconcilers.custom_builders import readiness_since, wanted_builder
from service.reconcilers.droplet import droplet
from service.reconcilers.images import ImageConfig, ImageConfigReader, registry_lane
from service.reconcilers.provenance import provenance
from service.reconcilers.settings import BuilderSettings
from service.registry.k8schain import account_secrets
from service.runtime import Obj, Offload, Request, Result, get_confirmed

REGISTRY_SAFETY_REQUEUE = 60.0  # a workload whose registry read runs in the background is looked at again


class Track:
    def __init__(
        self,
        client: KubeClient,
        settings: BuilderSettings,
        caches: Caches,
        siblings: Siblings,
        image_configs: ImageConfigReader,
        offload: Offload,
        wake: Callable[[Request], None],
        remake_builder: Callable[[Pass], Awaitable[str | None]] | None = None,
        begin_again: Callable[[Pass], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.caches = caches
        self.siblings = siblings
        self.image_configs = image_configs
        self.offload = offload
        self.wake = wake
        self.remake_builder = remake_builder  # begin's: a workload's own custom Builder made again
        self.begin_again = begin_again  # begin itself: for a workload whose Image was deleted under it
        self.stopper = Stopper(client)

    async def __call__(self, attempt: Pass) -> Result | None:
        work, namespace = attempt.work, attempt.namespace
        app_guid = labels(work).get(k.APP_GUID_LABEL, "")
        image = await get_confirmed(self.caches.images, self.client, namespace, app_guid)
        stop = self._stop_asked(attempt)
        if image is None or _recreated(work, image):
            if stop is not None:
                # Its Builds go with the Image (their owner), pods and all: nothing is left to stop, and
                # beginning again would build what was asked to stop.
                what = "deleted" if image is None else "made again"
                attempt.fail(stop.reason, f"{stop.why}: its kpack Image was {what}, and its Builds with it")
                return None
            return await self._begin_again(attempt, image)
        try:
            image_generation = int(labels(work).get(k.IMAGE_GENERATION_LABEL, ""))
        except ValueError as exc:
            raise Failure(f"couldn't parse image generation on buildworkload label: {exc}") from None
        if stop is None:
            await self._recover_skipped_build(image, image_generation)
            waiting = await self._wait_for_builder(attempt, image)
            if waiting is not None:
                return waiting
        builds = [b for b in self.caches.builds_of(namespace, app_guid, image_generation) if _of(b, image)]
        latest = max(builds, key=_build_number) if builds else None
        if stop is None and latest is not None and stopped_by(latest) == attempt.name:
            # Stopped for this workload by a pass whose own write was lost: the stop goes on, for the
            # reason written on the Build (one of ours, as ``stopped_by`` says).
            stop = Stop(_reason(latest), self._why(_reason(latest)))
        if stop is not None:
            # Once a stop has marked a Build, it follows that Build alone: a later Build of the generation
            # (a restage's trigger) is not this workload's to stop.
            marked = [b for b in builds if stopped_for(b) == attempt.name]
            latest = max(marked, key=_build_number) if marked else latest
            if latest is None and await builds_exist(
                self.client, self.caches, namespace, app_guid, image_generation
            ):
                # The API has a Build the cache has not shown yet: stopped once it is seen.
                attempt.succeeded("Unknown", stop.reason, f"{stop.why}: waiting to see the kpack Build")
                return Result(requeue_after=CONFIRM_POLL)
            result = await self.stopper(attempt, stop, latest)
            if latest is None or is_running(latest) or stopped_by(latest) == attempt.name:
                return result
        if latest is None:
            if _skipped(image, image_generation) and not await builds_exist(
                self.client, self.caches, namespace, app_guid, image_generation
            ):
                attempt.fail(k.KPACK_MISSED_BUILD, k.KPACK_MISSED_BUILD_MESSAGE)
            return None  # the Build's creation (or the Image moving on) will wake this workload
        await self.siblings.fail_skipped(attempt, app_guid, image_generation)
        if is_running(latest):
            return await self._running(attempt, latest)
        if stopped_by(latest) not in (None, attempt.name):
            # Stopped for another workload of the same generation (a cancel, a timeout): this one asks
            # for its own build rather than inherit the stop.
            await self._request_build(latest)
            return None
        if status_of(latest, k.SUCCEEDED) == "False":
            self._failed(attempt, latest)
            return None
        made = await self.droplet(attempt, latest)
        if made is None:
            return Result(requeue_after=REGISTRY_SAFETY_REQUEUE)  # the registry read wakes it sooner
        work["status"]["droplet"] = made
        work["status"].pop("failedAt", None)
        attempt.succeeded("True", k.BUILD_SUCCEEDED, k.BUILD_SUCCEEDED_MESSAGE)
        attempt.event("Normal", k.BUILD_SUCCEEDED, f"droplet {made['registry']['image']}")
        return None

    def _stop_asked(self, attempt: Pass) -> Stop | None:
        """The stop under way, or a cancel just asked for."""
        reason = stopping(attempt.work)
        if reason is None and cancel_requested(attempt.work):
            reason = k.BUILD_CANCELED
        return None if reason is None else Stop(reason, self._why(reason))

    def _why(self, reason: str) -> str:
        if reason == k.BUILD_TIMEOUT:
            return f"the build ran longer than buildTimeout ({self.settings.build_timeout:g}s)"
        if reason == k.BUILD_POD_PENDING_TIMEOUT:
            return (
                "the build pod did not start within buildPodPendingTimeout "
                f"({self.settings.build_pod_pending_timeout:g}s)"
            )
        return f"canceled by annotation {k.CANCEL_ANNOTATION}"

    async def _running(self, attempt: Pass, build: Obj) -> Result | None:
        """A running Build: stopped past the build timeout; a pod that cannot start said, and stopped past
        its own limit; else looked at again when a limit or the next pod check falls due."""
        elapsed = age(build)
        timeout = self.settings.build_timeout
        if timeout and elapsed >= timeout:
            return await self.stopper(attempt, Stop(k.BUILD_TIMEOUT, self._why(k.BUILD_TIMEOUT)), build)
        limit = self.settings.build_pod_pending_timeout
        waits = [next_check(build, limit)]
        if timeout:
            waits.append(timeout - elapsed)
        trouble = await pending.problem(self.client, build, limit)
        if trouble is None:
            attempt.succeeded("Unknown", k.BUILD_RUNNING, k.BUILD_RUNNING_MESSAGE)
        else:
            if limit and elapsed >= limit:
                attempt.event("Warning", k.BUILD_POD_PENDING_TIMEOUT, trouble)
                stop = Stop(k.BUILD_POD_PENDING_TIMEOUT, self._why(k.BUILD_POD_PENDING_TIMEOUT))
                return await self.stopper(attempt, stop, build)
            if (
                status_of(attempt.work, k.SUCCEEDED) != "Unknown"
                or _reason(attempt.work) != k.BUILD_POD_PENDING
            ):
                attempt.event("Warning", k.BUILD_POD_PENDING, trouble)
            attempt.succeeded("Unknown", k.BUILD_POD_PENDING, trouble)
            if limit:
                waits.append(limit - elapsed)
        return Result(requeue_after=max(0.5, min(waits)))

    def _failed(self, attempt: Pass, build: Obj) -> None:
        """``BuildFailed``: Korifi's words, then the step that failed and the command that shows its log."""
        step = failed_step(build)
        message = k.BUILD_FAILED_MESSAGE
        if step is not None:
            message = f"{message}: {step.describe()}"
            attempt.work["status"]["failedAt"] = step.as_status()
        attempt.succeeded("False", k.BUILD_FAILED, message)
        why = (find((build.get("status") or {}).get("conditions"), k.SUCCEEDED) or {}).get("message")
        attempt.event(
            "Warning",
            k.BUILD_FAILED,
            f"kpack Build {build['metadata']['name']} failed: {why or 'no reason given'}",
        )

    async def _begin_again(self, attempt: Pass, image: Obj | None) -> Result | None:
        """The Image this workload began on was deleted (and maybe made again) under it: its Builds go
        with it, so the workload begins again on the Image as it is now — never left waiting for ever."""
        if self.begin_again is None:
            raise errors.NotFound(f'failed getting kpack Image: Image.kpack.io "{attempt.name}" not found')
        if self._newer_sibling(attempt, image):
            # Beginning again would write this workload's source into the app's Image over a newer
            # workload's: the newer one builds, and this one is skipped as kpack skips a superseded one.
            attempt.fail(k.KPACK_MISSED_BUILD, k.KPACK_MISSED_BUILD_MESSAGE)
            return None
        what = "deleted" if image is None else "made again"
        attempt.event(
            "Normal", k.IMAGE_RECREATED, f"kpack Image of this workload was {what} under it: building again"
        )
        await self.begin_again(attempt)
        return None

    def _newer_sibling(self, attempt: Pass, image: Obj | None) -> bool:
        """Whether another workload of this one's app wrote its source into the Image after this one did:
        on the same Image, a higher Image generation (one that failed before its Image, e.g. on its
        buildpacks, has none); or it began on the Image made since this one's was deleted — its generation
        counts from 1 again there, so generations of different Images do not compare (a newer workload
        that began again first would otherwise look older)."""
        mine = _image_generation(attempt.work)
        began_on = _began_on(attempt.work)
        current = image["metadata"].get("uid") if image is not None else None
        app_guid = labels(attempt.work).get(k.APP_GUID_LABEL, "")
        for other in self.caches.workloads_of_app(attempt.namespace, app_guid):
            if not is_ours(other) or is_deleting(other):
                continue
            theirs = _began_on(other)
            if current is not None and theirs == current and began_on != current:
                return True
            if mine is not None and theirs == began_on and (_image_generation(other) or 0) > mine:
                return True
        return False

    async def _request_build(self, build: Obj) -> None:
        """Ask kpack for one more build on top of its latest (the trigger annotation, kpack.md §3.6)."""
        if (build["metadata"].get("annotations") or {}).get(k.BUILD_NEEDED_ANNOTATION) == "true":
            return
        meta = build["metadata"]
        await self.client.merge_patch(
            BUILD,
            meta["name"],
            {"metadata": {"annotations": {k.BUILD_NEEDED_ANNOTATION: "true"}}},
            meta["namespace"],
        )

    async def _recover_skipped_build(self, image: Obj, image_generation: int) -> None:
        """kpack builds nothing when only a non-build field of the Image changed (kpack issue #1198): ask it
        for one more build on top of its latest (Korifi's recovery)."""
        status = image.get("status") or {}
        ready = status_of(image, k.READY)
        if ready in (None, "Unknown"):
            return
        if int(status.get("observedGeneration") or 0) < image_generation:
            return
        if int(status.get("latestBuildImageGeneration") or 0) >= image_generation:
            return
        latest_ref = status.get("latestBuildRef")
        if not latest_ref:
            return  # never built: kpack's first build is on its way (Korifi asks for a Build named "")
        namespace = image["metadata"]["namespace"]
        try:
            build = await get_confirmed(self.caches.builds, self.client, namespace, latest_ref)
        except errors.ApiError as exc:
            raise errors.ApiError(f'failed to get latest kpack build "{latest_ref}": {exc.message}') from exc
        if build is None:
            raise errors.NotFound(f'failed to get latest kpack build "{latest_ref}": not found')
        if (build["metadata"].get("annotations") or {}).get(k.BUILD_NEEDED_ANNOTATION) == "true":
            return
        try:
            await self.client.merge_patch(
                BUILD,
                latest_ref,
                {"metadata": {"annotations": {k.BUILD_NEEDED_ANNOTATION: "true"}}},
                namespace,
            )
        except errors.ApiError as exc:
            raise errors.ApiError(
                f'failed to request additional build for build "{latest_ref}": {exc.message}'
            ) from exc

    async def _wait_for_builder(self, attempt: Pass, image: Obj) -> Result | None:
        """None when the Image's builder is ready; else a requeue at the readiness deadline (builder events
        wake the workload sooner), or Succeeded=False once the deadline has passed or the builder is gone
        (as the API server, not only the cache, says)."""
        ref = (image.get("spec") or {}).get("builder") or {}
        kind, name = ref.get("kind"), ref.get("name", "")
        if kind == k.CLUSTER_BUILDER_KIND:
            builder = await get_confirmed(self.caches.cluster_builders, self.client, None, name)
            missing = k.CLUSTER_BUILDER_NOT_FOUND
        elif kind == k.BUILDER_KIND:
            builder = await get_confirmed(self.caches.builders, self.client, attempt.namespace, name)
            missing = k.CUSTOM_BUILDER_NOT_FOUND
        else:
            raise Failure(f"failed getting builder readiness condition: unknown kind {kind!r}")
        if builder is None:
            if kind == k.BUILDER_KIND and wanted_builder(attempt.work) == name and self.remake_builder:
                # Collected under it (custom_builders: the garbage collector's race) or deleted by hand.
                if await self.remake_builder(attempt) is not None:
                    return Result(requeue_after=self.settings.builder_readiness_timeout)
                return Result()
            attempt.fail(k.BUILDER_NOT_READY, missing)
            return Result()
        if is_true(builder, k.READY):
            return None
        if kind == k.BUILDER_KIND:
            created = readiness_since(attempt.work, builder)  # a new builder image takes time to build
        else:
            created = parse_rfc3339(attempt.work["metadata"].get("creationTimestamp"))
        # The timestamp has whole seconds: count from the end of that second, so that a builder always
        # gets at least the whole timeout (Korifi's count can fall up to a second short).
        waited = (server_now() - created).total_seconds() - 1.0 if created else float("inf")
        remaining = self.settings.builder_readiness_timeout - waited
        if remaining > 0:
            return Result(requeue_after=remaining)
        attempt.fail(k.BUILDER_NOT_READY, f'Check {kind} "{name}"')
        return Result()

    async def droplet(self, attempt: Pass, build: Obj) -> Obj | None:
        """The droplet of a successful Build; None while its image config is read in the background. What
        the build made (``provenance``) goes on the workload beside it."""
        name = self.settings.builder_service_account
        account = self.caches.service_accounts.get(attempt.namespace, name)
        if account is None:  # a miss only waits: the account's arrival wakes the workload (caches)
            raise Waiting(f'ServiceAccount "{name}" not found')  # Korifi's words
        refs, secrets = await account_secrets(self.caches.secrets.get, account)
        status = build.get("status") or {}
        image = status.get("latestImage", "")

        async def read() -> ImageConfig:
            return await self.image_configs.image_config(image, secrets)

        outcome = await self.offload.collect(
            ("image-config", attempt.namespace, attempt.name, image),
            registry_lane(image),
            read,
            lambda: self.wake(attempt.request),
        )
        if outcome is None:
            return None
        if outcome.error is not None:
            for ref in refs:  # the credentials may be what the registry refused: the retry reads them anew
                self.caches.secrets.forget(ref["name"], attempt.namespace)
            raise Failure(f"failed getting image config: {outcome.error}") from outcome.error
        config = outcome.get()
        attempt.work.setdefault("status", {})["provenance"] = provenance(build, image, config)
        return droplet(
            image,
            (status.get("stack") or {}).get("id", ""),
            config.labels,
            config.ports,
            refs,
            status.get("latestCacheImage") or "",
        )


def _began_on(work: Obj) -> str | None:
    """The UID of the Image the workload began on (None for workloads that began before this service
    recorded it)."""
    uid = (work["metadata"].get("annotations") or {}).get(k.IMAGE_UID_ANNOTATION)
    return str(uid) if uid else None


def _recreated(work: Obj, image: Obj) -> bool:
    """The workload began on another Image of the same name (workloads that began before this service
    recorded it are taken to have begun on this one)."""
    began_on = _began_on(work)
    return began_on is not None and began_on != image["metadata"].get("uid")


def _of(build: Obj, image: Obj) -> bool:
    """A Build of this Image, not of a deleted one of the same name whose Builds wait for the garbage
    collector (a Build with no owner at all is taken as this Image's)."""
    owners = build["metadata"].get("ownerReferences") or ()
    return not owners or any(o.get("uid") == image["metadata"].get("uid") for o in owners)


def _image_generation(work: Obj) -> int | None:
    try:
        return int(labels(work).get(k.IMAGE_GENERATION_LABEL, ""))
    except ValueError:
        return None


def _reason(work: Obj) -> str:
    return str((find((work.get("status") or {}).get("conditions"), k.SUCCEEDED) or {}).get("reason") or "")


def _skipped(image: Obj, image_generation: int) -> bool:
    """kpack will never build this generation: the Image moved past it and built a later one. (Korifi
    learns it only from the newer workload failing its older siblings, a write that can be lost; here
    each workload also sees it for itself, from its Image's events.)"""
    status = image.get("status") or {}
    return (
        generation(image) > image_generation
        and int(status.get("latestBuildImageGeneration") or 0) > image_generation
    )


def _build_number(build: Obj) -> int:
    value = labels(build).get(k.KPACK_BUILD_NUMBER_LABEL, "")
    try:
        return int(value)
    except ValueError:
        raise Failure(
            f'failed to parse build number for build "{build["metadata"]["name"]}": invalid number {value!r}'
        ) from None
