"""The first phase of a workload: from the request to a kpack Image that will build it.

In Korifi's order (korifi.md §4.1.3 B): the custom Builder for requested buildpacks, the source's pull
secrets, then the Image. Before all of it, a workload that can never build is failed saying why
(``workload_checks``); the builder service account, which kpack needs to push, is waited for like the
pull secrets (another actor creates both). Ends with ``Succeeded=Unknown/BuildRunning`` and the Image
generation label, or ``Succeeded=False`` for what no retry can fix.
"""

from __future__ import annotations

import copy
import logging

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.objects import generation, meta
from service.kube.patches import merge_diff
from service.kube.resources import BUILDER, IMAGE, STORAGE_CLASS
from service.reconcilers import korifi as k
from service.reconcilers import workload_checks
from service.reconcilers.build_cache import (
    DROP_VOLUME,
    VolumeChange,
    desired_cache,
    storage_class_of,
    volume_change,
)
from service.reconcilers.buildpacks import Unresolved, resolve_confirmed
from service.reconcilers.buildworkload.attempt import Failure, Pass, Waiting
from service.reconcilers.buildworkload.caches import Caches
from service.reconcilers.custom_builders import stamp
from service.reconcilers.images import RepositoryCreator
from service.reconcilers.kpack_objects import (
    add_owner,
    custom_builder_ref,
    default_builder_ref,
    desired_builder,
    desired_image,
    permanent_refusal,
)
from service.reconcilers.settings import BuilderSettings
from service.runtime import EventRecorder, Obj, get_confirmed

log = logging.getLogger("service.reconcilers.buildworkload")


class Begin:
    def __init__(
        self,
        client: KubeClient,
        settings: BuilderSettings,
        caches: Caches,
        repositories: RepositoryCreator,
        events: EventRecorder,
    ) -> None:
        self.client = client
        self.settings = settings
        self.caches = caches
        self.repositories = repositories
        self.events = events

    async def __call__(self, attempt: Pass) -> None:
        work = attempt.work
        problem = workload_checks.problem(work)
        if problem is not None:
            attempt.fail(k.INVALID_WORKLOAD, problem)
            return
        spec = work.get("spec") or {}
        builder_ref = default_builder_ref(self.settings)
        if spec.get("buildpacks"):
            custom = await self._ensure_custom_builder(attempt)
            if custom is None:
                return  # Succeeded=False says why; retrying cannot help
            builder_ref = custom_builder_ref(custom, attempt.namespace)
        for ref in ((spec.get("source") or {}).get("registry") or {}).get("imagePullSecrets") or ():
            await self._require_secret(attempt.namespace, ref.get("name", ""))
        await self._require_service_account(attempt.namespace)
        image = await self._reconcile_image(attempt, builder_ref)
        if image is None:
            return
        attempt.succeeded("Unknown", k.BUILD_RUNNING, k.BUILD_RUNNING_MESSAGE)
        meta(work).setdefault("labels", {})[k.IMAGE_GENERATION_LABEL] = str(generation(image))
        meta(work).setdefault("annotations", {})[k.IMAGE_UID_ANNOTATION] = image["metadata"]["uid"]
        attempt.event("Normal", k.BUILD_RUNNING, f"kpack Image {image['metadata']['name']} ready to build")

    async def _require_secret(self, namespace: str, name: str) -> None:
        """A read through the short-lived Secret cache (a Secret seen within its TTL counts as there); a
        missing one is waited for (another actor creates pull secrets)."""
        try:
            await self.caches.secrets.get(name, namespace)
        except errors.NotFound:
            raise Waiting(f'Secret "{name}" not found') from None  # Korifi's words: the workload's namespace

    async def _require_service_account(self, namespace: str) -> None:
        account = self.settings.builder_service_account
        # The cache alone: a miss only waits, and the account's arrival wakes the workload (caches).
        if self.caches.service_accounts.get(namespace, account) is None:
            raise Waiting(f'ServiceAccount "{account}" not found: kpack builds with its registry credentials')

    async def _ensure_custom_builder(self, attempt: Pass) -> str | None:
        """The Builder for this workload's buildpacks; None after failing the workload (Succeeded=False)."""
        work = attempt.work
        buildpacks: list[str] = list(work["spec"]["buildpacks"])
        cluster_builder = await get_confirmed(
            self.caches.cluster_builders, self.client, None, self.settings.cluster_builder_name
        )
        if cluster_builder is None:
            attempt.fail(k.BUILDER_NOT_READY, k.DEFAULT_CLUSTER_BUILDER_NOT_FOUND)
            return None
        try:
            resolution = await resolve_confirmed(
                buildpacks,
                cluster_builder,
                work,
                self.caches.buildpacks,
                self.caches.cluster_buildpacks,
                self.client,
                self.settings.builder_readiness_timeout,
            )
        except Unresolved as exc:
            raise Waiting(str(exc)) from None
        if resolution.problems:
            attempt.fail(k.INVALID_BUILDPACKS, resolution.message)
            return None
        name = k.builder_name(buildpacks)
        repository = k.builder_repository(self.settings.container_repository_prefix, name)
        try:
            await self.repositories.create_repository(repository)
        except Exception as exc:
            raise Failure(f"failed ensuring custom builder: failed to create builder repo: {exc}") from exc
        desired = desired_builder(work, name, repository, cluster_builder, self.settings, resolution.order)
        existing = self.caches.builders.get(attempt.namespace, name)
        stamp(desired, None)
        try:
            if existing is None:
                try:
                    await self.client.create(BUILDER, desired, attempt.namespace)
                except errors.AlreadyExists:
                    raise errors.Conflict(f'Builder "{name}" was created concurrently; retrying') from None
            else:
                updated = copy.deepcopy(existing)
                updated["spec"] = {**(existing.get("spec") or {}), **desired["spec"]}
                add_owner(updated, work)
                stamp(updated, existing)
                patch = merge_diff(existing, updated)
                if patch:
                    patch.setdefault("metadata", {})["resourceVersion"] = existing["metadata"][
                        "resourceVersion"
                    ]
                    await self.client.merge_patch(BUILDER, name, patch, attempt.namespace)
        except errors.ApiError as exc:
            refused = permanent_refusal(exc, creating=existing is None)
            if refused is not None:
                attempt.fail(k.BUILDER_REJECTED, refused)
                return None
            if isinstance(exc, errors.Conflict):
                raise
            if isinstance(exc, errors.NotFound) and existing is not None:
                # Collected since the cache saw it (custom_builders): made again from fresh state.
                raise errors.Conflict(f'Builder "{name}" was deleted meanwhile; retrying') from None
            raise errors.ApiError(
                f"failed ensuring custom builder: failed creating or updating kpack Builder: {exc.message}"
            ) from exc
        return name

    async def _resizable(self, storage_class: str | None) -> bool:
        """Whether a cache volume of this class (None: the default class) can grow in place."""
        classes, _ = await self.client.list_all(STORAGE_CLASS)
        for sc in classes:
            annotations = sc["metadata"].get("annotations") or {}
            named = storage_class and sc["metadata"]["name"] == storage_class
            default = not storage_class and annotations.get(k.DEFAULT_STORAGE_CLASS_ANNOTATION) == "true"
            if named or default:
                return sc.get("allowVolumeExpansion") is True
        return False

    async def _drop_volume(self, attempt: Pass, image: Obj, change: VolumeChange) -> Obj:
        """Take the volume cache off the Image, so that the next patch can set another one (a smaller one,
        of another class, or one its class cannot grow to): ``service.reconcilers.build_cache``."""
        meta_ = image["metadata"]
        patch = {**DROP_VOLUME, "metadata": {"resourceVersion": meta_["resourceVersion"]}}
        patched: Obj = await self.client.merge_patch(IMAGE, meta_["name"], patch, meta_["namespace"])
        message = f'the build cache volume of kpack Image "{meta_["name"]}" is replaced ({change.value})'
        log.info(message, extra={"image": meta_["name"]})
        # Recorded now, not with the pass's outcome: it happened even if the rest of the pass is retried
        # (kpack's status write after the drop often makes the next patch a conflict).
        self.events.record(attempt.work, "Normal", k.BUILD_CACHE_REPLACED, message)
        return patched

    async def _reconcile_image(self, attempt: Pass, builder_ref: Obj) -> Obj | None:
        """Create or patch the app's kpack Image; the written Image, or None when kpack refuses it (then
        Succeeded=False says why)."""
        work, namespace = attempt.work, attempt.namespace
        app_guid = workload_checks.app_guid(work)
        existing = self.caches.images.get(namespace, app_guid)
        cache = desired_cache(self.settings, app_guid, existing)
        repositories = [
            ("droplet", k.droplet_repository(self.settings.container_repository_prefix, app_guid))
        ]
        if "registry" in cache:
            repositories.append(("build cache", cache["registry"]["tag"]))
        for what, repository in repositories:
            try:
                await self.repositories.create_repository(repository)
            except Exception as exc:
                raise Failure(f"failed to create {what} repo: {exc}") from exc
        desired = desired_image(work, app_guid, builder_ref, existing, self.settings, cache)
        try:
            if existing is None:
                try:
                    created: Obj = await self.client.create(IMAGE, desired, namespace)
                except errors.AlreadyExists:
                    # Another workload of the app made it first, or the cache has not seen it yet.
                    raise errors.Conflict(f'Image "{app_guid}" exists already; retrying') from None
                return created
            change = volume_change(existing, cache)
            if change is VolumeChange.GROW and await self._resizable(storage_class_of(existing)):
                change = VolumeChange.NONE
            if change is not VolumeChange.NONE:
                existing = await self._drop_volume(attempt, existing, change)
                desired = desired_image(work, app_guid, builder_ref, existing, self.settings, cache)
            patch = merge_diff(
                {"metadata": existing["metadata"], "spec": existing.get("spec")},
                {"metadata": desired["metadata"], "spec": desired["spec"]},
            )
            if not patch:
                return existing
            patch.setdefault("metadata", {})["resourceVersion"] = existing["metadata"]["resourceVersion"]
            patched: Obj = await self.client.merge_patch(IMAGE, app_guid, patch, namespace)
            return patched
        except errors.ApiError as exc:
            refused = permanent_refusal(exc, creating=existing is None)
            if refused is None:
                raise
            attempt.fail(k.IMAGE_REJECTED, refused)
            return None
