"""The BuildWorkload controller: Korifi's build request in, kpack Image (and custom Builder) out, droplet
back (reference: korifi.md §4.1.3).

A workload passes through three phases, decided from its ``Succeeded`` condition:

- none yet → **begin**: reject a workload that can never build (``workload_checks``), wait for the
  builder service account and pull secrets, validate buildpacks and make the custom Builder, create or
  patch the kpack Image, mark ``Succeeded=Unknown/BuildRunning`` with the Image generation label;
- ``Unknown`` → **track**: recover builds kpack skipped, wait for the builder (woken by its events; the
  readiness timeout is a delayed requeue), find the latest Build of this workload's Image generation, fail
  older siblings kpack skipped, then write ``BuildFailed`` or the droplet and ``BuildSucceeded``;
- ``True``/``False`` → done: the droplet is frozen.

Deletion: the last workload of an Image generation deletes that generation's Builds, then lets go.

Each reconcile is one *pass*: fetch from the cache → the phase works on a copy → write what changed →
then, and only then, record the pass's Events (a pass whose write conflicts is retried, and its Events
would otherwise be recorded again).

Reads come from informer caches; where a cache miss would end a workload for good (a Builder, the
ClusterBuilder, Builds), the absence is confirmed with the API first (``service.runtime.reads``): caches
lag. Secrets and ServiceAccounts are read from the API when needed (a cluster-wide Secret cache would cost
memory for every secret in the cluster). The registry is read off the workers (``service.runtime.offload``)
so that a registry that hangs holds no worker. Writes are merge patches guarded by the cached
resourceVersion, so a stale view is refused (409) and retried from fresh state instead of overwriting
someone else's change. Where Korifi has known defects this does better; each difference is listed in
docs/differences-from-korifi.md.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.conditions import find, is_true, set_condition, status_of
from service.kube.patches import merge_diff
from service.kube.resources import (
    BUILD,
    BUILD_WORKLOAD,
    BUILDER,
    CLUSTER_BUILDER,
    IMAGE,
    SECRET,
    SERVICE_ACCOUNT,
    STORAGE_CLASS,
)
from service.kube.timestamps import parse_rfc3339
from service.reconcilers import korifi as k
from service.reconcilers import workload_checks
from service.reconcilers.droplet import DropletError, droplet
from service.reconcilers.images import (
    ImageConfig,
    ImageConfigReader,
    NoRepositoryCreator,
    RepositoryCreator,
    builder_credentials,
    registry_lane,
)
from service.reconcilers.kpack_objects import (
    add_owner,
    custom_builder_ref,
    default_builder_ref,
    desired_builder,
    desired_image,
    permanent_refusal,
    quantity_value,
)
from service.reconcilers.settings import BuilderSettings
from service.runtime import (
    Controller,
    Lister,
    Manager,
    Obj,
    Offload,
    Request,
    Result,
    by_labels,
    current,
    get_confirmed,
    index_value,
    list_confirmed,
    where,
)

log = logging.getLogger("service.reconcilers.buildworkload")

CONTROLLER = "buildworkload"

# Informer indexes (values are namespaced, since the informers may watch every namespace).
BY_APP = "app-guid"
BY_APP_GENERATION = "app-guid/generation"
BY_IMAGE_GENERATION = "image/generation"
BY_BUILDER = "builder"

FINALIZE_RETRY = 1.0  # seconds between checks that a finalized generation's Builds are gone
WAIT_POLL_MAX = 30.0  # at most this long between looks for a Secret or ServiceAccount a workload waits for
REGISTRY_SAFETY_REQUEUE = 60.0  # a workload whose registry read runs in the background is looked at again

INVALID_WORKLOAD = "InvalidWorkload"
IMAGE_REJECTED = "ImageRejected"
BUILDER_REJECTED = "BuilderRejected"


class Failure(Exception):
    """A reconcile that failed: its message becomes ``Ready=False/Unknown`` and it is retried with backoff
    (registry calls, unusable labels, as Korifi's plain errors)."""


class Waiting(Exception):
    """The workload waits for something another actor makes (a pull secret, the builder service account):
    ``Ready=False`` says what, and it is looked at again within ``WAIT_POLL_MAX`` — not after an error's
    backoff, which grows to many minutes — and not counted as a reconcile error."""


@dataclass
class Pass:
    """One reconcile of one workload: the copy the phases change, and the Events to record once the
    changes are stored."""

    request: Request
    work: Obj
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return str(self.work["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.work["metadata"]["name"])

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def succeeded(self, status: str, reason: str, message: str) -> None:
        set_condition(_conditions(self.work), k.SUCCEEDED, status, reason, message, _generation(self.work))

    def fail(self, reason: str, message: str) -> None:
        """``Succeeded=False`` for good, with a Warning Event saying the same."""
        self.succeeded("False", reason, message)
        self.event("Warning", reason, message)


# --------------------------------------------------------------------------- small accessors
def _meta(obj: Obj) -> Obj:
    meta: Obj = obj.setdefault("metadata", {})
    return meta


def _labels(obj: Obj) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("labels") or {})


def _generation(obj: Obj) -> int:
    return int(obj.get("metadata", {}).get("generation") or 0)


def _conditions(obj: Obj) -> list[Obj]:
    conditions: list[Obj] = obj.setdefault("status", {}).setdefault("conditions", [])
    return conditions


_app_index = by_labels(k.APP_GUID_LABEL, namespaced=True)
_app_generation_index = by_labels(k.APP_GUID_LABEL, k.IMAGE_GENERATION_LABEL, namespaced=True)
_image_generation_index = by_labels(k.KPACK_IMAGE_LABEL, k.KPACK_IMAGE_GENERATION_LABEL, namespaced=True)


def _image_builder_index(obj: Obj) -> Iterable[str]:
    builder = (obj.get("spec") or {}).get("builder") or {}
    kind, name = builder.get("kind"), builder.get("name")
    if not kind or not name:
        return ()
    namespace = obj["metadata"].get("namespace", "") if kind == k.BUILDER_KIND else ""
    return (f"{kind}/{namespace}/{name}",)


def _builds_selector(app_guid: str, generation: int | str) -> str:
    return f"{k.KPACK_IMAGE_LABEL}={app_guid},{k.KPACK_IMAGE_GENERATION_LABEL}={generation}"


def is_ours(workload: Obj) -> bool:
    return (workload.get("spec") or {}).get("builderName") == k.BUILDER_NAME


def _completed(workload: Obj) -> bool:
    return status_of(workload, k.SUCCEEDED) in ("True", "False")


def _age(work: Obj) -> float:
    created = parse_rfc3339(work["metadata"].get("creationTimestamp"))
    return (datetime.now(UTC) - created).total_seconds() if created else 0.0


# --------------------------------------------------------------------------- the reconciler
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
        self.image_configs = images
        self.offload = offload
        self.repositories = repositories or NoRepositoryCreator()
        self.controller: Controller | None = None  # set by ``register``: registry reads wake through it
        factory = manager.informers
        self.workloads: Lister = factory.lister(BUILD_WORKLOAD)
        self.images: Lister = factory.lister(IMAGE)
        self.builds: Lister = factory.lister(BUILD)
        self.builders: Lister = factory.lister(BUILDER)
        self.cluster_builders: Lister = factory.lister(CLUSTER_BUILDER)
        self.workloads.add_indexer(BY_APP, _app_index)
        self.workloads.add_indexer(BY_APP_GENERATION, _app_generation_index)
        self.builds.add_indexer(BY_IMAGE_GENERATION, _image_generation_index)
        self.images.add_indexer(BY_BUILDER, _image_builder_index)
        self.events = manager.events

    # ------------------------------------------------------------------ event mapping
    def workloads_for_build(self, build: Obj) -> list[Request]:
        """A Build concerns the workloads of its Image generation (Korifi's Build → workload map)."""
        keys = list(_image_generation_index(build))
        return [
            Request.for_object(w) for key in keys for w in self.workloads.by_index(BY_APP_GENERATION, key)
        ]

    def workloads_waiting_for_builder(self, builder: Obj) -> list[Request]:
        """Running workloads whose Image uses this Builder or ClusterBuilder: woken when it changes."""
        kind = builder.get("kind") or (
            k.BUILDER_KIND if builder["metadata"].get("namespace") else "ClusterBuilder"
        )
        key = f"{kind}/{builder['metadata'].get('namespace', '')}/{builder['metadata']['name']}"
        out = []
        for image in self.images.by_index(BY_BUILDER, key):
            app_key = index_value(image["metadata"].get("namespace", ""), image["metadata"]["name"])
            for workload in self.workloads.by_index(BY_APP, app_key):
                if status_of(workload, k.SUCCEEDED) == "Unknown":
                    out.append(Request.for_object(workload))
        return out

    # ------------------------------------------------------------------ one pass
    async def reconcile(self, request: Request) -> Result | None:
        cached = self.workloads.get(request.namespace, request.name)
        if cached is None or not is_ours(cached):
            return None
        attempt = Pass(request, copy.deepcopy(cached))
        result: Result | None = None
        failure: Exception | None = None
        context = current()
        try:
            # Out of time, the phase stops at the deadline and the pass still writes why: the controller
            # cancels only a grace period later.
            with anyio.fail_after(context.remaining() if context and context.deadline else None):
                result = await self._run_phase(attempt)
            ready = ("True", k.READY_REASON, k.READY_MESSAGE)
        except TimeoutError:
            ready = ("False", k.UNKNOWN_REASON, "the reconcile ran out of time (reconcileTimeout); retrying")
            failure = TimeoutError("the reconcile ran out of time")
        except errors.Conflict:
            raise  # the cache was behind a write: retried from fresh state, nothing to report
        except Waiting as exc:
            ready = ("False", k.UNKNOWN_REASON, str(exc))
            result = Result(requeue_after=min(WAIT_POLL_MAX, max(1.0, _age(attempt.work) / 2)))
            log.info("build workload waits: %s", exc, extra={"buildWorkload": str(request)})
        except (errors.ApiError, DropletError, Failure) as exc:
            ready = (
                "False",
                k.UNKNOWN_REASON,
                str(exc) if not isinstance(exc, errors.ApiError) else exc.message,
            )
            failure = exc
        set_condition(_conditions(attempt.work), k.READY, *ready, _generation(cached))
        try:
            await self._store(cached, attempt.work)
        except errors.NotFound:
            return None  # deleted meanwhile: nothing is left to report on, and nothing to retry
        for type_, reason, message in attempt.events:
            self.events.record(attempt.work, type_, reason, message)
        if failure is not None:
            raise failure
        return result

    async def _run_phase(self, attempt: Pass) -> Result | None:
        work = attempt.work
        work.setdefault("status", {})["observedGeneration"] = _generation(work)
        if _meta(work).get("deletionTimestamp"):
            return await self._finalize(attempt)
        finalizers: list[str] = _meta(work).setdefault("finalizers", [])
        if k.BUILD_WORKLOAD_FINALIZER not in finalizers:
            finalizers.append(k.BUILD_WORKLOAD_FINALIZER)
        if _completed(work):
            return None
        if find(_conditions(work), k.SUCCEEDED) is None:
            await self._begin(attempt)
            return None
        return await self._track(attempt)

    async def _store(self, cached: Obj, work: Obj) -> None:
        """Persist metadata, then status, each only if it changed, each guarded by resourceVersion."""
        meta, ns, name = cached["metadata"], cached["metadata"].get("namespace"), cached["metadata"]["name"]
        rv = meta.get("resourceVersion")
        meta_patch: Obj = {}
        labels = merge_diff(meta.get("labels") or {}, _meta(work).get("labels") or {})
        if labels:
            meta_patch["labels"] = labels
        finalizers = _meta(work).get("finalizers") or None
        if (meta.get("finalizers") or None) != finalizers:
            meta_patch["finalizers"] = finalizers
        if meta_patch:
            written = await self.client.merge_patch(
                BUILD_WORKLOAD, name, {"metadata": {**meta_patch, "resourceVersion": rv}}, ns
            )
            rv = written["metadata"].get("resourceVersion")
            if meta.get("deletionTimestamp") and not written["metadata"].get("finalizers"):
                return  # the last finalizer is gone, and with it the object: nothing left to write status to
        status_patch = merge_diff(cached.get("status") or {}, work.get("status") or {})
        if status_patch:
            await self.client.patch_status(
                BUILD_WORKLOAD, name, {"metadata": {"resourceVersion": rv}, "status": status_patch}, ns
            )

    # ------------------------------------------------------------------ begin
    async def _begin(self, attempt: Pass) -> None:
        work = attempt.work
        problem = workload_checks.problem(work)
        if problem is not None:
            attempt.fail(INVALID_WORKLOAD, problem)
            return
        spec = work.get("spec") or {}
        builder_ref = default_builder_ref(self.settings)
        if spec.get("buildpacks"):
            custom = await self._ensure_custom_builder(attempt)
            if custom is None:
                return  # Succeeded=False says why; retrying cannot help
            builder_ref = custom_builder_ref(custom, attempt.namespace)
        for ref in ((spec.get("source") or {}).get("registry") or {}).get("imagePullSecrets") or ():
            await self._require(SECRET, "Secret", attempt.namespace, ref.get("name", ""))
        await self._require_service_account(attempt.namespace)
        image = await self._reconcile_image(attempt, builder_ref)
        if image is None:
            return
        attempt.succeeded("Unknown", k.BUILD_RUNNING, k.BUILD_RUNNING_MESSAGE)
        _meta(work).setdefault("labels", {})[k.IMAGE_GENERATION_LABEL] = str(_generation(image))
        attempt.event("Normal", k.BUILD_RUNNING, f"kpack Image {image['metadata']['name']} ready to build")

    async def _require(self, resource: Any, kind: str, namespace: str, name: str) -> Obj:
        """A direct read; a missing object is waited for (another actor creates pull secrets)."""
        try:
            obj: Obj = await self.client.get(resource, name, namespace)
            return obj
        except errors.NotFound:
            raise Waiting(
                f'{kind} "{name}" not found'
            ) from None  # Korifi's words: the namespace is the workload's

    async def _require_service_account(self, namespace: str) -> None:
        account = self.settings.builder_service_account
        try:
            await self.client.get(SERVICE_ACCOUNT, account, namespace)
        except errors.NotFound:
            raise Waiting(
                f'ServiceAccount "{account}" not found: kpack builds with its registry credentials'
            ) from None

    async def _ensure_custom_builder(self, attempt: Pass) -> str | None:
        """The Builder for this workload's buildpacks; None after failing the workload (Succeeded=False)."""
        work = attempt.work
        buildpacks: list[str] = list(work["spec"]["buildpacks"])
        cluster_builder = await get_confirmed(
            self.cluster_builders, self.client, None, self.settings.cluster_builder_name
        )
        if cluster_builder is None:
            attempt.fail(k.BUILDER_NOT_READY, k.DEFAULT_CLUSTER_BUILDER_NOT_FOUND)
            return None
        valid = {
            (entry.get("group") or [{}])[0].get("id")
            for entry in (cluster_builder.get("status") or {}).get("order") or ()
            if entry.get("group")
        }
        for buildpack in buildpacks:
            if buildpack not in valid:
                attempt.fail(k.INVALID_BUILDPACKS, k.invalid_buildpack_message(buildpack))
                return None
        name = k.builder_name(buildpacks)
        repository = k.builder_repository(self.settings.container_repository_prefix, name)
        try:
            await self.repositories.create_repository(repository)
        except Exception as exc:
            raise Failure(f"failed ensuring custom builder: failed to create builder repo: {exc}") from exc
        desired = desired_builder(work, name, repository, cluster_builder, self.settings)
        existing = self.builders.get(attempt.namespace, name)
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
                patch = merge_diff(existing, updated)
                if patch:
                    patch.setdefault("metadata", {})["resourceVersion"] = existing["metadata"][
                        "resourceVersion"
                    ]
                    await self.client.merge_patch(BUILDER, name, patch, attempt.namespace)
        except errors.ApiError as exc:
            refused = permanent_refusal(exc, creating=existing is None)
            if refused is not None:
                attempt.fail(BUILDER_REJECTED, refused)
                return None
            if isinstance(exc, errors.Conflict):
                raise
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

    async def _reconcile_image(self, attempt: Pass, builder_ref: Obj) -> Obj | None:
        """Create or patch the app's kpack Image; the written Image, or None when it must be recreated or
        kpack refuses it (then Succeeded=False says why)."""
        work, namespace = attempt.work, attempt.namespace
        app_guid = workload_checks.app_guid(work)
        repository = k.droplet_repository(self.settings.container_repository_prefix, app_guid)
        try:
            await self.repositories.create_repository(repository)
        except Exception as exc:
            raise Failure(f"failed to create droplet repo: {exc}") from exc
        existing = self.images.get(namespace, app_guid)
        desired = desired_image(work, app_guid, builder_ref, existing, self.settings)
        try:
            if existing is None:
                try:
                    created: Obj = await self.client.create(IMAGE, desired, namespace)
                except errors.AlreadyExists:
                    # Another workload of the app made it first, or the cache has not seen it yet.
                    raise errors.Conflict(f'Image "{app_guid}" exists already; retrying') from None
                return created
            old_volume = ((existing.get("spec") or {}).get("cache") or {}).get("volume") or {}
            new_size = desired["spec"]["cache"]["volume"]["size"]
            old_bytes, new_bytes = quantity_value(old_volume.get("size")), quantity_value(new_size)
            if old_volume.get("size") and old_bytes != new_bytes:
                if not await self._resizable(old_volume.get("storageClassName")):
                    # As Korifi: a cache that cannot grow in place means a new Image. Its deletion event
                    # requeues this workload, which then creates the new one.
                    await self.client.delete(
                        IMAGE, app_guid, namespace, preconditions={"uid": existing["metadata"]["uid"]}
                    )
                    log.info("recreating kpack Image for a new cache size", extra={"image": app_guid})
                    return None
                if new_bytes is not None and old_bytes is not None and new_bytes < old_bytes:
                    # kpack refuses to shrink a volume; keep the larger cache rather than fail every build.
                    desired["spec"]["cache"]["volume"]["size"] = old_volume["size"]
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
            attempt.fail(IMAGE_REJECTED, refused)
            return None

    # ------------------------------------------------------------------ track
    async def _track(self, attempt: Pass) -> Result | None:
        work, namespace = attempt.work, attempt.namespace
        labels = _labels(work)
        app_guid = labels.get(k.APP_GUID_LABEL, "")
        image = await get_confirmed(self.images, self.client, namespace, app_guid)
        if image is None:
            raise errors.NotFound(f'failed getting kpack Image: Image.kpack.io "{app_guid}" not found')
        try:
            generation = int(labels.get(k.IMAGE_GENERATION_LABEL, ""))
        except ValueError as exc:
            raise Failure(f"couldn't parse image generation on buildworkload label: {exc}") from None
        await self._recover_skipped_build(image, generation)
        waiting = await self._wait_for_builder(attempt, image)
        if waiting is not None:
            return waiting
        builds = self.builds.by_index(BY_IMAGE_GENERATION, index_value(namespace, app_guid, str(generation)))
        if not builds:
            if self._skipped(image, generation) and not await self._builds_exist(
                namespace, app_guid, generation
            ):
                attempt.fail(k.KPACK_MISSED_BUILD, k.KPACK_MISSED_BUILD_MESSAGE)
            return None  # the Build's creation (or the Image moving on) will wake this workload
        latest = max(builds, key=_build_number)
        await self._fail_skipped_siblings(attempt, app_guid, generation)
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
            result = await self._droplet(attempt, latest)
            if result is None:
                return Result(requeue_after=REGISTRY_SAFETY_REQUEUE)  # the registry read wakes it sooner
            work["status"]["droplet"] = result
            attempt.succeeded("True", k.BUILD_SUCCEEDED, k.BUILD_SUCCEEDED_MESSAGE)
            attempt.event("Normal", k.BUILD_SUCCEEDED, f"droplet {result['registry']['image']}")
        return None

    async def _builds_exist(self, namespace: str, app_guid: str, generation: int) -> bool:
        """Whether the API has Builds of this Image generation (the cache said none)."""
        return bool(
            await list_confirmed(
                self.builds,
                self.client,
                BY_IMAGE_GENERATION,
                index_value(namespace, app_guid, str(generation)),
                namespace,
                _builds_selector(app_guid, generation),
            )
        )

    def _skipped(self, image: Obj, generation: int) -> bool:
        """kpack will never build this generation: the Image moved past it and built a later one. (Korifi
        learns it only from the newer workload failing its older siblings, a write that can be lost; here
        each workload also sees it for itself, from its Image's events.)"""
        status = image.get("status") or {}
        return (
            _generation(image) > generation
            and int(status.get("latestBuildImageGeneration") or 0) > generation
        )

    async def _recover_skipped_build(self, image: Obj, generation: int) -> None:
        """kpack builds nothing when only a non-build field of the Image changed (kpack issue #1198): ask it
        for one more build on top of its latest (Korifi's recovery)."""
        status = image.get("status") or {}
        ready = status_of(image, k.READY)
        if ready in (None, "Unknown"):
            return
        if int(status.get("observedGeneration") or 0) < generation:
            return
        if int(status.get("latestBuildImageGeneration") or 0) >= generation:
            return
        latest_ref = status.get("latestBuildRef")
        if not latest_ref:
            return  # never built: kpack's first build is on its way (Korifi asks for a Build named "")
        try:
            build = await get_confirmed(self.builds, self.client, image["metadata"]["namespace"], latest_ref)
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
                image["metadata"]["namespace"],
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
            builder = await get_confirmed(self.cluster_builders, self.client, None, name)
            missing = k.CLUSTER_BUILDER_NOT_FOUND
        elif kind == k.BUILDER_KIND:
            builder = await get_confirmed(self.builders, self.client, attempt.namespace, name)
            missing = k.CUSTOM_BUILDER_NOT_FOUND
        else:
            raise Failure(f"failed getting builder readiness condition: unknown kind {kind!r}")
        if builder is None:
            attempt.fail(k.BUILDER_NOT_READY, missing)
            return Result()
        if is_true(builder, k.READY):
            return None
        created = parse_rfc3339(attempt.work["metadata"].get("creationTimestamp"))
        # The timestamp has whole seconds: count from the end of that second, so that a builder always
        # gets at least the whole timeout (Korifi's count can fall up to a second short).
        waited = (datetime.now(UTC) - created).total_seconds() - 1.0 if created else float("inf")
        remaining = self.settings.builder_readiness_timeout - waited
        if remaining > 0:
            return Result(requeue_after=remaining)
        attempt.fail(k.BUILDER_NOT_READY, f'Check {kind} "{name}"')
        return Result()

    async def _fail_skipped_siblings(self, attempt: Pass, app_guid: str, generation: int) -> None:
        """Older workloads of the same app that kpack will never build for (a newer generation superseded
        theirs before a Build was made) are failed with KpackMissedBuild. Errors are logged, not raised."""
        namespace = attempt.namespace
        for sibling in self.workloads.by_index(BY_APP, index_value(namespace, app_guid)):
            if sibling["metadata"]["name"] == attempt.name or not is_ours(sibling):
                continue
            try:
                theirs = int(_labels(sibling).get(k.IMAGE_GENERATION_LABEL, ""))
            except ValueError:
                continue  # not started yet, or failed before its Image: not skipped by kpack
            if theirs >= generation or status_of(sibling, k.SUCCEEDED) != "Unknown":
                continue
            try:
                if await self._builds_exist(namespace, app_guid, theirs):
                    continue
            except errors.ApiError as exc:
                log.warning("could not list the builds of an older build workload: %s", exc.message)
                continue
            await self._fail_sibling(sibling)

    async def _fail_sibling(self, sibling: Obj) -> None:
        status = copy.deepcopy(sibling.get("status") or {})
        conditions = status.setdefault("conditions", [])
        set_condition(
            conditions,
            k.SUCCEEDED,
            "False",
            k.KPACK_MISSED_BUILD,
            k.KPACK_MISSED_BUILD_MESSAGE,
            _generation(sibling),
        )
        meta = sibling["metadata"]
        try:
            await self.client.patch_status(
                BUILD_WORKLOAD,
                meta["name"],
                {
                    "metadata": {"resourceVersion": meta["resourceVersion"]},
                    "status": {"conditions": conditions},
                },
                meta["namespace"],
            )
        except (errors.Conflict, errors.NotFound):
            log.info(  # it sees its own skip from its Image's events (``_skipped``), if it still exists
                "older build workload changed meanwhile; it will find itself skipped",
                extra={"sibling": meta["name"]},
            )
        except errors.ApiError as exc:
            log.warning(
                "failed to patch older build workload: %s", exc.message, extra={"sibling": meta["name"]}
            )
        else:
            self.events.record(sibling, "Warning", k.KPACK_MISSED_BUILD, k.KPACK_MISSED_BUILD_MESSAGE)

    async def _droplet(self, attempt: Pass, build: Obj) -> Obj | None:
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
            lambda: self._wake(attempt.request),
        )
        if outcome is None:
            return None
        if outcome.error is not None:
            raise Failure(f"failed getting image config: {outcome.error}") from outcome.error
        config = outcome.get()
        return droplet(image, (status.get("stack") or {}).get("id", ""), config.labels, config.ports, refs)

    def _wake(self, request: Request) -> None:
        if self.controller is not None:
            self.controller.enqueue(request)

    # ------------------------------------------------------------------ finalize
    async def _finalize(self, attempt: Pass) -> Result | None:
        """The last workload of an Image generation deletes that generation's Builds (each then has its
        droplet deleted from the registry by the kpack Build controller) and waits until they are gone.

        Only the Builds that existed when the workload was deleted are deleted and waited for: kpack
        builds again when every Build of a live Image goes, and Korifi, deleting and waiting for those
        too, holds the workload in that loop for as long as its Image lives. A Build kpack makes later
        goes with the Image, which goes with its last owner."""
        work, namespace = attempt.work, attempt.namespace
        finalizers: list[str] = list(_meta(work).get("finalizers") or [])
        if k.BUILD_WORKLOAD_FINALIZER not in finalizers:
            return None
        labels = _labels(work)
        app_guid, generation = labels.get(k.APP_GUID_LABEL), labels.get(k.IMAGE_GENERATION_LABEL)
        if app_guid is not None and generation is not None:
            same = self.workloads.by_index(BY_APP_GENERATION, index_value(namespace, app_guid, generation))
            if len(same) == 1:
                deleted_at = _meta(work).get("deletionTimestamp") or ""
                builds = [
                    b
                    for b in self.builds.by_index(
                        BY_IMAGE_GENERATION, index_value(namespace, app_guid, generation)
                    )
                    if (b["metadata"].get("creationTimestamp") or "") <= deleted_at
                ]
                for build in builds:
                    if build["metadata"].get("deletionTimestamp"):
                        continue
                    try:
                        await self.client.delete(
                            BUILD,
                            build["metadata"]["name"],
                            namespace,
                            preconditions={"uid": build["metadata"]["uid"]},
                        )
                    except errors.NotFound:
                        continue
                    except errors.ApiError as exc:
                        raise errors.ApiError(f"failed to delete builds: {exc.message}") from exc
                if builds:
                    return Result(requeue_after=FINALIZE_RETRY)
        _meta(work)["finalizers"] = [f for f in finalizers if f != k.BUILD_WORKLOAD_FINALIZER]
        return None


def _build_number(build: Obj) -> int:
    value = _labels(build).get(k.KPACK_BUILD_NUMBER_LABEL, "")
    try:
        return int(value)
    except ValueError:
        raise Failure(
            f'failed to parse build number for build "{build["metadata"]["name"]}": invalid number {value!r}'
        ) from None


def register(
    manager: Manager,
    settings: BuilderSettings,
    images: ImageConfigReader,
    offload: Offload,
    repositories: RepositoryCreator | None = None,
) -> BuildWorkloadReconciler:
    reconciler = BuildWorkloadReconciler(manager, settings, images, offload, repositories)
    reconciler.controller = (
        manager.controller(CONTROLLER)
        .for_(BUILD_WORKLOAD, predicates=[where(is_ours)])
        .owns(IMAGE, only_controller=False)
        .watches(BUILD, reconciler.workloads_for_build)
        .watches(BUILDER, reconciler.workloads_waiting_for_builder)
        .watches(CLUSTER_BUILDER, reconciler.workloads_waiting_for_builder)
        .complete(reconciler.reconcile)
    )
    return reconciler
