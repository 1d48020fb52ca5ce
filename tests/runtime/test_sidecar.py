"""The HTTP sidecar over real sockets: controller-runtime's /healthz and /readyz bodies and codes, the
/metrics exposition (checked by promtool), bind addresses, and the event-loop monitor."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import anyio
import pytest
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry

from service.kube.metrics import RestClientMetrics
from service.runtime.metrics import RuntimeMetrics, new_registry
from service.runtime.sidecar import BindAddress, Check, Checks, LoopMonitor, Sidecar
from tests.helpers import (
    eventually,
    promtool_check,
)

pytestmark = pytest.mark.anyio

DEADLINE = 5.0
LOCAL = "127.0.0.1:0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: str


@dataclass
class Served:
    ports: dict[str, int]
    session: aiohttp.ClientSession

    async def get(self, path: str, role: str = "probes", headers: Mapping[str, str] | None = None) -> Answer:
        url = f"http://127.0.0.1:{self.ports[role]}{path}"
        async with self.session.get(url, headers=headers) as response:
            return Answer(response.status, response.headers, await response.text())


def checks(path: str, named: Mapping[str, Check]) -> Checks:
    out = Checks(path)
    for name, check in named.items():
        out.add(name, check)
    return out


@asynccontextmanager
async def serving(
    healthz: Mapping[str, Check] | None = None,
    readyz: Mapping[str, Check] | None = None,
    *,
    metrics: str | None = None,
    probes: str = LOCAL,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[Served]:
    sidecar = Sidecar(
        registry or CollectorRegistry(),
        checks("/healthz", {"ping": lambda: None} if healthz is None else healthz),
        checks("/readyz", {"ping": lambda: None} if readyz is None else readyz),
        # Two port-0 requests on one host are one address, hence one server: a fixed port keeps them apart.
        BindAddress.parse(f"127.0.0.1:{free_port()}" if metrics is None else metrics),
        BindAddress.parse(probes),
    )
    async with sidecar.serving() as ports, aiohttp.ClientSession() as session:
        yield Served(ports, session)


def ok() -> None:
    return None


def failing(why: str) -> Check:
    return lambda: why


def raising() -> str | None:
    raise RuntimeError("boom")


def assert_text_headers(answer: Answer) -> None:
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


# ---------------------------------------------------------------------------------------------- probes
async def test_all_healthy_is_200_ok() -> None:
    async with serving({"b-check": ok, "a-check": ok}) as served:
        answer = await served.get("/healthz")
        assert (answer.status, answer.body) == (200, "ok")
        assert_text_headers(answer)
        trailing = await served.get("/healthz/")
        assert (trailing.status, trailing.body) == (200, "ok")


async def test_verbose_lists_checks_sorted() -> None:
    async with serving({"zeta": ok, "alpha": ok, "mid": ok}) as served:
        for query in ("?verbose", "?verbose=false", "?verbose=1"):  # any value means verbose
            answer = await served.get("/healthz" + query)
            assert answer.status == 200
            assert answer.body == "[+]alpha ok\n[+]mid ok\n[+]zeta ok\nhealthz check passed\n"
            assert_text_headers(answer)


async def test_a_failing_check_is_500_with_the_reason_withheld(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.runtime.sidecar"):
        async with serving(
            readyz={"informers-synced": failing("2 informers not synced"), "ping": ok}
        ) as served:
            answer = await served.get("/readyz")
    assert answer.status == 500
    assert answer.body == ("[-]informers-synced failed: reason withheld\n[+]ping ok\nhealthz check failed\n")
    assert "not synced" not in answer.body  # the aggregate endpoint is public
    assert_text_headers(answer)
    [record] = [
        rec for rec in caplog.records if rec.name == "service.runtime.sidecar" and "failed" in rec.msg
    ]
    assert (record.checker, record.error) == ("informers-synced", "2 informers not synced")  # type: ignore[attr-defined]


async def test_a_raising_check_counts_as_failing() -> None:
    async with serving({"ok": ok, "broken": raising}) as served:
        aggregate = await served.get("/healthz")
        single = await served.get("/healthz/broken")
    assert aggregate.status == 500
    assert aggregate.body == "[-]broken failed: reason withheld\n[+]ok ok\nhealthz check failed\n"
    assert (single.status, single.body) == (500, "internal server error: check raised RuntimeError: boom\n")


async def test_exclude() -> None:
    async with serving({"a": ok, "b": failing("down")}) as served:
        excluded = await served.get("/healthz?exclude=b")
        assert (excluded.status, excluded.body) == (200, "ok")
        verbose = await served.get("/healthz?exclude=b&verbose")
        assert (verbose.status, verbose.body) == (200, "[+]a ok\n[+]b excluded: ok\nhealthz check passed\n")
        both = await served.get("/healthz?exclude=a&exclude=b&verbose")
        assert both.body == "[+]a excluded: ok\n[+]b excluded: ok\nhealthz check passed\n"


async def test_unknown_exclude_warns() -> None:
    async with serving({"a": ok}) as served:
        quiet = await served.get("/healthz?exclude=nope")
        assert (quiet.status, quiet.body) == (200, "ok")  # the warning is only in the verbose body
        one = await served.get("/healthz?exclude=nope&verbose")
        assert one.body == (
            '[+]a ok\nwarn: some health checks cannot be excluded: no matches for "nope"\nhealthz check passed\n'
        )
        two = await served.get("/healthz?exclude=y&exclude=x&exclude=a&verbose")
        assert two.body == (
            "[+]a excluded: ok\n"
            'warn: some health checks cannot be excluded: no matches for "x","y"\n'
            "healthz check passed\n"
        )


async def test_unknown_exclude_on_failure_still_fails() -> None:
    async with serving({"a": failing("x")}) as served:
        answer = await served.get("/healthz?exclude=nope")
    assert answer.status == 500
    assert answer.body == (
        "[-]a failed: reason withheld\n"
        'warn: some health checks cannot be excluded: no matches for "nope"\n'
        "healthz check failed\n"
    )


async def test_single_check() -> None:
    async with serving(readyz={"good": ok, "bad": failing("cache not synced")}) as served:
        good = await served.get("/readyz/good")
        assert (good.status, good.body) == (200, "ok")
        bad = await served.get("/readyz/bad")
        assert (bad.status, bad.body) == (500, "internal server error: cache not synced\n")
        assert_text_headers(bad)
        unknown = await served.get("/readyz/nope")
        assert unknown.status == 404
        assert_text_headers(unknown)


async def test_kind_without_checks_is_not_served() -> None:
    async with serving({"ping": ok}, {}) as served:
        assert (await served.get("/readyz")).status == 404
        assert (await served.get("/healthz")).status == 200


def test_duplicate_check_name_is_refused() -> None:
    c = checks("/healthz", {"ping": ok})
    with pytest.raises(ValueError, match="already registered"):
        c.add("ping", ok)


async def test_checks_run_on_every_request() -> None:
    state: dict[str, str | None] = {"why": "starting"}
    async with serving(readyz={"ready": lambda: state["why"]}) as served:
        assert (await served.get("/readyz")).status == 500
        state["why"] = None
        assert (await served.get("/readyz")).status == 200


# ---------------------------------------------------------------------------------------------- servers
async def test_separate_addresses_serve_separate_things() -> None:
    async with serving() as served:
        assert set(served.ports) == {"metrics", "probes"}
        assert served.ports["metrics"] != served.ports["probes"]
        assert (await served.get("/metrics", "metrics")).status == 200
        assert (await served.get("/healthz", "metrics")).status == 404
        assert (await served.get("/healthz", "probes")).status == 200
        assert (await served.get("/metrics", "probes")).status == 404


async def test_same_address_serves_both_from_one_port() -> None:
    async with serving(metrics="127.0.0.1:0", probes="127.0.0.1:0") as served:
        assert served.ports["metrics"] == served.ports["probes"]
        assert (await served.get("/metrics", "metrics")).status == 200
        assert (await served.get("/healthz", "metrics")).body == "ok"
        assert (await served.get("/readyz/ping", "metrics")).body == "ok"


async def test_zero_disables_a_server() -> None:
    async with serving(metrics="0") as served:
        assert served.ports.keys() == {"probes"}
        assert (await served.get("/healthz")).status == 200
    async with serving(probes="") as served:
        assert served.ports.keys() == {"metrics"}
        assert (await served.get("/metrics", "metrics")).status == 200
    async with serving(metrics="0", probes="0") as served:
        assert served.ports == {}


async def test_servers_stop_with_the_block() -> None:
    async with serving() as served:
        port = served.ports["probes"]
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", port)


async def test_metrics_pass_promtool_and_have_no_created_series() -> None:
    registry = new_registry()
    runtime = RuntimeMetrics(registry)
    runtime.init_controller("buildworkload", 2)
    runtime.depth.labels("buildworkload", "buildworkload", "").set(0)
    runtime.queue_duration.labels("buildworkload", "buildworkload").observe(0.002)
    runtime.reconcile_time.labels("buildworkload").observe(0.3)
    runtime.reconcile_total.labels("buildworkload", "success").inc()
    runtime.leader.labels("kpack-image-builder-leader-election").set(1)
    RestClientMetrics(registry).observe("GET", "127.0.0.1:6443", 200, 0.01)
    async with serving(registry=registry) as served:
        answer = await served.get("/metrics", "metrics")
        openmetrics = await served.get(
            "/metrics", "metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "_created" not in answer.body
    assert "_created" not in openmetrics.body
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    for series in (
        'controller_runtime_reconcile_total{controller="buildworkload",result="requeue_after"} 0.0',
        'controller_runtime_reconcile_total{controller="buildworkload",result="success"} 1.0',
        'controller_runtime_max_concurrent_reconciles{controller="buildworkload"} 2.0',
        'controller_runtime_active_workers{controller="buildworkload"} 0.0',
        'workqueue_queue_duration_seconds_bucket{controller="buildworkload",le="0.01",name="buildworkload"} 1.0',
        'controller_runtime_reconcile_time_seconds_bucket{controller="buildworkload",le="0.35"} 1.0',
        'leader_election_master_status{name="kpack-image-builder-leader-election"} 1.0',
        "process_start_time_seconds ",
        "python_info{",
    ):
        assert series in answer.body, series

    await promtool_check(answer.body)


# ---------------------------------------------------------------------------------------------- addresses
@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        (":8080", None, 8080, ":8080"),
        ("127.0.0.1:0", "127.0.0.1", 0, "127.0.0.1:0"),
        ("[::1]:9000", "::1", 9000, "[::1]:9000"),
        ("localhost:65535", "localhost", 65535, "localhost:65535"),
        (" :8081 ", None, 8081, ":8081"),
    ],
)
def test_bind_address_parse(text: str, host: str | None, port: int, shown: str) -> None:
    address = BindAddress.parse(text)
    assert address == BindAddress(host, port)
    assert str(address) == shown


@pytest.mark.parametrize("text", ["0", "", "  "])
def test_bind_address_disabled(text: str) -> None:
    assert BindAddress.parse(text) is None


@pytest.mark.parametrize(
    "text", ["nonsense", ":99999", "8080", "localhost:", ":-1", ":http", "::1:9000", "[::1", "[::1]", ":٣٣"]
)
def test_bind_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        BindAddress.parse(text)


# ---------------------------------------------------------------------------------------------- loop monitor


async def test_loop_monitor_reports_a_stall_then_recovers() -> None:
    monitor = LoopMonitor(interval=0.05, threshold=0.2, memory=0.5)
    async with anyio.create_task_group() as tg, serving({"event-loop": monitor.check}) as served:
        tg.start_soon(monitor.run)
        first_tick = monitor.last_tick
        await eventually(lambda: monitor.last_tick > first_tick, what="the monitor ticks")
        assert monitor.check() is None
        assert (await served.get("/healthz")).status == 200

        time.sleep(0.4)  # noqa: ASYNC251 - block the event loop on purpose: nothing else can run
        assert (monitor.check() or "").startswith("event loop monitor has not run for")

        await eventually(lambda: "stalled" in (monitor.check() or ""), what="the monitor notices the stall")
        message = monitor.check() or ""
        assert re.fullmatch(r"event loop stalled for \d+\.\d s, \d+ s ago", message), message
        assert monitor.worst_lag >= 0.3
        answer = await served.get("/healthz/event-loop")
        assert answer.status == 500 and "event loop stalled" in answer.body

        await eventually(
            lambda: monitor.check() is None, what="the stall is forgotten after the memory window"
        )
        assert (await served.get("/healthz")).status == 200
        tg.cancel_scope.cancel()


async def test_loop_monitor_short_hiccups_are_not_stalls() -> None:
    monitor = LoopMonitor(interval=0.05, threshold=0.2, memory=0.5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor.run)
        start = monitor.last_tick
        time.sleep(0.05)  # noqa: ASYNC251 - a hiccup well under the threshold
        await eventually(lambda: monitor.last_tick > start, what="the monitor ticks")
        first = monitor.last_tick
        await eventually(lambda: monitor.last_tick > first, what="another tick")
        assert monitor.check() is None
        tg.cancel_scope.cancel()


def test_loop_monitor_that_never_runs_fails_its_check() -> None:
    monitor = LoopMonitor(interval=0.05, threshold=0.2, memory=0.5)
    assert monitor.check() is None
    monitor.last_tick -= 1.0  # as if the ticker had not run for a second
    assert (monitor.check() or "").startswith("event loop monitor has not run for 1.")
