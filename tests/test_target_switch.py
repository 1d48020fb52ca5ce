"""The switch that points the integration suites at another cluster (``TEST_KUBECONFIG``), tried for
real: a dev cluster in a process of its own stands in for "another cluster", and part of the reconcilers'
suite runs against it through its kubeconfig — the emulator-only tests skip, saying why, the rest pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import anyio
import pytest

from service.kube.config import load_kubeconfig
from tests.helpers import child_env, eventually

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
async def test_the_reconcilers_suite_runs_against_a_cluster_named_by_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    env = child_env()
    cluster = await anyio.open_process(
        [sys.executable, "-m", "simcluster", "devcluster", "--port=0", f"--kubeconfig-out={kubeconfig}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        await eventually(kubeconfig.exists, 20, "the dev cluster's kubeconfig")
        url = (await load_kubeconfig(str(kubeconfig))).host
        async with aiohttp.ClientSession(base_url=url) as http:
            # A rule that changes nothing and counts the workloads created on this cluster: proof that
            # the suite talked to it, not to an emulator of its own.
            rule = {"method": "POST", "path": "/buildworkloads$", "status": 0}
            async with http.post("/__sim__/faults", json=rule) as resp:
                assert resp.status < 300, await resp.text()
        with anyio.fail_after(240):
            run = await anyio.run_process(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "tests/reconcilers/test_buildworkload_begin.py",
                    "tests/reconcilers/test_reliability.py::test_outcome_events_are_recorded_once_even_when_the_write_is_retried",
                    "tests/reconcilers/test_reliability.py::test_an_environment_kpack_could_never_record_fails_the_workload",
                ],
                cwd=ROOT,
                env={**env, "TEST_KUBECONFIG": str(kubeconfig)},
                check=False,
            )
        async with aiohttp.ClientSession(base_url=url) as http, http.get("/__sim__/faults") as resp:
            [counted] = (await resp.json())["rules"]
    finally:
        cluster.terminate()
        await cluster.wait()
        await cluster.aclose()
    out = run.stdout.decode()
    assert run.returncode == 0, out + run.stderr.decode()
    assert counted["hits"] >= 10, counted
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary and "1 skipped" in summary, summary
    assert "TEST_KUBECONFIG names another cluster" in out, out
