"""Stopping a workload's kpack Build: a cancel asked for, the build timeout, a pod that never starts.

kpack has no cancel. What it does guarantee (kpack.md §3.2, §3.7): a Build whose ``Succeeded`` is
``True`` or ``False`` is never touched again — its pod is not remade — and after a failed Build the Image
builds again only for a new trigger, commit or config, never by itself. So a Build is stopped by
(1) marking it ``stopped-for`` this workload (a later workload that asks for the same build can tell a
stop from a failure, and asks for a new one: ``track``), (2) writing its ``Succeeded=False`` with the
stop's reason, and (3) deleting its pod (``service.reconcilers.build_stop``). The workload stays
``Succeeded=Unknown`` with that reason until the stop is done: the pod gone, looked at again at least
``CONFIRM_POLL`` after the Build's status was written. Then ``Succeeded=False``.

A Build is *stopped by* a workload only when both writes landed (``stopped_by``): marked for it and
``Succeeded=False`` with a stop's reason. A Build marked but finished by kpack before the stop's status
write (which then conflicts) keeps kpack's outcome, and the workload takes it as usual: a cancel or
timeout never touches a completed build, as Shipwright's BuildRun.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.kube.client import KubeClient
from service.kube.conditions import find
from service.kube.resources import BUILD
from service.kube.server_clock import server_now
from service.kube.timestamps import seconds_since
from service.reconcilers import korifi as k
from service.reconcilers.build_stop import (
    is_running,
    pod_gone,
    pod_name,
    still_to_wait,
    stop_written_at,
    write_stop,
)
from service.reconcilers.buildworkload.attempt import Pass
from service.runtime import Obj, Result

log = logging.getLogger("service.reconcilers.buildworkload")

STOP_REASONS = (k.BUILD_CANCELED, k.BUILD_TIMEOUT, k.BUILD_POD_PENDING_TIMEOUT)


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


def age(obj: Obj) -> float:
    return seconds_since(obj["metadata"].get("creationTimestamp"))


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
        written = stop_written_at(build, STOP_REASONS) if stopped_by(build) is not None else None
        if is_running(build):
            await self._finish(build, attempt.name, stop)
            written = server_now()
            log.info(
                "stopping a kpack Build",
                extra={
                    "namespace": namespace,
                    "build": name,
                    "workload": attempt.name,
                    "reason": stop.reason,
                },
            )
        wait = still_to_wait(written, await pod_gone(self.client, namespace, pod))
        if wait is None:
            attempt.fail(stop.reason, f"{stop.why}: kpack Build {name} stopped")
            return None
        return Result(requeue_after=wait)

    async def _finish(self, build: Obj, workload: str, stop: Stop) -> None:
        """Mark the Build stopped for this workload, then finished: kpack leaves it alone from then on."""
        meta = build["metadata"]
        if stopped_for(build) != workload:
            written = await self.client.merge_patch(
                BUILD,
                meta["name"],
                {
                    "metadata": {
                        "annotations": {k.STOPPED_FOR_ANNOTATION: workload},
                        "resourceVersion": meta["resourceVersion"],
                    }
                },
                meta["namespace"],
            )
            build = {**build, "metadata": {**meta, "resourceVersion": written["metadata"]["resourceVersion"]}}
        why = f"stopped by kpack-image-builder for build workload {workload}: {stop.why}"
        await write_stop(self.client, build, stop.reason, why)
