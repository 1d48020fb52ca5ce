"""The API server's clock as the service reads it (service/kube/server_clock.py): from each answer's ``Date``."""

from __future__ import annotations

import logging
import time
from email.utils import formatdate

import pytest
from prometheus_client import CollectorRegistry

from service.kube import server_clock
from service.kube.server_clock import TOLERANCE, ServerClock
from service.kube.timestamps import rfc3339, seconds_since
from service.observability import ClockCollector


def test_a_server_an_hour_behind_is_read_as_such() -> None:
    server = ServerClock()
    received = 1_800_000_000.25
    server.observe(formatdate(received - 3600, usegmt=True), received)
    # The Date names a whole second: the server's clock was within it, so the estimate is within a second.
    assert -3601 <= server.offset <= -3599, server.offset
    assert abs(server.time() - (time.time() - 3600)) <= 1


@pytest.mark.parametrize("behind", [0.0, 0.9, 1.4])
def test_clocks_within_the_tolerance_agree(behind: float) -> None:
    server = ServerClock()
    server.observe(formatdate(1_800_000_000.0, usegmt=True), 1_800_000_000.0 + behind)
    assert server.offset == 0.0
    assert behind + 0.5 < TOLERANCE  # what the cases above stand for


def test_each_new_date_corrects_the_estimate_and_a_repeated_one_is_not_read_again() -> None:
    server = ServerClock()
    date = formatdate(1_800_000_000.0, usegmt=True)
    server.observe(date, 1_800_000_000.0 + 60)
    assert server.offset == pytest.approx(-59.5)
    server.observe(date, 1_800_000_000.0)  # the same Date again: under load, many answers in a second
    assert server.offset == pytest.approx(-59.5)
    server.observe(formatdate(1_800_000_001.0, usegmt=True), 1_800_000_001.0)  # the clocks agree again
    assert server.offset == 0.0


@pytest.mark.parametrize("date", [None, "", "yesterday", "Mon, 99 Foo 2026 99:99:99 GMT"])
def test_an_answer_without_a_usable_date_teaches_nothing(date: str | None) -> None:
    server = ServerClock()
    server.observe(formatdate(1_800_000_000.0, usegmt=True), 1_800_000_000.0 + 60)
    server.observe(date, 1_800_000_000.0)
    assert server.offset == pytest.approx(-59.5)


def test_a_date_in_minus_zero_is_utc() -> None:
    server = ServerClock()
    server.observe("Fri, 15 Jan 2027 08:00:00 -0000", 1_800_000_000.0)  # 1,800,000,000 is 08:00:00 UTC
    assert server.offset == 0.0


def test_times_the_server_wrote_are_aged_by_its_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A creationTimestamp written just now by a server an hour behind is seconds old, not an hour."""
    server = ServerClock()
    monkeypatch.setattr(server_clock, "SERVER", server)
    written = rfc3339(time.time() - 3600)
    assert seconds_since(written) > 3590  # by this machine's clock, before any answer
    server.observe(formatdate(time.time() - 3600, usegmt=True))
    assert -1 <= seconds_since(written) <= 2


def test_clocks_that_part_or_meet_are_said_once(caplog: pytest.LogCaptureFixture) -> None:
    server = ServerClock()
    caplog.set_level(logging.INFO, logger="service.kube.server_clock")
    for second, behind in ((0, 0.0), (1, 3600.0), (2, 3599.0), (3, 3600.0), (4, 0.0), (5, 0.0)):
        server.observe(formatdate(1_800_000_000.0 + second, usegmt=True), 1_800_000_000.0 + second + behind)
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", "the API server's clock differs from this node's: limits are counted by the server's"),
        ("INFO", "the API server's clock agrees with this node's again"),
    ]
    assert caplog.records[0].offset_seconds == -3599.5


def test_the_offset_is_a_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ServerClock()
    monkeypatch.setattr(server_clock, "SERVER", server)
    registry = CollectorRegistry()
    registry.register(ClockCollector())
    name = "kpack_image_builder_apiserver_clock_offset_seconds"
    assert registry.get_sample_value(name) == 0.0
    server.observe(formatdate(1_800_000_000.0, usegmt=True), 1_800_000_000.0 + 60)
    assert registry.get_sample_value(name) == -59.5
