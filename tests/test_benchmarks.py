"""The benchmark scripts still run (tiny sizes; the figures themselves are not judged here)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import orjson
import pytest

pytestmark = pytest.mark.anyio

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args", "figures"),
    [
        (
            "emulator.py",
            ["--writes=200", "--watchers=3"],
            ["http_fanout_events_per_s", "core_lifecycle_writes_per_s"],
        ),
        (
            "runtime.py",
            ["--keys=500", "--objects=100", "--sync-objects=100", "--reconciles=500"],
            ["informer_catch_up_events_per_s", "queue_floor_cycles_per_s"],
        ),
        ("cache_memory.py", ["--objects=300"], ["rss_per_raw_json"]),
        ("client.py", ["--requests=50"], ["client_get_us"]),
    ],
)
async def test_benchmark_runs_and_prints_its_figures(
    script: str, args: list[str], figures: list[str]
) -> None:
    with anyio.fail_after(120):
        result = await anyio.run_process([sys.executable, str(BENCHMARKS / script), *args], check=False)
    assert result.returncode == 0, result.stderr.decode()
    printed = orjson.loads(result.stdout.decode().strip().splitlines()[-1])
    assert all(printed[figure] > 0 for figure in figures), printed
