"""Fault injection over HTTP: POST/GET/DELETE /__sim__/faults."""

from __future__ import annotations

import time

import pytest

from tests.sim.conftest import BW, CM, Kube, assert_status, build_workload, configmap

pytestmark = [pytest.mark.anyio, pytest.mark.emulator]  # fault injection is the emulator's own

FAULTS = "/__sim__/faults"


async def test_counted_fault_with_retry_after(kube: Kube) -> None:
    await kube.create(CM, configmap("c1"))
    rule = {
        "method": "GET",
        "path": r"/configmaps/c1$",
        "count": 2,
        "status": 503,
        "reason": "ServiceUnavailable",
        "message": "etcd is sad",
        "retryAfter": 3,
    }
    added = await kube.post(FAULTS, rule)
    assert added.status == 201
    assert added.body["count"] == 2 and added.body["hits"] == 0

    for _ in range(2):
        reply = await kube.get(kube.path(CM, name="c1"))
        assert_status(reply, 503, "ServiceUnavailable", "etcd is sad")
        assert reply.headers["Retry-After"] == "3"
    assert (await kube.get(kube.path(CM, name="c1"))).status == 200  # the count is used up

    # Only matching requests are hit: other methods and paths were never affected.
    listed = await kube.get(FAULTS)
    assert [r["hits"] for r in listed.body["rules"]] == [2]


async def test_fault_matches_method_and_path(kube: Kube) -> None:
    await kube.post(
        FAULTS, {"method": "POST", "path": "/buildworkloads", "status": 409, "reason": "Conflict"}
    )
    assert (await kube.post(kube.path(CM), configmap("c1"))).status == 201  # another path
    assert (await kube.get(kube.path(BW))).status == 200  # another method
    reply = await kube.post(kube.path(BW), build_workload("b1"))
    assert_status(reply, 409, "Conflict")
    assert "Retry-After" not in reply.headers
    assert await kube.gone(BW, "b1")  # the injected failure happened before the write


async def test_default_reason_follows_the_status(kube: Kube) -> None:
    await kube.post(FAULTS, {"path": "/configmaps", "status": 429, "retryAfter": 1, "count": 1})
    reply = await kube.get(kube.path(CM))
    assert_status(reply, 429, "TooManyRequests")
    assert reply.headers["Retry-After"] == "1"
    await kube.post(FAULTS, {"path": "/configmaps", "status": 500, "count": 1})
    assert_status(await kube.get(kube.path(CM)), 500, "InternalError")


async def test_clearing_faults(kube: Kube) -> None:
    await kube.post(FAULTS, {"path": "/configmaps", "status": 500})
    assert (await kube.get(kube.path(CM))).status == 500
    assert (await kube.get(kube.path(CM))).status == 500  # no count: every time
    cleared = await kube.delete(FAULTS)
    assert cleared.status == 200
    assert (await kube.get(kube.path(CM))).status == 200
    assert (await kube.get(FAULTS)).body["rules"] == []


async def test_probability_zero_never_fires(kube: Kube) -> None:
    await kube.post(FAULTS, {"path": "/configmaps", "status": 500, "probability": 0.0})
    for _ in range(5):
        assert (await kube.get(kube.path(CM))).status == 200


async def test_latency_only_fault(kube: Kube) -> None:
    await kube.post(FAULTS, {"path": "/configmaps", "status": 0, "latency": 0.3, "count": 1})
    started = time.monotonic()
    reply = await kube.get(kube.path(CM))
    assert reply.status == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert (await kube.get(kube.path(CM))).status == 200
    assert time.monotonic() - started < 0.3  # count used up


async def test_bad_rule_is_refused(kube: Kube) -> None:
    assert_status(await kube.post(FAULTS, {"bogus": 1}), 400, "BadRequest")
    assert_status(await kube.post(FAULTS, {"path": "(unclosed"}), 400, "BadRequest")
    assert (await kube.get(FAULTS)).body["rules"] == []
    assert_status(await kube.post(FAULTS, ["not", "an", "object"]), 400, "BadRequest")
    assert_status(await kube.post(FAULTS, {"status": "teapot"}), 400, "BadRequest")
    assert_status(await kube.post(FAULTS, {"status": 200}), 400, "BadRequest")
    assert_status(await kube.post(FAULTS, {"probability": 2}), 400, "BadRequest")
    assert (await kube.get(FAULTS)).body["rules"] == []
