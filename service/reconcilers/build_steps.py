"""Which step of a kpack Build failed, and where its log is (reference: kpack.md §3.7, §8.5).

kpack's Build status lists ``stepStates`` in pod order *without container names*, and ``stepsCompleted`` by
name. The pod runs ``prepare, analyze, detect, restore, build, export`` then ``completion`` — or, for a
rebase, ``rebase`` then ``completion``; the first step that did not complete is the one that failed. Its
log is ``kubectl logs -n <namespace> <pod> -c <step>`` while kpack keeps the pod (its history limits prune
Builds, and with them pods, later).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.runtime import Obj

LIFECYCLE_STEPS = ("prepare", "analyze", "detect", "restore", "build", "export", "completion")
REBASE_STEPS = ("rebase", "completion")


@dataclass(frozen=True, slots=True)
class FailedStep:
    namespace: str
    pod: str
    container: str
    exit_code: int | None  # None when the state carries none (a step killed before it started)

    @property
    def logs_command(self) -> str:
        return f"kubectl logs -n {self.namespace} {self.pod} -c {self.container}"

    def describe(self) -> str:
        code = f" (exit code {self.exit_code})" if self.exit_code is not None else ""
        return f'step "{self.container}" failed{code} in pod {self.pod}: {self.logs_command}'

    def as_status(self) -> Obj:
        return {"pod": self.pod, "container": self.container}


def _steps_of(states: list[Obj], completed: list[str]) -> tuple[str, ...]:
    if "rebase" in completed or len(states) == len(REBASE_STEPS):
        return REBASE_STEPS
    return LIFECYCLE_STEPS


def failed_step(build: Obj) -> FailedStep | None:
    """The failed step of a finished Build; None when the Build never had a pod (kpack could not make
    one: its condition message says why) or no step failed."""
    status = build.get("status") or {}
    pod = status.get("podName") or ""
    if not pod:
        return None
    states = [s if isinstance(s, dict) else {} for s in status.get("stepStates") or ()]
    completed = [str(s) for s in status.get("stepsCompleted") or ()]
    steps = _steps_of(states, completed)
    namespace = str(build["metadata"].get("namespace", ""))
    # The first state that terminated with a non-zero exit code, by index (the states have no names).
    for index, state in enumerate(states[: len(steps)]):
        terminated = state.get("terminated") or {}
        code = terminated.get("exitCode")
        if isinstance(code, int) and code != 0:
            return FailedStep(namespace, pod, steps[index], code)
    # No exit code to go by (the pod was killed, or its states were not written): the first step that did
    # not complete.
    for step in steps:
        if step not in completed:
            return FailedStep(namespace, pod, step, None)
    return None
