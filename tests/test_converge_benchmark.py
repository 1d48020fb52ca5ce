"""The convergence benchmark still runs end to end (a devcluster, the Build stand-in and a real ``run``
process, at a tiny size): every workload gets its droplet and the figures are printed. The figures
themselves are not judged here; the kopf peer is not run (it needs its own venv from PyPI)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import orjson
import pytest

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "converge.py"
WORKLOADS = 20


async def test_converge_prints_the_figures_of_workloads_that_all_succeeded(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), f"--workloads={WORKLOADS}", "--namespaces=2", "--timeout=60"]
    with anyio.fail_after(120):  # a hang guard, not a measurement
        result = await anyio.run_process([*command, f"--logs={tmp_path}"], check=False)
    out = result.stdout.decode()
    assert result.returncode == 0, f"{out}\n{result.stderr.decode()}"
    header, row = out.splitlines()[:2]
    assert header.split()[:4] == ["peer", "workloads", "succeeded", "droplets"]
    assert "CPU ms/workload" in header and "peak RSS MiB" in header and "API requests/workload" in header
    assert row.split()[:4] == ["service", str(WORKLOADS), str(WORKLOADS), str(WORKLOADS)]
    [figures] = orjson.loads(out.strip().splitlines()[-1])
    assert figures["peer"] == "service"
    assert (figures["succeeded"], figures["droplets"], figures["failed"]) == (WORKLOADS, WORKLOADS, 0)
    # Each workload costs the service at least its Image, its status and its droplet: requests counted
    # by the emulator, and the service's own count of them, are both there.
    assert figures["requests"] >= 3 * WORKLOADS
    assert figures["own_count"] >= 3 * WORKLOADS
    assert figures["cpu_seconds"] >= 0 and figures["peak_rss_mib"] > 0
