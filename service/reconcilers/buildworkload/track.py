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
from datetime import UTC, datetime

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.conditions import find, is_true, status_of
from service.kube.objects import generation, labels
from service.kube.resources import BUILD
from service.kube.timestamps import parse_rfc3339
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload.attempt import Failure, Pass, Waiting
from service.reconcilers.buildworkload.caches import Caches
from service.reconcilers.buildworkload.siblings import Siblings, builds_exist
from service.reconcilers.custom_builders import readiness_since, wanted_builder
from service.reconcilers.droplet import droplet
from service.reconcilers.images import ImageConfig, ImageConfigReader, builder_credentials, registry_lane
from service.reconcilers.settings import BuilderSettings
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
    ) -> None:
        self.client = client
        self.settings = settings
        self.caches = caches
        self.siblings = siblings
        self.image_configs = image_configs
        self.offload = offload
        self.wake = wake
        self.remake_builder = remake_builder  # begin's: a workload's own custom Builder made again

    async def __call__(self, attempt: Pass) -> Result | None:
        work, namespace = attempt.work, attempt.namespace
        app_guid = labels(work).get(k.APP_GUID_LABEL, "")
        image = await get_confirmed(self.caches.images, self.client, namespace, app_guid)
        if image is None:
            raise errors.NotFound(f'failed getting kpack Image: Image.kpack.io "{app_guid}" not found')
        try:
            image_generation = int(labels(work).get(k.IMAGE_GENERATION_LABEL, ""))
        except ValueError as exc:
            raise Failure(f"couldn't parse image generation on buildworkload label: {exc}") from None
        await self._recover_skipped_build(image, image_generation)
        waiting = await self._wait_for_builder(attempt, image)
        if waiting is not None:
            return waiting
        builds = self.caches.builds_of(namespace, app_guid, image_generation)
        if not builds:
            if _skipped(image, image_generation) and not await builds_exist(
                self.client, self.caches, namespace, app_guid, image_generation
            ):
                attempt.fail(k.KPACK_MISSED_BUILD, k.KPACK_MISSED_BUILD_MESSAGE)
            return None  # the Build's creation (or the Image moving on) will wake this workload
        latest = max(builds, key=_build_number)
        await self.siblings.fail_skipped(attempt, app_guid, image_generation)
        outcome = status_of(latest, k.SUCCEEDED)
        if outcome == "False":
            attempt.succeeded("False", k.BUILD_FAILED, k.BUILD_FAILED_MESSAGE)
            # Korifi's message is fixed ("Check build log output"); the Event says what kpack said.
            why = (find((latest.get("status") or {}).get("conditions"), k.SUCCEEDED) or {}).get("message")
            attempt.event(
                "Warning",
                k.BUILD_FAILED,
                f"kpack Build {latest['metadata']['name']} failed: {why or 'no reason given'}",
            )
        elif outcome == "True":
            result = await self.droplet(attempt, latest)
            if result is None:
                return Result(requeue_after=REGISTRY_SAFETY_REQUEUE)  # the registry read wakes it sooner
            work["status"]["droplet"] = result
            attempt.succeeded("True", k.BUILD_SUCCEEDED, k.BUILD_SUCCEEDED_MESSAGE)
            attempt.event("Normal", k.BUILD_SUCCEEDED, f"droplet {result['registry']['image']}")
        return None

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
        waited = (datetime.now(UTC) - created).total_seconds() - 1.0 if created else float("inf")
        remaining = self.settings.builder_readiness_timeout - waited
        if remaining > 0:
            return Result(requeue_after=remaining)
        attempt.fail(k.BUILDER_NOT_READY, f'Check {kind} "{name}"')
        return Result()

    async def droplet(self, attempt: Pass, build: Obj) -> Obj | None:
        """The droplet of a successful Build; None while its image config is read in the background."""
        try:
            refs, secrets = await builder_credentials(
                self.client, attempt.namespace, self.settings.builder_service_account
            )
        except errors.NotFound as exc:
            raise Waiting(exc.message) from None  # Korifi's words: 'ServiceAccount "x" not found'
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
            raise Failure(f"failed getting image config: {outcome.error}") from outcome.error
        config = outcome.get()
        return droplet(
            image,
            (status.get("stack") or {}).get("id", ""),
            config.labels,
            config.ports,
            refs,
            status.get("latestCacheImage") or "",
        )


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
