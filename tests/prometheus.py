"""Prometheus for the tests: Debian's ``prometheus`` and ``promtool`` found (a skip on a machine without
them, a failure under ``CI=true``, where they are installed), a Prometheus server scraping a target for the
block, its HTTP query API, and the metric names a PromQL expression reads.

The names are read with a small tokenizer rather than a PromQL parser (none is packaged for Python): string
literals, label matchers, ranges and the label lists of ``by``/``on``/… are removed, and what is left that
is an identifier and not a function call or keyword is a metric name. ``promtool check rules`` parses the
same expressions for real, so a construct this misreads still fails a test.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
CHART_ALERTS = ROOT / "charts" / "kpack-image-builder" / "files" / "alerts.yaml"


def tool(name: str) -> str:
    """The path of Debian's ``prometheus`` or ``promtool``."""
    found = shutil.which(name)
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not installed; CI=true, where it must be (apt-get install prometheus)")
    pytest.skip(f"{name} is not installed (Debian's prometheus package): the test needs it")


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------------------------ PromQL names
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
    "inf", "nan",
}  # fmt: skip
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (samples' names: ``_bucket``, ``_total``… as written)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _LABEL_LISTS.sub("", text)
    return {
        name
        for name, call in _IDENTIFIER.findall(text)
        if not call and name.lower() not in _KEYWORDS and not re.fullmatch(r"\d+[smhdwy]", name)
    }


def exposable(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry's families can produce, children or not yet."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("_count", "_sum", ""),
        "info": ("_info",),
    }
    return {
        family.name + suffix for family in registry.collect() for suffix in suffixes.get(family.type, ("",))
    }


def alert_expressions() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every panel query and query variable, with Grafana's variables given ordinary values."""
    out: list[str] = []
    panels = [*dashboard["panels"], *(p for row in dashboard["panels"] for p in row.get("panels", ()))]
    for panel in panels:
        out.extend(target["expr"] for target in panel.get("targets", ()))
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query["query"])
            assert match, f"variable {variable['name']}: {query['query']}"
            out.append(match.group(1))
    return [
        expr.replace("$__rate_interval", "1m").replace("$job", ".*").replace("${datasource}", "")
        for expr in out
    ]


# ---------------------------------------------------------------------------------------- a real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Prometheus:
    url: str
    session: aiohttp.ClientSession

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        async with self.session.get(f"{self.url}/api/v1/query", params={"query": expr}) as resp:
            body = await resp.json()
        assert resp.status == 200 and body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The single value of a query that aggregates to one sample, or None while there is none."""
        result = await self.query(expr)
        assert len(result) <= 1, f"{expr}: more than one sample: {result}"
        return float(result[0]["value"][1]) if result else None

    async def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its state, health and last error (``/api/v1/rules``)."""
        async with self.session.get(f"{self.url}/api/v1/rules") as resp:
            body = await resp.json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    async def targets_up(self) -> bool:
        async with self.session.get(f"{self.url}/api/v1/targets") as resp:
            body = await resp.json()
        active = body["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)


async def _start(command: list[str], log: Path, url: str) -> anyio.abc.Process | None:
    """Prometheus started and answering, or None when it exited because its port was taken meanwhile (the
    port was free when picked: another process may have bound it since)."""
    with log.open("wb") as out:
        process = await anyio.open_process(command, stdout=out, stderr=out)
    async with aiohttp.ClientSession() as session:

        async def answering() -> bool:
            if process.returncode is not None:
                return True
            try:
                async with session.get(f"{url}/-/ready", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False  # not listening yet, or someone else is

        try:
            await eventually(answering, 30, "Prometheus answering", interval=0.1)
        except BaseException:
            await _stop(process)
            raise
    if process.returncode is None:
        return process
    await _stop(process)
    text = await anyio.Path(log).read_text()
    assert "address already in use" in text, f"prometheus exited {process.returncode}: {text}"
    return None


async def _stop(process: anyio.abc.Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(10):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


@asynccontextmanager
async def running_prometheus(
    workdir: Path, target: str, rules: Path | None = None
) -> AsyncIterator[Prometheus]:
    """Debian's Prometheus scraping ``target`` (``host:port``) every second, evaluating ``rules`` every
    second, for the block; ready (its first scrape of the target succeeded) when the block starts."""
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)] if rules else [],
                "scrape_configs": [
                    {"job_name": "kpack-image-builder", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    for _ in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        process = await _start(command, workdir / "prometheus.log", url)
        if process is not None:
            break
    else:
        raise AssertionError("Prometheus found no free port in three tries")
    try:
        async with aiohttp.ClientSession() as session:
            prometheus = Prometheus(url, session)
            # The first scrape comes after target discovery, which Prometheus hands on every 5 s.
            await eventually(prometheus.targets_up, 30, f"Prometheus scraped {target}", interval=0.1)
            yield prometheus
    finally:
        await _stop(process)
