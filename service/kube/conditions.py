"""Status conditions: ``metav1.Condition`` lists (as Korifi writes them) and knative-style ones (as kpack
writes them) — found and read the same way.

``set_condition`` follows apimachinery's ``meta.SetStatusCondition``: ``lastTransitionTime`` moves only
when the status flips, so a condition rewritten with the same status keeps the time it first took it.
Messages are cut to ``metav1.Condition``'s 32768-character limit: a longer one would make the API server
refuse the whole status write (422), and the object would show no status at all.
"""

from __future__ import annotations

from typing import Any

from service.kube.server_clock import server_time
from service.kube.timestamps import rfc3339

Obj = dict[str, Any]

MAX_MESSAGE = 32768  # metav1.Condition's message maxLength


def find(conditions: list[Obj] | None, type_: str) -> Obj | None:
    for condition in conditions or ():
        if isinstance(condition, dict) and condition.get("type") == type_:
            return condition
    return None


def condition_of(obj: Obj | None, type_: str) -> Obj | None:
    """``obj``'s condition ``type_``, or None."""
    return find(((obj or {}).get("status") or {}).get("conditions"), type_)


def status_of(obj: Obj | None, type_: str) -> str | None:
    """The status (``True``/``False``/``Unknown``) of ``obj``'s condition ``type_``, or None if absent."""
    condition = condition_of(obj, type_)
    return None if condition is None else str(condition.get("status"))


def is_true(obj: Obj | None, type_: str) -> bool:
    return status_of(obj, type_) == "True"


def set_condition(
    conditions: list[Obj],
    type_: str,
    status: str,
    reason: str,
    message: str,
    observed_generation: int | None,
    *,
    now: str | None = None,
) -> bool:
    """Add or update one condition in place; True if anything changed."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    existing = find(conditions, type_)
    if existing is None:
        condition: Obj = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now or rfc3339(server_time()),
        }
        if observed_generation is not None:
            condition["observedGeneration"] = observed_generation
        conditions.append(condition)
        return True
    before = dict(existing)
    if existing.get("status") != status:
        existing["status"] = status
        existing["lastTransitionTime"] = now or rfc3339(server_time())
    existing["reason"] = reason
    existing["message"] = message
    if observed_generation is not None:
        existing["observedGeneration"] = observed_generation
    return existing != before
