"""Kubernetes' time formats: ``metav1.Time`` (RFC 3339 in UTC, whole seconds) and ``MicroTime``
(microseconds), written and read the one way the API server does."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from service.kube.server_clock import server_now

TIME = "%Y-%m-%dT%H:%M:%SZ"
MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def _moment(at: datetime | float | None) -> datetime:
    """``at`` in UTC: now by default; an aware datetime converted, a naive one taken as UTC already."""
    if at is None:
        return datetime.now(UTC)
    if isinstance(at, datetime):
        return at if at.tzinfo is None else at.astimezone(UTC)
    return datetime.fromtimestamp(at, UTC)


# The last second written, and how: a reconcile stamps its conditions and Events with "now", many times
# within one second, and strftime was a per-cent of the service's CPU.
_last_second: tuple[int, str] = (-1, "")


def rfc3339(at: datetime | float | None = None) -> str:
    """A ``metav1.Time``: ``at`` (a datetime or a Unix time; default now) to the second, in UTC (a naive
    datetime is taken as UTC)."""
    global _last_second
    if isinstance(at, datetime):
        return _moment(at).strftime(TIME)
    second = math.floor(time.time() if at is None else at)
    if second != _last_second[0]:
        _last_second = (second, datetime.fromtimestamp(second, UTC).strftime(TIME))
    return _last_second[1]


def micro_time(at: datetime | float | None = None) -> str:
    """A ``metav1.MicroTime`` (Leases, events.k8s.io): RFC 3339 with microseconds, in UTC."""
    return _moment(at).strftime(MICRO_TIME)


def parse_rfc3339(value: str | None) -> datetime | None:
    """A ``metav1.Time`` as written by the API server; None when absent or malformed."""
    if not value:
        return None
    try:
        if len(value) == 20 and value[4] == value[7] == "-" and value[10] == "T" and value[19] == "Z":
            # The only form the API server writes, read by the C parser (strptime is ten times slower);
            # the checks keep it to exactly that form, as the strptime below is.
            return datetime.fromisoformat(value)
        return datetime.strptime(value, TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


def seconds_since(value: str | None) -> float:
    """Seconds from a ``metav1.Time`` the API server wrote to now by the server's clock (0 when absent or
    malformed)."""
    at = parse_rfc3339(value)
    return (server_now() - at).total_seconds() if at else 0.0
