"""Stopping a workload's kpack Build: a cancel asked for, the build timeout, a pod that never starts.

kpack has no cancel. What it does guarantee (kpack.md §3.2, §3.7): a Build whose ``Succeeded`` is
``True`` or ``False`` is never touched again — its pod is not remade — and after a failed Build the Image
builds again only for a new trigger, commit or config, never by itself. So a Build is stopped by
(1) marking it ``stopped-for`` this workload (a later workload that asks for the same build can tell a
stop from a failure, and asks for a new one: ``track``), (2) writing its ``Succeeded=False`` with the
stop's reason, and (3) deleting its pod. The workload stays ``Succeeded=Unknown`` with that reason until
the API says the pod is gone, looked at again at least ``CONFIRM_POLL`` after the Build's status was
written: a kpack whose cache had not yet seen that status may make the pod once more, and it is deleted
again. Then ``Succeeded=False``.

A Build is *stopped by* a workload only when both writes landed (``stopped_by``): marked for it and
``Succeeded=False`` with a stop's reason. A Build marked but finished by kpack before the stop's status
write (which then conflicts) keeps kpack's outcome, and the workload takes it as usual: a cancel or
timeout never touches a completed build, as Shipwright's BuildRun.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.conditions import find, status_of
from service.kube.resources import BUILD, POD
from service.kube.timestamps import parse_rfc3339, rfc3339
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload.attempt import Pass
from service.runtime import Obj, Result

log = logging.getLogger("service.reconcilers.buildworkload")

STOP_REASONS = (k.BUILD_CANCELED, k.BUILD_TIMEOUT, k.BUILD_POD_PENDING_TIMEOUT)
CONFIRM_POLL = 2.0  # how soon to look again for a pod that is still there after its delete


@dataclass(frozen=True, slots=True)
class Stop:
    reason: str  # one of STOP_REASONS
    why: str  # what asked for it, for the messages


def cancel_requested(work: Obj) -> bool:
    annotations = work["metadata"].get("annotations") or {}
    return str(annotations.get(k.CANCEL_ANNOTATION, "")).strip().lower() == "true"


def stopping(work: Obj) -> str | None:
    """The reason of the stop already under way for this workload (its ``Succeeded=Unknown``), if any."""
    condition = find((work.get("status") or {}).get("conditions"), k.SUCCEEDED) or {}
    if condition.get("status") == "Unknown" and condition.get("reason") in STOP_REASONS:
        return str(condition["reason"])
    return None


def stopped_for(build: Obj) -> str | None:
    """The workload a Build was stopped for, if this service stopped it."""
    value = (build["metadata"].get("annotations") or {}).get(k.STOPPED_FOR_ANNOTATION)
    return str(value) if value is not None else None


def stopped_by(build: Obj) -> str | None:
    """The workload this service stopped a Build for: marked for it *and* finished with a stop's reason
    (a Build marked, then finished by kpack before the stop's status write, was not stopped)."""
    condition = find((build.get("status") or {}).get("conditions"), k.SUCCEEDED) or {}
    if condition.get("status") == "False" and condition.get("reason") in STOP_REASONS:
        return stopped_for(build)
    return None


def stop_written_at(build: Obj) -> datetime | None:
    """When the stop's ``Succeeded=False`` was written on a Build stopped by this service."""
    if stopped_by(build) is None:
        return None
    condition = find((build.get("status") or {}).get("conditions"), k.SUCCEEDED) or {}
    return parse_rfc3339(condition.get("lastTransitionTime"))


def is_running(build: Obj) -> bool:
    return status_of(build, k.SUCCEEDED) in (None, "Unknown")


def age(obj: Obj) -> float:
    created = parse_rfc3339(obj["metadata"].get("creationTimestamp"))
    return (datetime.now(UTC) - created).total_seconds() if created else 0.0


def pod_name(build: Obj) -> str:
    """The Build's pod: kpack writes its name in the status (``<build>-build-pod`` for every name short
    enough; kpack.md §3.8)."""
    return str((build.get("status") or {}).get("podName") or f"{build['metadata']['name']}-build-pod")


class Stopper:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def __call__(self, attempt: Pass, stop: Stop, build: Obj | None) -> Result | None:
        """Drive the stop one step; the workload's condition says where it is."""
        if build is not None and not is_running(build) and stopped_by(build) != attempt.name:
            return None  # finished on its own first: the caller takes its outcome
        if build is None:
            # No Build for this workload's generation (yet): nothing runs that could be stopped.
            attempt.fail(stop.reason, f"{stop.why}: no kpack Build was running")
            return None
        name, namespace = build["metadata"]["name"], attempt.namespace
        pod = pod_name(build)
        attempt.succeeded("Unknown", stop.reason, f"{stop.why}: stopping kpack Build {name} (pod {pod})")
        written = stop_written_at(build)
        if is_running(build):
            await self._finish(build, attempt.name, stop)
            written = datetime.now(UTC)
            log.info(
                "stopping a kpack Build",
                extra={
                    "namespace": namespace,
                    "build": name,
                    "workload": attempt.name,
                    "reason": stop.reason,
                },
            )
        gone = await self._pod_gone(namespace, pod)
        # The timestamp has whole seconds: count from the end of that second, so the look is never early.
        since = (datetime.now(UTC) - written).total_seconds() - 1.0 if written else 0.0
        if gone and since >= CONFIRM_POLL:
            attempt.fail(stop.reason, f"{stop.why}: kpack Build {name} stopped")
            return None
        return Result(requeue_after=max(0.5, CONFIRM_POLL - since) if gone else CONFIRM_POLL)

    async def _finish(self, build: Obj, workload: str, stop: Stop) -> None:
        """Mark the Build stopped for this workload, then finished: kpack leaves it alone from then on."""
        meta = build["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        rv = meta["resourceVersion"]
        if stopped_for(build) != workload:
            written = await self.client.merge_patch(
                BUILD,
                name,
                {"metadata": {"annotations": {k.STOPPED_FOR_ANNOTATION: workload}, "resourceVersion": rv}},
                namespace,
            )
            rv = written["metadata"]["resourceVersion"]
        condition = {
            "type": k.SUCCEEDED,
            "status": "False",
            "reason": stop.reason,
            "message": f"stopped by kpack-image-builder for build workload {workload}: {stop.why}",
            "lastTransitionTime": rfc3339(datetime.now(UTC)),
        }
        # Guarded by resourceVersion: if kpack finished the Build meanwhile, this is a conflict and the next
        # pass sees kpack's outcome.
        await self.client.patch_status(
            BUILD,
            name,
            {"metadata": {"resourceVersion": rv}, "status": {"conditions": [condition]}},
            namespace,
        )

    async def _pod_gone(self, namespace: str, pod: str) -> bool:
        """Delete the pod if it is there; whether the API no longer has it."""
        for attempt in range(2):
            try:
                found = await self.client.get(POD, pod, namespace)
            except errors.NotFound:
                return True
            if attempt == 1 or found["metadata"].get("deletionTimestamp"):
                return False  # terminating on its node: looked at again shortly
            try:
                await self.client.delete(POD, pod, namespace)
            except errors.NotFound:
                return True
        return False
