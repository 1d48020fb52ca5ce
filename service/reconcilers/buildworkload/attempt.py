"""One reconcile of one workload — a *pass* — and the two ways a pass ends short of done.

A pass changes a copy of the cached workload; the reconciler stores what changed, then records the
Events the pass collected. Events wait for the write: a pass whose write conflicts is retried from fresh
state, and its Events would otherwise be recorded once per try.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.kube.conditions import set_condition, status_of
from service.kube.objects import generation
from service.kube.timestamps import seconds_since
from service.reconcilers import korifi as k
from service.runtime import Obj, Request, expected

WAIT_POLL_MAX = 30.0  # at most this long between looks for a Secret or ServiceAccount a workload waits for


class Failure(Exception):
    """A reconcile that failed: its message becomes ``Ready=False/Unknown`` and it is retried with backoff
    (registry calls, unusable labels, as Korifi's plain errors).

    Ordinary weather (logged without a traceback) unless it wraps something that is not: a failure made
    of a bug keeps the bug's traceback in the log."""

    @property
    def expected(self) -> bool:
        cause = self.__cause__
        return cause is None or expected(cause)


class Waiting(Exception):
    """The workload waits for something another actor makes (a pull secret, the builder service account):
    ``Ready=False`` says what, and it is looked at again within ``WAIT_POLL_MAX`` — not after an error's
    backoff, which grows to many minutes — and not counted as a reconcile error."""


def conditions(obj: Obj) -> list[Obj]:
    """The object's status conditions, created empty if missing (to be set in place)."""
    value: list[Obj] = obj.setdefault("status", {}).setdefault("conditions", [])
    return value


def completed(workload: Obj) -> bool:
    return status_of(workload, k.SUCCEEDED) in ("True", "False")


def is_ours(workload: Obj) -> bool:
    return (workload.get("spec") or {}).get("builderName") == k.BUILDER_NAME


@dataclass
class Pass:
    """The copy the phases change, and the Events to record once the changes are stored."""

    request: Request
    work: Obj
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return str(self.work["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.work["metadata"]["name"])

    def age(self) -> float:
        """Seconds since the workload was created (0 if unknown)."""
        return seconds_since(self.work["metadata"].get("creationTimestamp"))

    def wait_poll(self) -> float:
        """How soon to look again at something the workload waits for: soon while it is young."""
        return min(WAIT_POLL_MAX, max(1.0, self.age() / 2))

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def succeeded(self, status: str, reason: str, message: str) -> None:
        set_condition(conditions(self.work), k.SUCCEEDED, status, reason, message, generation(self.work))

    def fail(self, reason: str, message: str) -> None:
        """``Succeeded=False`` for good, with a Warning Event saying the same."""
        self.succeeded("False", reason, message)
        self.event("Warning", reason, message)
