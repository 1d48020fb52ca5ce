"""Kubernetes' time formats (service/kube/timestamps.py): written and read exactly as the API server does."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.kube.timestamps import parse_rfc3339, rfc3339


def test_rfc3339_of_now_of_unix_times_and_of_datetimes() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    now = rfc3339()
    after = datetime.now(UTC)
    assert before <= datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) <= after
    # Each second its own string, whatever order they are asked in (the last one is remembered).
    assert [rfc3339(t) for t in (1000.9, 1001.0, 1000.2, 0.0)] == [
        "1970-01-01T00:16:40Z",
        "1970-01-01T00:16:41Z",
        "1970-01-01T00:16:40Z",
        "1970-01-01T00:00:00Z",
    ]
    assert rfc3339(time.time() + 86400) != rfc3339()
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 12, 6, 22, 7, 15, 999, tzinfo=plus_two)) == "2026-12-06T20:07:15Z"
    assert rfc3339(datetime(2026, 12, 6, 20, 7, 15)) == "2026-12-06T20:07:15Z"  # naive: UTC already


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-06T20:07:15Z", datetime(2026, 12, 6, 20, 7, 15, tzinfo=UTC)),
        ("2026-12-06T20:07:15+00:00", None),
        ("2026-12-06 20:07:15Z", None),
        ("2026-W49-7T20:07:15Z", None),  # an ISO week date: fromisoformat would take it
        ("2026-13-06T20:07:15Z", None),
        ("2026-12-06T20:07:15.5Z", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_rfc3339_takes_only_what_the_api_server_writes(
    value: str | None, expected: datetime | None
) -> None:
    assert parse_rfc3339(value) == expected
