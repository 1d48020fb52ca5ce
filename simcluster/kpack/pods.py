"""The build pod: the core/v1 Pod kpack makes for a Build, the statuses a kubelet would give it, and the
Build status kpack derives from it.

kpack's Build reconciler creates ``<build>-build-pod`` (knative's ``ChildName``) in the Build's namespace,
owned by the Build, labelled with the Build's labels plus ``kpack.io/build: <build>``, annotated with the
Build's annotations plus ``sidecar.istio.io/inject: "false"`` (kpack.md §2.2). Its init containers are the
lifecycle steps (``prepare, analyze, detect, restore, build, export``, or ``rebase``) and its one container is
``completion``, with ``restartPolicy: Never``. The simulator gives it no ``nodeName`` (there are no nodes):
kube-apiserver then deletes it at once, with no grace period, which is what a canceling client waits for.

No kubelet runs the pod, so the simulator writes its status through ``pods/status`` as one would: the
waiting states while it initializes, the terminated states (exit codes and all) when it ends, and the
states of a pod that cannot start (``PodPending``: unschedulable, an image pull backing off). kpack reads
the Build's status from that pod (kpack.md §3.7): ``build_status_from_pod`` is that reading, so the Build
shows exactly what the pod says. A terminated state keeps an empty message, as the lifecycle's containers
write none; kpack fills in ``Container <step> terminated successfully`` when it copies the state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.kube.timestamps import rfc3339
from simcluster.kpack.base import Obj, controller_ref
from simcluster.kpack.options import ANNOTATION_POD_PENDING

BUILD_LABEL = "kpack.io/build"
STEPS = ("prepare", "analyze", "detect", "restore", "build", "export")
REBASE_STEPS = ("rebase",)
COMPLETION = "completion"
# kpack's completion binary: its image is kpack's own, not the builder's.
COMPLETION_IMAGE = "ghcr.io/buildpacks-community/kpack/completion"
# The image a step uses when the Build names no builder image (a container must name one).
UNKNOWN_IMAGE = "ghcr.io/buildpacks-community/kpack/unknown-builder"

# The knob's states (annotation ``sim.kpack.io/pod-pending``).
UNSCHEDULABLE, IMAGE_PULL, QUOTA = "unschedulable", "image-pull", "quota"
UNSCHEDULABLE_MESSAGE = "0/3 nodes are available: 3 Insufficient memory."


@dataclass(frozen=True, slots=True)
class PodPending:
    """Why the build pod cannot start (``state``), with the message given after the colon, if any."""

    state: str
    message: str = ""


def pod_pending(annotations: dict[str, str]) -> PodPending | None:
    """The knob on a Build, if it names a known state (another value is no knob at all)."""
    value = annotations.get(ANNOTATION_POD_PENDING)
    if value is None:
        return None
    state, _, message = value.partition(":")
    state = state.strip().lower()
    if state not in (UNSCHEDULABLE, IMAGE_PULL, QUOTA):
        return None
    return PodPending(state, message.strip())


def quota_message(pod: str, pending: PodPending) -> str:
    """What kube-apiserver's ResourceQuota admission says when the pod would exceed a quota."""
    why = pending.message or (
        "exceeded quota: compute-resources, requested: limits.memory=1Gi, used: limits.memory=4Gi, "
        "limited: limits.memory=4Gi"
    )
    return f'pods "{pod}" is forbidden: {why}'


def pod_object(build: Obj, name: str, steps: Sequence[str], image: str) -> Obj:
    """The Pod kpack creates for ``build``."""
    meta = build["metadata"]
    spec = build.get("spec") or {}
    labels = {**(meta.get("labels") or {}), BUILD_LABEL: meta["name"]}
    annotations = {**(meta.get("annotations") or {}), "sidecar.istio.io/inject": "false"}
    step_image = image or UNKNOWN_IMAGE
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [controller_ref({**build, "kind": "Build"})],
        },
        "spec": {
            "serviceAccountName": spec.get("serviceAccountName") or "default",
            "restartPolicy": "Never",
            "initContainers": [{"name": s, "image": step_image} for s in steps],
            "containers": [{"name": COMPLETION, "image": COMPLETION_IMAGE}],
        },
    }


@dataclass(frozen=True, slots=True)
class Timeline:
    """When the pod started and how long its run takes: each container gets an equal slot."""

    steps: tuple[str, ...]
    started_at: datetime
    duration: float
    ids: dict[str, str]  # container name -> containerID

    def terminated(self, name: str, exit_code: int = 0, message: str = "") -> Obj:
        index = self.steps.index(name) if name in self.steps else len(self.steps)
        slot = timedelta(seconds=self.duration / (len(self.steps) + 1))
        started = self.started_at + slot * index
        state: Obj = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": rfc3339(started),
            "finishedAt": rfc3339(started + slot),
            "containerID": self.ids[name],
        }
        if message:
            state["message"] = message
        return {"terminated": state}


def _waiting(reason: str = "PodInitializing", message: str = "") -> Obj:
    waiting: Obj = {"reason": reason}
    if message:
        waiting["message"] = message
    return {"waiting": waiting}


def _container(name: str, image: str, state: Obj) -> Obj:
    return {
        "name": name,
        "state": state,
        "lastState": {},
        "ready": False,
        "restartCount": 0,
        "image": image,
        "imageID": "",
        "started": False,
        **({"containerID": state["terminated"]["containerID"]} if "terminated" in state else {}),
    }


def _condition(type_: str, status: str, reason: str = "", message: str = "") -> Obj:
    c: Obj = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": rfc3339()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _conditions(initialized: bool, done: bool, unfinished: Sequence[str]) -> list[Obj]:
    ready_reason = "PodCompleted" if done else "ContainersNotReady"
    ready_message = "" if done else f"containers with unready status: [{COMPLETION}]"
    if initialized:
        init = _condition("Initialized", "True", "PodCompleted" if done else "")
    else:
        listed = " ".join(unfinished)
        init = _condition(
            "Initialized",
            "False",
            "ContainersNotInitialized",
            f"containers with incomplete status: [{listed}]",
        )
    return [
        init,
        _condition("Ready", "False", ready_reason, ready_message),
        _condition("ContainersReady", "False", ready_reason, ready_message),
        _condition("PodScheduled", "True"),
    ]


def _status(
    phase: str,
    timeline: Timeline,
    images: dict[str, str],
    states: Sequence[Obj],
    *,
    initialized: bool = False,
    done: bool = False,
) -> Obj:
    steps = timeline.steps
    unfinished = [s for s, st in zip(steps, states, strict=False) if "terminated" not in st]
    return {
        "phase": phase,
        "conditions": _conditions(initialized, done, unfinished),
        "startTime": rfc3339(timeline.started_at),
        "initContainerStatuses": [
            _container(s, images[s], st) for s, st in zip(steps, states[: len(steps)], strict=True)
        ],
        "containerStatuses": [_container(COMPLETION, images[COMPLETION], states[len(steps)])],
    }


def images_of(pod: Obj) -> dict[str, str]:
    spec = pod.get("spec") or {}
    return {
        c["name"]: c.get("image", "")
        for c in (*(spec.get("initContainers") or ()), *spec.get("containers", ()))
    }


def initializing(timeline: Timeline, images: dict[str, str]) -> Obj:
    """Running its steps: every container waiting, as kpack sees a pod whose init containers run."""
    states = [_waiting() for _ in (*timeline.steps, COMPLETION)]
    return _status("Pending", timeline, images, states)


def image_pull_back_off(timeline: Timeline, images: dict[str, str], message: str) -> Obj:
    """The first step's image cannot be pulled; the others wait for it."""
    states = [_waiting("ImagePullBackOff", message)] + [_waiting() for _ in (*timeline.steps[1:], COMPLETION)]
    return _status("Pending", timeline, images, states)


def unschedulable(message: str) -> Obj:
    """No node fits: no container has a status (``null`` removes earlier ones in a merge patch)."""
    return {
        "phase": "Pending",
        "conditions": [_condition("PodScheduled", "False", "Unschedulable", message)],
        "startTime": None,
        "initContainerStatuses": None,
        "containerStatuses": None,
    }


def succeeded(timeline: Timeline, images: dict[str, str], completion_message: str) -> Obj:
    states = [timeline.terminated(s) for s in timeline.steps]
    states.append(timeline.terminated(COMPLETION, message=completion_message))
    return _status("Succeeded", timeline, images, states, initialized=True, done=True)


def failed(timeline: Timeline, images: dict[str, str], step: str, exit_code: int) -> Obj:
    at = timeline.steps.index(step)
    states: list[Obj] = []
    for i, s in enumerate(timeline.steps):
        if i < at:
            states.append(timeline.terminated(s))
        elif i == at:
            states.append(timeline.terminated(s, exit_code))
        else:
            states.append(_waiting())
    states.append(_waiting())
    return _status("Failed", timeline, images, states, done=True)


# ---------------------------------------------------------------------- what kpack reads from the pod
def _filled(name: str, state: Obj) -> Obj:
    """A container state as kpack copies it into ``stepStates``, empty messages filled in."""
    if "terminated" in state:
        t = dict(state["terminated"])
        if not t.get("message"):
            ok = t.get("exitCode", 0) == 0
            t["message"] = f"Container {name} terminated {'successfully' if ok else 'with error'}"
        return {"terminated": t}
    if "waiting" in state:
        w = dict(state["waiting"])
        if not w.get("message"):
            w["message"] = f"Container {name} waiting"
        return {"waiting": w}
    return dict(state)


def _statuses(status: Obj) -> list[Obj]:
    return [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]


def step_states(status: Obj, steps: Sequence[str]) -> list[Obj]:
    """``stepStates``: the step containers' states, init containers then containers, in order."""
    names = {*steps, COMPLETION}
    return [_filled(c["name"], c.get("state") or {}) for c in _statuses(status) if c["name"] in names]


def steps_completed(status: Obj, steps: Sequence[str]) -> list[str]:
    names = {*steps, COMPLETION}
    return [
        c["name"]
        for c in _statuses(status)
        if c["name"] in names and ((c.get("state") or {}).get("terminated") or {}).get("exitCode", 1) == 0
    ]


def first_waiting_init(status: Obj) -> tuple[str, str] | None:
    """The reason and (filled in) message of the first waiting init container, if any."""
    for c in status.get("initContainerStatuses") or ():
        state = c.get("state") or {}
        if "waiting" in state:
            waiting = _filled(c["name"], state)["waiting"]
            return str(waiting.get("reason", "")), str(waiting.get("message", ""))
    return None


def failed_step(status: Obj) -> tuple[str, Obj] | None:
    """The first init container that terminated with a non-zero exit, and its state as kpack fills it."""
    for c in status.get("initContainerStatuses") or ():
        state = c.get("state") or {}
        if (state.get("terminated") or {}).get("exitCode", 0) != 0:
            return c["name"], _filled(c["name"], state)["terminated"]
    return None


def completion_message(status: Obj) -> str:
    for c in status.get("containerStatuses") or ():
        if c["name"] == COMPLETION:
            return str(((c.get("state") or {}).get("terminated") or {}).get("message", ""))
    return ""
