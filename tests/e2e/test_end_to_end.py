"""End to end, with real processes: the devcluster (API emulator and kpack simulator) and ``run``, sharing
an OCI registry (the scenario: ``tests/e2e/scenario.py``); and the one-command demo."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from simcluster.registry import RunningRegistry, running_registry
from tests.e2e.scenario import Scenario, process, stopped
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]

SPACES = ("space-1", "space-2", "space-3", "space-4")


@pytest.fixture
async def registry() -> AsyncIterator[RunningRegistry]:
    async with running_registry() as reg:
        yield reg


async def test_a_hundred_workloads_through_real_processes(tmp_path: Path, registry: RunningRegistry) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    async with process(
        "simcluster",
        "devcluster",
        "--port=0",
        f"--kubeconfig-out={kubeconfig}",
        "--kpack",
        "--kpack-build-seconds=0.3",
        f"--kpack-registry={registry.url}",
    ) as devcluster:
        await eventually(kubeconfig.exists, 20, "the devcluster's kubeconfig")
        async with KubeClient(await load_kubeconfig(str(kubeconfig)), timeout=10.0) as client:
            await Scenario(SPACES, registry.host).play(client, kubeconfig)
            try:
                await client.get(r.NAMESPACE, "space-1")
            except errors.NotFound:  # pragma: no cover - the cluster must still be there
                pytest.fail("the devcluster lost a namespace")
        assert await stopped(devcluster) == 0


async def test_the_demo_reaches_every_expected_outcome() -> None:
    with anyio.fail_after(120):
        result = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "simcluster",
                "demo",
                "--exit-when-done",
                "--build-seconds=0.3",
                "--metrics-bind-address=127.0.0.1:0",
                "--health-probe-bind-address=127.0.0.1:0",
                "--timeout=90",
            ],
            check=False,
        )
    output = result.stdout.decode()
    assert result.returncode == 0, output + result.stderr.decode()
    lines = output.splitlines()

    def rows(name: str) -> list[str]:
        return [line for line in lines if line.startswith(f"{name} ")]

    for name, outcome in (
        ("space-a/java-app-build-1", "True/BuildSucceeded"),
        ("space-a/go-app-build-1", "True/BuildSucceeded"),
        ("space-b/node-app-build-1", "True/BuildSucceeded"),
        ("space-b/node-api-build-1", "True/BuildSucceeded"),
        ("space-b/broken-app-build-1", "False/BuildFailed"),
        ("space-b/typo-app-build-1", "False/InvalidBuildpacks"),
        ("space-a/hello-app-build-1", "True/BuildSucceeded"),
        ("space-a/slow-app-build-1", "False/BuildCanceled"),
        ("space-a/endless-app-build-1", "False/BuildTimeout"),
        ("space-b/huge-app-build-1", "False/BuildPodPendingTimeout"),
    ):
        assert any(outcome in line for line in rows(name)), (name, output)
    # Resolved by semver to the space's Buildpack (1.10.0), not the ClusterBuildpack (1.9.0).
    assert "demo/hello 1.10.0 (Buildpack hello)" in output, output

    # The registry cache: every droplet names the cache image its build wrote, by digest. A stack update
    # then refreshes each kept droplet: old→new.
    refreshed = re.compile(
        r"-droplets@sha256:([0-9a-f]{8})→sha256:([0-9a-f]{8}) \(stack update\)  cache: sha256:"
    )
    for name in (
        "space-a/java-app-build-1",
        "space-b/node-app-build-1",
        "space-b/node-api-build-1",
        "space-a/hello-app-build-1",
    ):
        [last] = rows(name)[-1:]
        match = refreshed.search(last)
        assert match and match[1] != match[2], (name, output)
    assert "ClusterStack cf-default-stack: run image updated to " in output, output

    # node-app and node-api share one Builder that records both; go-app's, used by it alone, is collected
    # once the demo deleted its workload.
    [node_builder] = {
        rows(n)[-1].split()[1] for n in ("space-b/node-app-build-1", "space-b/node-api-build-1")
    }
    assert node_builder != "-", output
    assert f"Builder space-b/{node_builder}: used by node-api, node-app (shared)" in lines, output
    go_rows = rows("space-a/go-app-build-1")
    go_builder = next(cells[1] for cells in (row.split() for row in go_rows) if cells[1] != "-")
    assert go_rows[-1].split()[1:5] == [go_builder, "(collected)", "paketo-buildpacks/go", "deleted"], output
    assert f"Builder space-a/{go_builder}: collected (it was used by go-app)" in lines, output
    # Issue 9: the pod that cannot start is said while it waits; the failed workload is explained.
    assert any(
        "Unknown/BuildPodPending  0/3 nodes are available" in line
        for line in rows("space-b/huge-app-build-1")
    ), output
    assert "$ kpack-image-builder explain space-b/broken-app-build-1" in lines, output
    logs = "kubectl logs -n space-b broken-app-build-1-build-pod -c build"
    assert f'  - read the log of the failed step "build", exit code 51: {logs}' in lines, output
    assert lines[-1].startswith("all done"), output


async def test_the_demo_stops_cleanly_on_ctrl_c() -> None:
    proc = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "simcluster",
            "demo",
            "--metrics-bind-address=127.0.0.1:0",
            "--health-probe-bind-address=127.0.0.1:0",
        ],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(30):
            first = await proc.stdout.receive()  # the first rows: everything is up
        assert b"space-a/java-app-build-1" in first
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.aclose()


async def test_the_demo_says_in_one_line_that_its_port_is_taken() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        with anyio.fail_after(60):
            result = await anyio.run_process(
                [
                    sys.executable,
                    "-m",
                    "simcluster",
                    "demo",
                    f"--metrics-bind-address=127.0.0.1:{port}",
                    "--health-probe-bind-address=127.0.0.1:0",
                ],
                check=False,
            )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, lines
    assert lines == [f"demo: metrics server: cannot listen on 127.0.0.1:{port}: address already in use"]
