"""A build pod that cannot start, in words a person can act on (issue: builds that wait for ever).

kpack copies into its Build's ``Succeeded=Unknown`` the reason and message of the pod's first *waiting*
init container (``ImagePullBackOff``, ``CreateContainerConfigError``…; kpack.md §3.7), but says nothing
of a pod the scheduler cannot place (``PodScheduled=False``: "0/3 nodes are available…") and nothing of a
pod the API refused to create (a ResourceQuota: kpack logs it and retries). For those the pod itself is
read — only for a Build that has run a while without a word (``POD_CHECK_AFTER``) and whose steps kpack
has not yet seen run (``stepStates``), then ever less often, so that a build that simply runs costs no
reads once its first step has started.
"""

from __future__ import annotations

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.conditions import find
from service.kube.resources import POD
from service.reconcilers import korifi as k
from service.reconcilers.build_stop import pod_name
from service.reconcilers.buildworkload.stopping import age
from service.runtime import Obj

NORMAL_WAITING = frozenset({"PodInitializing", "ContainerCreating"})  # a pod on its way
POD_CHECK_AFTER = 10.0  # seconds a Build runs without a word before its pod is read
POD_CHECK_MAX = 60.0


def check_after(limit: float) -> float:
    """How long a Build runs without a word before its pod is read: soon enough to say why well before
    ``buildPodPendingTimeout`` (``limit``; 0 means none) ends it."""
    return min(POD_CHECK_AFTER, limit / 2) if limit else POD_CHECK_AFTER


def next_check(build: Obj, limit: float) -> float:
    """Seconds until the pod of this running Build is looked at (again)."""
    elapsed, first = age(build), check_after(limit)
    if elapsed < first:
        return first - elapsed
    return min(POD_CHECK_MAX, max(first, elapsed / 2))


def _started(build: Obj) -> bool:
    """kpack copied the pod's step states and one has run: the pod was placed and started."""
    for state in (build.get("status") or {}).get("stepStates") or ():
        if isinstance(state, dict) and (state.get("running") or state.get("terminated")):
            return True
    return False


async def problem(client: KubeClient, build: Obj, limit: float) -> str | None:
    """Why the running Build's pod has not started, or None if nothing says it cannot."""
    condition = find((build.get("status") or {}).get("conditions"), k.SUCCEEDED) or {}
    reason, message = condition.get("reason") or "", condition.get("message") or ""
    pod = pod_name(build)
    if reason and reason not in NORMAL_WAITING:
        return f"{reason}: {message} (pod {pod})" if message else f"{reason} (pod {pod})"
    if reason or age(build) < check_after(limit) or _started(build):
        return None  # initializing, too young to tell, or its steps run: no read needed
    try:
        found = await client.get(POD, pod, build["metadata"]["namespace"])
    except errors.NotFound:
        return (
            f"kpack has not created the build pod {pod}: a ResourceQuota or LimitRange may refuse it "
            "(kpack's controller log says why)"
        )
    status = found.get("status") or {}
    scheduled = find(status.get("conditions"), "PodScheduled") or {}
    if scheduled.get("status") == "False":
        why = scheduled.get("message") or scheduled.get("reason") or "not scheduled"
        return f"{why} (pod {pod})"
    for container in status.get("initContainerStatuses") or ():
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in NORMAL_WAITING:
            return f"{waiting['reason']}: {waiting.get('message', '')} (pod {pod}, container {container.get('name')})"
    return None
