"""Judging the facts: is the workload healthy, what is wrong, and what should a person do next.

Healthy means ``Succeeded=True``, or a build in progress with nothing in its chain wrong; ``Ready=False``
is a problem either way. A finished success is not judged by its chain: its Build may be pruned and its
builder may have changed since, which concerns the app's next build, not this one. Otherwise each link is judged in the chain's order and
every problem brings one or two concrete steps; things that are merely not done yet are notes. Steps are
commands a person can paste (``kubectl ...``) or the one setting or action that fixes the cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from service.diagnosis.facts import BuilderFacts, BuildFacts, Condition, ImageFacts, WorkloadFacts
from service.reconcilers import korifi as k

# Reasons a container waits for while its pod starts normally; any other (ImagePullBackOff,
# CreateContainerConfigError, ...) keeps it from starting.
STARTING = frozenset({"PodInitializing", "ContainerCreating", ""})
RBAC_HINT = "grant the missing get/list permission to read it (docs/explain.md lists what explain reads)"
NEW_BUILD = "to build again, create a new build (cf restage, or a new BuildWorkload): a finished workload is never rebuilt"


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    next: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def problem(self, text: str, *steps: str) -> None:
        self.problems.append(text)
        self.steps(*steps)

    def note(self, text: str, *steps: str) -> None:
        self.notes.append(text)
        self.steps(*steps)

    def steps(self, *steps: str) -> None:
        self.next.extend(s for s in steps if s not in self.next)


def judge(
    workload: WorkloadFacts,
    image: ImageFacts | None,
    builder: BuilderFacts | None,
    build: BuildFacts | None,
    earlier: BuildFacts | None = None,
    build_error: str | None = None,
    holds: Sequence[str] = (),
) -> Verdict:
    v = Verdict()
    if workload.builder_name and workload.builder_name != k.BUILDER_NAME:
        v.problem(
            f"spec.builderName is {workload.builder_name!r}: kpack-image-builder builds only workloads that "
            f"name {k.BUILDER_NAME!r}",
            f"look at the controller of builder {workload.builder_name!r}; this one leaves the workload alone",
        )
        return v
    succeeded = workload.succeeded
    if succeeded is None or succeeded.status != "True":
        _unreadable(v, image, builder, build, build_error)
        if succeeded is not None and succeeded.status == "False":
            _failed(v, workload, succeeded, builder, build)
        else:
            _in_progress(v, workload, image, builder, build, earlier)
    # Even after a success: the service keeps the droplet current (stack updates), and cannot.
    if workload.ready is not None and workload.ready.status == "False":
        v.problem(
            f"the service cannot reconcile the workload: {workload.ready.message or workload.ready.reason}",
            "the service retries with backoff: make what the message names exist or work "
            f"(kubectl describe buildworkload -n {workload.namespace} {workload.name})",
        )
    if workload.deleting:
        v.note("the workload is being deleted")
        for hold in holds:  # what its finalizer waits for, when it is the last of its Image generation
            v.note(hold)
    return v


def _unreadable(
    v: Verdict,
    image: ImageFacts | None,
    builder: BuilderFacts | None,
    build: BuildFacts | None,
    build_error: str | None,
) -> None:
    if image is not None and image.error:
        v.note(f"could not read the kpack Image: {image.error}", RBAC_HINT)
    if builder is not None and builder.error:
        v.note(f"could not read the {builder.ref.kind}: {builder.error}", RBAC_HINT)
    if build_error:
        v.note(f"could not list the kpack Builds: {build_error}", RBAC_HINT)
    if build is not None and build.pod is not None and build.pod.error:
        v.note(f"could not read pod {build.pod.name}: {build.pod.error}", RBAC_HINT)


def _failed(
    v: Verdict, w: WorkloadFacts, succeeded: Condition, builder: BuilderFacts | None, build: BuildFacts | None
) -> None:
    reason, message = succeeded.reason, succeeded.message
    v.problems.append(f"the build failed: {reason}: {message}" if message else f"the build failed: {reason}")
    ns, name = w.namespace, w.name
    if reason == k.BUILD_FAILED:
        step = build.failed_step if build is not None else None
        if step is not None:
            code = f", exit code {step.exit_code}" if step.exit_code is not None else ""
            v.steps(f'read the log of the failed step "{step.container}"{code}: {step.logs_command}')
            if build is not None and build.pod is not None and not build.pod.found and not build.pod.error:
                v.note(f"pod {step.pod} is gone (kpack prunes the pods of old Builds), and its log with it")
        elif w.failed_at and w.failed_at.get("pod") and w.failed_at.get("container"):
            pod, container = w.failed_at["pod"], w.failed_at["container"]
            v.steps(
                f'read the log of the failed step "{container}": kubectl logs -n {ns} {pod} -c {container}'
            )
        elif build is not None:
            v.steps(f"read kpack's message and Events: kubectl describe build -n {ns} {build.name}")
        else:
            v.steps(f"read the workload's Events: kubectl describe buildworkload -n {ns} {name}")
        v.steps("fix the app or its buildpacks, then push again")
    elif reason == k.BUILDER_NOT_READY:
        if builder is not None:
            _judge_builder(v, builder, problem=False)
        else:
            v.steps("check the ClusterBuilder the service is configured with: kubectl get clusterbuilders")
        v.steps(f"once the builder is Ready, {NEW_BUILD}")
    elif reason == k.BUILD_CANCELED:
        v.steps(f"the build was canceled (annotation {k.CANCEL_ANNOTATION}); {NEW_BUILD}")
    elif reason == k.BUILD_TIMEOUT:
        v.steps(
            f"the build ran longer than buildTimeout; {NEW_BUILD}", "raise buildTimeout if builds need longer"
        )
    elif reason == k.BUILD_POD_PENDING_TIMEOUT:
        v.steps(
            "fix what kept the build pod from starting (the message says what: capacity, quota, an image pull)",
            NEW_BUILD,
        )
    elif reason == k.INVALID_BUILDPACKS:
        v.steps("name buildpacks the builder offers (cf buildpacks) and push again")
    elif reason == k.KPACK_MISSED_BUILD:
        v.steps(
            f"a newer workload of the app changed the Image first; look at it: kubectl get buildworkloads -n {ns} "
            f"-l {k.APP_GUID_LABEL}={w.app_guid}"
        )
    elif reason == k.INVALID_WORKLOAD:
        v.steps("this workload can never be built: fix what creates it (the message says what is wrong)")
    elif reason == k.IMAGE_REJECTED:
        v.steps(
            f"kpack refused the Image; to start afresh: kubectl delete image -n {ns} {w.app_guid}, then push again"
        )
    elif reason == k.BUILDER_REJECTED:
        v.steps(
            "kpack refused the custom Builder for the workload's buildpacks: fix the buildpack list and push again"
        )
    else:
        v.steps(f"read the workload's Events: kubectl describe buildworkload -n {ns} {name}")


def _judge_builder(v: Verdict, builder: BuilderFacts, *, problem: bool = True) -> None:
    """The builder's own trouble; ``problem=False`` when the workload's condition already says it."""
    add = v.problem if problem else v.note
    ref = builder.ref
    if builder.error:
        return
    if not builder.found:
        if ref.kind == k.CLUSTER_BUILDER_KIND:
            add(
                f"{ref} not found",
                f"create ClusterBuilder {ref.name}, or configure the service with one that exists "
                "(clusterBuilderName; kubectl get clusterbuilders)",
            )
        else:
            add(
                f"{ref} not found",
                "the service makes the Builder of the workload's buildpacks again: read its logs",
            )
        return
    ready = builder.ready
    if ready is not None and ready.status == "False":
        why = ": ".join(part for part in (ready.reason, ready.message) if part)
        # kpack's UpToDate says why the builder could not be (re)built; its Ready only that it has no image.
        up_to_date = next(
            (c for c in builder.conditions if c.type == "UpToDate" and c.status == "False"), None
        )
        if up_to_date is not None and up_to_date.message:
            why += f" (UpToDate: {up_to_date.message})"
        add(
            f"{ref} is not Ready: {why}",
            f"check the builder: kubectl describe {ref.kubectl_name} (its stack, store and service account must "
            "be Ready); kpack builds nothing with it until it is",
        )
    elif ready is None or ready.status != "True":
        v.note(f"{ref} is not Ready yet")


def _in_progress(
    v: Verdict,
    w: WorkloadFacts,
    image: ImageFacts | None,
    builder: BuilderFacts | None,
    build: BuildFacts | None,
    earlier: BuildFacts | None,
) -> None:
    ns = w.namespace
    reconciled = w.succeeded is not None or w.ready is not None
    if not reconciled:
        v.note(
            "the service has not written a status yet",
            "if that lasts, check that kpack-image-builder is running and read its logs",
        )
    if w.cancel_requested:
        v.note("a cancel was asked for: the service stops the build")
    if not w.app_guid:
        v.note(f"the workload has no {k.APP_GUID_LABEL} label, so no kpack Image")
        return
    if image is not None and not image.found and not image.error:
        text = f"kpack Image {ns}/{w.app_guid} not found"
        if reconciled:
            v.problem(
                text,
                "the service creates it when it reconciles the workload: read its Ready condition and the service's logs",
            )
        else:
            v.note(text)
    problems = len(v.problems)
    if builder is not None:
        _judge_builder(v, builder)
    if build is None and earlier is not None:
        v.note(
            f"kpack is still running Build {earlier.name} of Image generation {earlier.generation}; it builds "
            f"generation {w.image_generation} once that one ends (one build at a time per Image)"
        )
        _judge_build(v, w, earlier)
    elif build is None:
        if w.image_generation:
            v.note(
                f"kpack has no Build for Image generation {w.image_generation} yet "
                "(it makes one once its builder is Ready)"
            )
    else:
        _judge_build(v, w, build)
    # A Build the service stopped for its deletion is why kpack's Image says BuildFailed.
    deleted = build is not None and build.succeeded is not None and build.succeeded.reason == k.BUILD_DELETED
    if (
        len(v.problems) == problems
        and not deleted
        and image is not None
        and image.ready is not None
        and image.ready.status == "False"
    ):
        # Nothing else explains it: kpack's own word on its Image.
        v.problem(
            f"kpack Image {ns}/{image.name} is not Ready: {image.ready.reason}: {image.ready.message}",
            f"kubectl describe image -n {ns} {image.name}",
        )


def _judge_build(v: Verdict, w: WorkloadFacts, build: BuildFacts) -> None:
    ns = build.namespace
    succeeded = build.succeeded
    if succeeded is not None and succeeded.status == "True":
        v.note(f"Build {build.name} succeeded; the service is about to write the droplet")
        return
    if succeeded is not None and succeeded.status == "False":
        if build.stopped_for:
            v.note(
                f"the service stopped Build {build.name} for workload {build.stopped_for}: {succeeded.reason}"
            )
            return
        if succeeded.reason == k.BUILD_DELETED:
            v.note(f"the service stopped Build {build.name}: {succeeded.message or 'it is being deleted'}")
            return
        step = build.failed_step
        if step is not None:
            v.problem(
                f'Build {build.name} failed in step "{step.container}"',
                f'read the log of the failed step "{step.container}": {step.logs_command}',
            )
        else:
            v.problem(
                f"Build {build.name} failed: {succeeded.reason}: {succeeded.message}",
                f"kubectl describe build -n {ns} {build.name}",
            )
        return
    pending = w.succeeded is not None and w.succeeded.reason == k.BUILD_POD_PENDING
    before = len(v.problems)
    pod = build.pod
    if build.pod_name is None:
        text = f"kpack has not made the pod of Build {build.name} yet"
        steps = (
            f"if that lasts, a ResourceQuota may refuse it: kubectl describe build -n {ns} {build.name} "
            f"(its Events), kubectl describe resourcequota -n {ns}",
        )
        (v.problem if pending else v.note)(text, *steps)
    elif pod is not None and not pod.found and not pod.error:
        v.note(f"pod {pod.name} of Build {build.name} is not there (kpack makes it again)")
    elif pod is not None and pod.found:
        describe = f"kubectl describe pod -n {ns} {pod.name}"
        if pod.scheduled is not None and pod.scheduled.status == "False":
            v.problem(
                f"pod {pod.name} cannot be scheduled: {pod.scheduled.reason}: {pod.scheduled.message}",
                "make room for it (the message says what is short) or lower cfStagingResources (memoryMB, diskMB)",
                describe,
            )
        elif pod.waiting is not None and pod.waiting.reason not in STARTING:
            waiting = pod.waiting
            v.problem(
                f'container "{waiting.container}" of pod {pod.name} cannot start: {waiting.reason}: {waiting.message}',
                f"{describe}: check the image it pulls and the pull secrets of its service account",
            )
    if len(v.problems) == before and succeeded is not None and succeeded.reason not in STARTING:
        # kpack copies a waiting container's reason onto its Build; the pod itself may not be readable.
        v.problem(
            f"Build {build.name} is waiting: {succeeded.reason}: {succeeded.message}",
            f"kubectl describe build -n {ns} {build.name}",
        )
    if len(v.problems) == before and pending and w.succeeded is not None:
        v.problem(
            f"the build pod cannot start: {w.succeeded.message}",
            f"kubectl describe build -n {ns} {build.name}",
        )
