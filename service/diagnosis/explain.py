"""Gathering the facts of one workload's build, with plain reads: no cache, no informer, no write.

The order is the chain's: the workload (which must exist: its absence is the caller's error), its kpack
Image (named by the workload's app GUID), the Image's builder, the newest kpack Build of the workload's
Image generation, and that Build's pod. A link that is missing is a fact; a link that cannot be read
(403 from a narrower RBAC, say) is recorded with its error and the rest of the chain still gathered.
"""

from __future__ import annotations

from service.diagnosis.advice import judge
from service.diagnosis.facts import (
    BuilderFacts,
    BuilderRef,
    BuildFacts,
    Cache,
    Condition,
    Diagnosis,
    FailedStepFacts,
    ImageFacts,
    Obj,
    PodFacts,
    Waiting,
    WorkloadFacts,
)
from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.selectors import format_labels
from service.reconcilers import korifi as k
from service.reconcilers.build_steps import failed_step
from service.reconcilers.buildworkload.finalize import FINALIZER_WAIT_LIMIT


async def _read(
    client: KubeClient, res: r.Resource, name: str, namespace: str | None
) -> tuple[Obj | None, str | None]:
    """The object, or None and why not (None: it does not exist)."""
    try:
        return await client.get(res, name, namespace if res.namespaced else None), None
    except errors.NotFound:
        return None, None
    except errors.ApiError as exc:
        return None, str(exc)


def workload_facts(obj: Obj) -> WorkloadFacts:
    meta = obj["metadata"]
    labels = meta.get("labels") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return WorkloadFacts(
        namespace=str(meta.get("namespace", "")),
        name=str(meta["name"]),
        app_guid=labels.get(k.APP_GUID_LABEL) or None,
        image_generation=labels.get(k.IMAGE_GENERATION_LABEL) or None,
        builder_name=str(spec.get("builderName") or ""),
        buildpacks=[str(b) for b in spec.get("buildpacks") or ()],
        deleting=bool(meta.get("deletionTimestamp")),
        cancel_requested=str((meta.get("annotations") or {}).get(k.CANCEL_ANNOTATION, "")).strip().lower()
        == "true",
        succeeded=Condition.of(obj, k.SUCCEEDED),
        ready=Condition.of(obj, k.READY),
        failed_at=status.get("failedAt") or None,
        provenance=status.get("provenance") or None,
        droplet=status.get("droplet") or None,
    )


def _cache(spec: Obj) -> Cache:
    cache = spec.get("cache")
    if cache is None:
        # kpack's defaulting webhook turns an omitted cache into a volume of its default size.
        return Cache("volume")
    if cache.get("volume"):
        volume = cache["volume"]
        return Cache("volume", size=volume.get("size"), storage_class=volume.get("storageClassName") or None)
    if cache.get("registry"):
        return Cache("registry", tag=cache["registry"].get("tag"))
    return Cache("none")


def image_facts(namespace: str, name: str, obj: Obj | None, error: str | None) -> ImageFacts:
    if obj is None:
        return ImageFacts(namespace, name, found=False, error=error)
    spec = obj.get("spec") or {}
    builder = spec.get("builder") or {}
    ref = None
    if builder.get("name"):
        kind = str(builder.get("kind") or k.CLUSTER_BUILDER_KIND)
        ref = BuilderRef(
            kind,
            str(builder["name"]),
            str(builder.get("namespace") or namespace) if kind == k.BUILDER_KIND else None,
        )
    return ImageFacts(
        namespace,
        name,
        found=True,
        generation=obj["metadata"].get("generation"),
        ready=Condition.of(obj, k.READY),
        conditions=Condition.all_of(obj),
        builder=ref,
        cache=_cache(spec),
        latest_image=(obj.get("status") or {}).get("latestImage") or None,
    )


def _builder_ref(workload: WorkloadFacts, image: ImageFacts | None) -> tuple[BuilderRef, str] | None:
    if image is not None and image.builder is not None:
        return image.builder, "the Image's spec.builder"
    if workload.buildpacks:
        # No Image (yet): the custom Builder the service makes for the workload's buildpacks.
        return BuilderRef(
            k.BUILDER_KIND, k.builder_name(workload.buildpacks), workload.namespace
        ), "the workload's buildpacks"
    return None  # the default ClusterBuilder, whose name is the service's configuration


async def builder_facts(client: KubeClient, ref: BuilderRef, origin: str) -> BuilderFacts:
    res = r.BUILDER if ref.kind == k.BUILDER_KIND else r.CLUSTER_BUILDER
    obj, error = await _read(client, res, ref.name, ref.namespace)
    if obj is None:
        return BuilderFacts(ref, origin, found=False, error=error)
    return BuilderFacts(
        ref, origin, found=True, ready=Condition.of(obj, k.READY), conditions=Condition.all_of(obj)
    )


def _build_number(build: Obj) -> int:
    number = (build["metadata"].get("labels") or {}).get(k.KPACK_BUILD_NUMBER_LABEL, "")
    return int(number) if str(number).isdigit() else -1


def _first_waiting(status: Obj) -> Waiting | None:
    # Only a pod that has yet to run says why it waits; a finished one lists the steps it never reached.
    if status.get("phase") not in (None, "Pending"):
        return None
    for container in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]:
        state = (container.get("state") or {}).get("waiting")
        if isinstance(state, dict):
            name, reason, message = container.get("name", ""), state.get("reason"), state.get("message")
            return Waiting(str(name), str(reason or ""), str(message or ""))
    return None


def pod_facts(namespace: str, name: str, obj: Obj | None, error: str | None) -> PodFacts:
    if obj is None:
        return PodFacts(namespace, name, found=False, error=error)
    status = obj.get("status") or {}
    waiting = _first_waiting(status)
    return PodFacts(
        namespace,
        name,
        found=True,
        phase=status.get("phase") or None,
        scheduled=Condition.of(obj, "PodScheduled"),
        waiting=waiting,
    )


def _newest(builds: list[Obj]) -> Obj:
    return max(builds, key=lambda b: (_build_number(b), b["metadata"].get("creationTimestamp", "")))


def _generation_of(build: Obj) -> str:
    return str((build["metadata"].get("labels") or {}).get(k.KPACK_IMAGE_GENERATION_LABEL, ""))


def _running(build: Obj) -> bool:
    succeeded = Condition.of(build, k.SUCCEEDED)
    return succeeded is None or succeeded.status == "Unknown"


async def _facts_of(client: KubeClient, build: Obj, same_generation: int) -> BuildFacts:
    meta = build["metadata"]
    namespace = str(meta.get("namespace", ""))
    annotations = meta.get("annotations") or {}
    pod_name = (build.get("status") or {}).get("podName") or None
    succeeded = Condition.of(build, k.SUCCEEDED)
    facts = BuildFacts(
        namespace=namespace,
        name=str(meta["name"]),
        number=(meta.get("labels") or {}).get(k.KPACK_BUILD_NUMBER_LABEL),
        generation=_generation_of(build),
        builds_for_generation=same_generation,
        succeeded=succeeded,
        reason=annotations.get(k.KPACK_REASON_ANNOTATION) or None,
        stopped_for=annotations.get(k.STOPPED_FOR_ANNOTATION) or None,
        pod_name=pod_name,
    )
    if succeeded is not None and succeeded.status == "False":
        step = failed_step(build)
        if step is not None:
            facts.failed_step = FailedStepFacts(step.pod, step.container, step.exit_code, step.logs_command)
    if pod_name:
        pod, error = await _read(client, r.POD, pod_name, namespace)
        facts.pod = pod_facts(namespace, pod_name, pod, error)
    return facts


async def builds_of_image(client: KubeClient, namespace: str, app_guid: str) -> list[Obj]:
    """Every kpack Build of the app's Image (the one LIST explain makes)."""
    selector = format_labels({k.KPACK_IMAGE_LABEL: app_guid})
    items: list[Obj] = (await client.list(r.BUILD, namespace, label_selector=selector))["items"]
    return items


def deletion_holds(builds: list[Obj], generation: str) -> list[str]:
    """What the deletion of the last workload of an Image generation waits for, from that generation's
    Builds (``service.reconcilers.buildworkload.finalize``): one made for a workload that has no
    kpackBuild finalizer yet, and any being deleted."""
    holds = []
    for build in builds:
        if _generation_of(build) != generation:
            continue
        meta = build["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            held_by = ", ".join(finalizers) or "nothing (going)"
            holds.append(f"kpack Build {meta['name']} is being deleted, held by {held_by}")
        elif (
            k.BUILD_WORKLOAD_LABEL in (meta.get("labels") or {}) and k.KPACK_BUILD_FINALIZER not in finalizers
        ):
            holds.append(
                f"kpack Build {meta['name']} has no {k.KPACK_BUILD_FINALIZER} finalizer yet; the service's "
                "kpack Build controller adds it (its log says why it cannot), and the deletion waits for it "
                f"at most {FINALIZER_WAIT_LIMIT:.0f} s"
            )
    return holds


async def build_facts(
    client: KubeClient, namespace: str, builds: list[Obj], generation: str
) -> tuple[BuildFacts | None, BuildFacts | None]:
    """The newest Build of the Image's ``generation``; without one, the newest Build of another generation
    still running, which kpack finishes before it starts the next (one build at a time per Image)."""
    mine = [b for b in builds if _generation_of(b) == generation]
    if mine:
        return await _facts_of(client, _newest(mine), len(mine)), None
    running = [b for b in builds if _running(b)]
    if running:
        newest = _newest(running)
        same = sum(1 for b in builds if _generation_of(b) == _generation_of(newest))
        return None, await _facts_of(client, newest, same)
    return None, None


async def explain(client: KubeClient, namespace: str, name: str) -> Diagnosis:
    """The diagnosis of BuildWorkload ``namespace/name``; raises ``errors.NotFound`` if there is none, and
    the client's errors when the workload itself cannot be read."""
    workload = workload_facts(await client.get(r.BUILD_WORKLOAD, name, namespace))
    image = None
    if workload.app_guid:
        obj, error = await _read(client, r.IMAGE, workload.app_guid, namespace)
        image = image_facts(namespace, workload.app_guid, obj, error)
    found = _builder_ref(workload, image)
    builder = await builder_facts(client, *found) if found else None
    build, earlier, build_error = None, None, None
    holds: list[str] = []
    if workload.app_guid and workload.image_generation:
        try:
            builds = await builds_of_image(client, namespace, workload.app_guid)
            build, earlier = await build_facts(client, namespace, builds, workload.image_generation)
            if workload.deleting:
                holds = deletion_holds(builds, workload.image_generation)
        except errors.NotFound:
            pass  # kpack is not installed: no Build resource at all
        except errors.ApiError as exc:
            build_error = str(exc)
    verdict = judge(workload, image, builder, build, earlier, build_error, holds)
    return Diagnosis(
        healthy=verdict.healthy,
        problems=verdict.problems,
        next=verdict.next,
        notes=verdict.notes,
        workload=workload,
        image=image,
        builder=builder,
        build=build,
        earlier_build=earlier,
    )
