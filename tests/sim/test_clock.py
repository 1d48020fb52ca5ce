"""A server clock that disagrees with the machine's: PUT/GET /__sim__/clock."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime

import pytest

from service.kube.timestamps import parse_rfc3339
from tests.sim.conftest import CM, Kube, assert_status, configmap, install_crd, widget_crd

pytestmark = [pytest.mark.anyio, pytest.mark.emulator]  # a skewed clock is the emulator's own

CLOCK = "/__sim__/clock"


@pytest.fixture
async def an_hour_behind(kube: Kube) -> AsyncIterator[None]:
    set_to = await kube.put(CLOCK, {"skewSeconds": -3600})
    assert set_to.status == 200 and set_to.body["skewSeconds"] == -3600, set_to.body
    try:
        yield
    finally:
        assert (await kube.put(CLOCK, {"skewSeconds": 0})).status == 200


def _hours_behind(stamp: float) -> float:
    return (time.time() - stamp) / 3600


async def test_the_servers_stamps_and_dates_read_its_own_clock(kube: Kube, an_hour_behind: None) -> None:
    created = await kube.create(CM, configmap("c1"))
    meta = created["metadata"]
    creation = parse_rfc3339(meta["creationTimestamp"])
    assert creation is not None and 0.99 < _hours_behind(creation.timestamp()) < 1.01, meta
    assert {parse_rfc3339(e["time"]) for e in meta["managedFields"]} == {creation}
    reply = await kube.get(kube.path(CM, name="c1"))
    assert 0.99 < _hours_behind(parsedate_to_datetime(reply.headers["Date"]).timestamp()) < 1.01
    told = await kube.get(CLOCK)
    assert told.body["skewSeconds"] == -3600
    now = parse_rfc3339(told.body["now"])
    assert now is not None and 0.99 < _hours_behind(now.timestamp()) < 1.01


async def test_a_clock_in_step_sends_the_machines_date(kube: Kube) -> None:
    reply = await kube.get(CLOCK)
    assert reply.body["skewSeconds"] == 0
    assert abs(parsedate_to_datetime(reply.headers["Date"]).timestamp() - time.time()) < 2


@pytest.mark.parametrize("body", [{}, {"skewSeconds": "soon"}, ["skewSeconds"]])
async def test_a_bad_clock_is_refused(kube: Kube, body: object) -> None:
    reply = await kube.put(CLOCK, body)
    assert_status(reply, 400, "BadRequest")
    assert "skewSeconds" in reply.body["message"]
    assert (await kube.get(CLOCK)).body["skewSeconds"] == 0


async def test_a_crds_conditions_are_stamped_by_the_servers_clock(kube: Kube, an_hour_behind: None) -> None:
    crd = await install_crd(kube, widget_crd(group="clock.example.com"))
    stamps = {c["type"]: parse_rfc3339(c["lastTransitionTime"]) for c in crd["status"]["conditions"]}
    assert set(stamps) == {"NamesAccepted", "Established"}
    for stamp in stamps.values():
        assert stamp is not None and 0.99 < _hours_behind(stamp.timestamp()) < 1.01, crd["status"]
