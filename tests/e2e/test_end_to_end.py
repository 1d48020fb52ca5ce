"""End to end, with real processes: the devcluster (API emulator and kpack simulator) and ``run``, sharing
an OCI registry; and the one-command demo."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from service.reconcilers import korifi as k
from simcluster.demo import PULL_SECRET, create_space
from simcluster.kpack.options import ENV_FAIL
from simcluster.registry import RunningRegistry, running_registry
from tests.helpers import child_env, eventually

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]

WORKLOADS = 100
SPACES = ("space-1", "space-2", "space-3", "space-4")


@asynccontextmanager
async def process(*args: str) -> AsyncIterator[anyio.abc.Process]:
    """A ``kpack-image-builder run`` or ``python -m simcluster devcluster`` subprocess, killed if still
    running at the end."""
    module = "simcluster" if args[0] == "devcluster" else "service"
    proc = await anyio.open_process(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await proc.aclose()


async def stopped(proc: anyio.abc.Process, within: float = 15.0) -> int:
    proc.send_signal(signal.SIGTERM)
    with anyio.fail_after(within):
        return await proc.wait()


def plan(i: int) -> tuple[str, list[str], bool]:
    """Workload ``i``: its space, buildpacks (every fifth names some) and whether its build must fail."""
    buildpacks = ["paketo-buildpacks/go"] if i % 5 == 0 else []
    if i % 10 == 5:
        buildpacks = ["paketo-buildpacks/nodejs", "paketo-buildpacks/procfile"]
    return SPACES[i % len(SPACES)], buildpacks, i % 7 == 3


def workload(i: int, registry: str) -> Obj:
    space, buildpacks, fail = plan(i)
    spec: Obj = {
        "buildRef": {"name": f"build-{i:03d}"},
        "builderName": k.BUILDER_NAME,
        "source": {"registry": {"image": f"{registry}/packages/app-{i:03d}:1"}},
        "env": [{"name": ENV_FAIL, "value": "true"}] if fail else [],
    }
    if buildpacks:
        spec["buildpacks"] = buildpacks
    return {
        "apiVersion": k.KORIFI_API_VERSION,
        "kind": "BuildWorkload",
        "metadata": {
            "name": f"build-{i:03d}",
            "namespace": space,
            "labels": {k.APP_GUID_LABEL: f"app-{i:03d}"},
        },
        "spec": spec,
    }


def succeeded(obj: Obj) -> Obj:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == k.SUCCEEDED), {}
    )


@pytest.fixture
async def registry() -> AsyncIterator[RunningRegistry]:
    async with running_registry() as reg:
        yield reg


async def test_a_hundred_workloads_through_real_processes(tmp_path: Path, registry: RunningRegistry) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    async with process(
        "devcluster",
        "--port=0",
        f"--kubeconfig-out={kubeconfig}",
        "--kpack",
        "--kpack-build-seconds=0.3",
        f"--kpack-registry={registry.url}",
    ) as devcluster:
        await eventually(kubeconfig.exists, 20, "the devcluster's kubeconfig")
        async with KubeClient(await load_kubeconfig(str(kubeconfig)), timeout=10.0) as client:
            for space in SPACES:
                await create_space(client, space, registry.host)
            async with process(
                "run",
                f"--kubeconfig={kubeconfig}",
                f"--container-repository-prefix={registry.host}/cf/",
                "--metrics-bind-address=127.0.0.1:0",
                "--health-probe-bind-address=127.0.0.1:0",
                "--workers=4",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ) as service:
                for i in range(WORKLOADS):
                    await client.create(r.BUILD_WORKLOAD, workload(i, registry.host))

                async def finished() -> list[Obj] | None:
                    items = (await client.list(r.BUILD_WORKLOAD))["items"]
                    done = [w for w in items if succeeded(w).get("status") in ("True", "False")]
                    return items if len(done) == WORKLOADS else None

                workloads = await eventually(finished, 150, "every workload finished")
                assert await stopped(service) == 0

            by_name = {w["metadata"]["name"]: w for w in workloads}
            for i in range(WORKLOADS):
                space, buildpacks, fail = plan(i)
                got = by_name[f"build-{i:03d}"]
                condition = succeeded(got)
                ready = next(c for c in got["status"]["conditions"] if c["type"] == k.READY)
                assert ready["status"] == "True", (i, ready)
                if fail:
                    assert (condition["status"], condition["reason"]) == ("False", k.BUILD_FAILED), i
                    assert "droplet" not in got["status"]
                    continue
                assert (condition["status"], condition["reason"]) == ("True", k.BUILD_SUCCEEDED), (
                    i,
                    condition,
                )
                droplet = got["status"]["droplet"]
                assert droplet["registry"]["image"].startswith(
                    f"{registry.host}/cf/app-{i:03d}-droplets@sha256:"
                )
                assert droplet["registry"]["imagePullSecrets"] == [{"name": PULL_SECRET}]
                assert droplet["stack"] == "io.buildpacks.stacks.jammy"
                assert droplet["ports"] == [8080]
                assert [p["type"] for p in droplet["processTypes"]] == ["web"]
                image = await client.get(r.IMAGE, f"app-{i:03d}", space)
                expected_kind = "Builder" if buildpacks else "ClusterBuilder"
                assert image["spec"]["builder"]["kind"] == expected_kind, i
            builders = 0
            for space in SPACES:
                builders += len((await client.list(r.BUILDER, space))["items"])
            assert builders == len({(plan(i)[0], tuple(plan(i)[1])) for i in range(WORKLOADS) if plan(i)[1]})
            info = await client.get(r.BUILDER_INFO, k.BUILDER_INFO_NAME, "cf")
            assert next(c for c in info["status"]["conditions"] if c["type"] == k.READY)["status"] == "True"
            assert [b["name"] for b in info["status"]["buildpacks"]][:2] == [
                "paketo-buildpacks/java",
                "paketo-buildpacks/go",
            ]
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
    for name, outcome in (
        ("space-a/java-app-build-1", "True/BuildSucceeded"),
        ("space-a/go-app-build-1", "True/BuildSucceeded"),
        ("space-b/node-app-build-1", "True/BuildSucceeded"),
        ("space-b/broken-app-build-1", "False/BuildFailed"),
        ("space-b/typo-app-build-1", "False/InvalidBuildpacks"),
    ):
        assert any(line.startswith(name) and outcome in line for line in output.splitlines()), (name, output)


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
