"""Kubernetes' time formats: ``metav1.Time`` (RFC 3339 in UTC, whole seconds) and ``MicroTime``
(microseconds), written and read the one way the API server does."""

from __future__ import annotations

from datetime import UTC, datetime

TIME = "%Y-%m-%dT%H:%M:%SZ"
MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def _moment(at: datetime | float | None) -> datetime:
    """``at`` in UTC: now by default; an aware datetime converted, a naive one taken as UTC already."""
    if at is None:
        return datetime.now(UTC)
    if isinstance(at, datetime):
        return at if at.tzinfo is None else at.astimezone(UTC)
    return datetime.fromtimestamp(at, UTC)


def rfc3339(at: datetime | float | None = None) -> str:
    """A ``metav1.Time``: ``at`` (a datetime or a Unix time; default now) to the second, in UTC (a naive
    datetime is taken as UTC)."""
    return _moment(at).strftime(TIME)


def micro_time(at: datetime | float | None = None) -> str:
    """A ``metav1.MicroTime`` (Leases, events.k8s.io): RFC 3339 with microseconds, in UTC."""
    return _moment(at).strftime(MICRO_TIME)


def parse_rfc3339(value: str | None) -> datetime | None:
    """A ``metav1.Time`` as written by the API server; None when absent or malformed."""
    if not value:
        return None
    try:
        return datetime.strptime(value, TIME).replace(tzinfo=UTC)
    except ValueError:
        return None
