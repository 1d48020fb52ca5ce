"""The convergence benchmark still runs end to end (a devcluster, the Build stand-in and a real ``run``
process, at a tiny size; and on the real control plane): every workload gets its droplet and the figures
are printed. The figures themselves are not judged here; the kopf peer is not run (it needs its own venv
from PyPI)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from tests.controlplane.build import ensure_built
from tests.controlplane.conftest import skip_unless_available

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
    # By default the service records a BuildRunning and a BuildSucceeded Event about each, and the run
    # waited for them (their CPU is counted).
    assert figures["events"] == figures["events_expected"] == 2 * WORKLOADS
    assert f"service Events about the workloads: {2 * WORKLOADS}, the last" in out
    # Each workload costs the service at least its Image, its status and its droplet: requests counted
    # by the emulator, and the service's own count of them, are both there.
    assert figures["requests"] >= 3 * WORKLOADS
    assert figures["own_count"] >= 3 * WORKLOADS
    assert figures["cpu_seconds"] >= 0 and figures["peak_rss_mib"] > 0
    emulator = figures["others_cpu_seconds"]["emulator"]
    assert emulator > 0 and figures["cpu_per_server_cpu"] == round(figures["cpu_seconds"] / emulator, 3)


# Run in a process of its own: the script imports its folder's ``requests`` module, which must not shadow
# the PyPI one in this process.
ROUNDS_CHECK = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import orjson
import converge

def figures(peer, seconds, cpu):
    return converge.Figures(peer, 100, 1, 100, 0, seconds, cpu, 50.0, 500, 100, None, None, None, {})

# The VM slowed down in the middle: each round's ratio says so, the sum over both is what is claimed.
results = [figures("service", 1.0, 1.0), figures("kopf", 6.0, 8.0)]
results += [figures("kopf", 3.0, 4.0), figures("service", 1.0, 1.0)]
print(orjson.dumps({
    "order": converge.run_order(["service", "kopf"], 3),
    "alone": converge.run_order(["service"], 2),
    "lines": converge.table(results).splitlines(),
}).decode())
"""


async def in_script(code: str) -> Any:
    """What ``code`` prints (JSON), run in a process of its own with the script's folder on its path."""
    folder = SCRIPT.parent
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, "-c", code, str(folder), str(folder.parent)], check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    return orjson.loads(result.stdout)


async def test_rounds_alternate_their_order_and_the_ratios_are_summed_over_them() -> None:
    printed = await in_script(ROUNDS_CHECK)
    assert printed["order"] == ["service", "kopf", "kopf", "service", "service", "kopf"]
    assert printed["alone"] == ["service", "service"]
    lines = printed["lines"]
    assert "service vs kopf: 6.0x the throughput, 8.0x less CPU, 5.00 vs 5.00 requests per workload" in lines
    assert "service vs kopf: 3.0x the throughput, 4.0x less CPU, 5.00 vs 5.00 requests per workload" in lines
    assert lines[-1] == "over 2 rounds: 4.50x the throughput, 6.00x less CPU"


COMMANDS_CHECK = """
import sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import orjson
import converge

converge.kopf_python = lambda: Path("/kopf-venv/bin/python")  # not made here: it needs PyPI
print(orjson.dumps({
    peer: converge.controller_command(
        peer, Path("k"), "reg:5000", None, 9000, (), "asyncio", "warnings", ("--consistency-timeout=60",)
    )
    for peer in ("service", "kopf")
}).decode())
"""


async def test_both_controllers_are_told_to_record_the_same_events() -> None:
    folder = SCRIPT.parent
    commands = await in_script(COMMANDS_CHECK)
    assert "--events=warnings" in commands["service"]
    assert commands["kopf"][:2] == ["/kopf-venv/bin/python", str(folder / "peers" / "kopf_peer.py")]
    assert "--events=warnings" in commands["kopf"]
    # The peer's own arguments go to the peer alone.
    assert commands["kopf"][-1] == "--consistency-timeout=60"
    assert "--consistency-timeout=60" not in commands["service"]


@pytest.mark.parametrize("argument", ["--service-arg=--events=warnings", "--peer-arg=--events=none"])
async def test_the_events_are_not_chosen_for_one_controller_alone(argument: str) -> None:
    with anyio.fail_after(60):
        result = await anyio.run_process([sys.executable, str(SCRIPT), argument], check=False)
    assert result.returncode == 2
    assert "the Events are chosen with --events, for both controllers" in result.stderr.decode()


async def test_converge_runs_on_the_real_control_plane(tmp_path: Path) -> None:
    """``--cluster real``: the same run against kube-apiserver, etcd and kube-controller-manager. Requests
    are kube-apiserver's own count (every client's, less the stand-in's and the driver's), which holds the
    service's own; the control plane's CPU is reported."""
    skip_unless_available()
    await anyio.to_thread.run_sync(ensure_built)  # not inside the script's start-up timeout
    workloads = 5
    command = [sys.executable, str(SCRIPT), f"--workloads={workloads}", "--namespaces=1", "--timeout=60"]
    with anyio.fail_after(180):  # a hang guard, not a measurement
        result = await anyio.run_process([*command, "--cluster=real", f"--logs={tmp_path}"], check=False)
    out = result.stdout.decode()
    assert result.returncode == 0, f"{out}\n{result.stderr.decode()}"
    [figures] = orjson.loads(out.strip().splitlines()[-1])
    assert (figures["succeeded"], figures["droplets"], figures["failed"]) == (workloads, workloads, 0)
    # kube-controller-manager's few requests (its Lease) may fall in the span too.
    assert figures["requests"] >= figures["own_count"] >= 3 * workloads
    assert figures["requests_per_workload"] == figures["requests"] / workloads
    # By verb and resource: the service's status writes, and the stand-in's own writes, left out above.
    served = figures["server_requests"]
    assert served["PATCH buildworkloads/status"] >= workloads and served["POST builds"] == workloads
    assert figures["server_seconds"]["PATCH buildworkloads/status"] > 0
    assert figures["watch_events"]["buildworkloads"] >= workloads
    assert figures["others_cpu_seconds"]["control plane"] > 0
