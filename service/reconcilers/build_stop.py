"""Stopping a kpack Build, for whoever needs one stopped: a workload's cancel or timeout
(``buildworkload.stopping``), and a Build deleted while its pod may still push (``kpackbuild``).

kpack has no cancel. What it does guarantee (kpack.md §3.2, §3.7): a Build whose ``Succeeded`` is
``True`` or ``False`` is never touched again — its pod is not remade. So a Build is stopped by writing its
``Succeeded=False`` with the stop's reason, then deleting its pod. The write is guarded by the
resourceVersion: if kpack finished the Build meanwhile, it is a conflict, and kpack's outcome stands.

The stop is done once the API no longer has the pod, looked at no sooner than ``CONFIRM_POLL`` after the
status was written: a kpack whose cache had not yet seen that status may make the pod once more (it is
deleted again), and a push the pod had on the wire when it was killed has landed by then.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.conditions import find, status_of
from service.kube.resources import BUILD, POD
from service.kube.server_clock import server_now, server_time
from service.kube.timestamps import parse_rfc3339, rfc3339
from service.reconcilers import korifi as k
from service.runtime import Obj

CONFIRM_POLL = 2.0  # how soon to look again for a pod that is still there after its delete
# Every reason this service writes on a Build it stops: a workload's stops, and a deleted Build's.
STOPPED_BY_SERVICE = (k.BUILD_CANCELED, k.BUILD_TIMEOUT, k.BUILD_POD_PENDING_TIMEOUT, k.BUILD_DELETED)


def is_running(build: Obj) -> bool:
    return status_of(build, k.SUCCEEDED) in (None, "Unknown")


def pod_name(build: Obj) -> str:
    """The Build's pod: kpack writes its name in the status (``<build>-build-pod`` for every name short
    enough; kpack.md §3.8)."""
    return str((build.get("status") or {}).get("podName") or f"{build['metadata']['name']}-build-pod")


def stop_written_at(build: Obj, reasons: Collection[str]) -> datetime | None:
    """When a stop with one of ``reasons`` was written on the Build (its ``Succeeded=False``), if one was."""
    condition = find((build.get("status") or {}).get("conditions"), k.SUCCEEDED) or {}
    if condition.get("status") != "False" or condition.get("reason") not in reasons:
        return None
    return parse_rfc3339(condition.get("lastTransitionTime"))


async def write_stop(client: KubeClient, build: Obj, reason: str, message: str) -> None:
    """Write the Build's ``Succeeded=False``, guarded by the resourceVersion of ``build``."""
    meta = build["metadata"]
    condition = {
        "type": k.SUCCEEDED,
        "status": "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(server_time()),
    }
    await client.patch_status(
        BUILD,
        meta["name"],
        {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": {"conditions": [condition]}},
        meta["namespace"],
    )


async def pod_gone(client: KubeClient, namespace: str, pod: str) -> bool:
    """Delete the pod if it is there; whether the API no longer has it."""
    for attempt in range(2):
        try:
            found = await client.get(POD, pod, namespace)
        except errors.NotFound:
            return True
        if attempt == 1 or found["metadata"].get("deletionTimestamp"):
            return False  # terminating on its node: looked at again shortly
        try:
            await client.delete(POD, pod, namespace)
        except errors.NotFound:
            return True
    return False


def still_to_wait(written: datetime | None, gone: bool) -> float | None:
    """How long to wait before the stop written at ``written`` counts as done, the pod being ``gone`` or
    not; None when it is done."""
    # The timestamp has whole seconds: count from the end of that second, so the look is never early.
    since = (server_now() - written).total_seconds() - 1.0 if written else 0.0
    if gone and since >= CONFIRM_POLL:
        return None
    return max(0.5, CONFIRM_POLL - since) if gone else CONFIRM_POLL
