"""The end-to-end scenario, on whatever cluster a test brings: a hundred workloads in four spaces through a
real ``kpack-image-builder run`` process, with kpack played by the simulator — builds on the default
ClusterBuilder and on custom Builders, builds that fail, every outcome checked, the BuilderInfo mirrored.

``tests/e2e/test_end_to_end.py`` brings the devcluster (the emulator with the simulator in one process);
``tests/controlplane/test_end_to_end_on_the_real_server.py`` brings kube-apiserver with the simulator as a
process of its own, and runs the service as the Helm chart's ServiceAccount.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from service.kube import resources as r
from service.kube.client import KubeClient
from service.reconcilers import korifi as k
from simcluster.demo import PULL_SECRET, create_space
from simcluster.kpack.options import ENV_FAIL
from tests.helpers import child_env, eventually

Obj = dict[str, Any]

WORKLOADS = 100


@asynccontextmanager
async def process(
    module: str, *args: str, stderr: Any = subprocess.DEVNULL
) -> AsyncIterator[anyio.abc.Process]:
    """``python -m <module> <args>``, killed if still running at the end."""
    proc = await anyio.open_process(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
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


@dataclass(frozen=True)
class Scenario:
    """Where the scenario plays: its spaces, the root namespace with the BuilderInfo, the default
    ClusterBuilder, and the registry kpack pushes to."""

    spaces: tuple[str, ...]
    registry_host: str
    root: str = "cf"
    cluster_builder: str = "cf-kpack-cluster-builder"

    def plan(self, i: int) -> tuple[str, list[str], bool]:
        """Workload ``i``: its space, buildpacks (every fifth names some) and whether its build must fail."""
        buildpacks = ["paketo-buildpacks/go"] if i % 5 == 0 else []
        if i % 10 == 5:
            buildpacks = ["paketo-buildpacks/nodejs", "paketo-buildpacks/procfile"]
        return self.spaces[i % len(self.spaces)], buildpacks, i % 7 == 3

    def workload(self, i: int) -> Obj:
        space, buildpacks, fail = self.plan(i)
        spec: Obj = {
            "buildRef": {"name": f"build-{i:03d}"},
            "builderName": k.BUILDER_NAME,
            "source": {"registry": {"image": f"{self.registry_host}/packages/app-{i:03d}:1"}},
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

    def run_args(self, kubeconfig: Path) -> list[str]:
        return [
            "run",
            f"--kubeconfig={kubeconfig}",
            f"--container-repository-prefix={self.registry_host}/cf/",
            f"--cf-root-namespace={self.root}",
            f"--cluster-builder-name={self.cluster_builder}",
            "--metrics-bind-address=127.0.0.1:0",
            "--health-probe-bind-address=127.0.0.1:0",
            "--workers=4",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
        ]

    async def play(self, admin: KubeClient, service_kubeconfig: Path, within: float = 150) -> None:
        """Create the spaces and the workloads, run the service until every workload finished, stop it
        (it must exit 0), and check every outcome."""
        for space in self.spaces:
            await create_space(admin, space, self.registry_host)
        async with process("service", *self.run_args(service_kubeconfig)) as service:
            for i in range(WORKLOADS):
                await admin.create(r.BUILD_WORKLOAD, self.workload(i), self.plan(i)[0])

            async def finished() -> list[Obj] | None:
                items = []
                for space in self.spaces:
                    items += (await admin.list(r.BUILD_WORKLOAD, space))["items"]
                done = [w for w in items if succeeded(w).get("status") in ("True", "False")]
                return items if len(done) == WORKLOADS else None

            workloads = await eventually(finished, within, "every workload finished")
            assert await stopped(service) == 0
        await self.check(admin, workloads)

    async def check(self, admin: KubeClient, workloads: list[Obj]) -> None:
        by_name = {w["metadata"]["name"]: w for w in workloads}
        for i in range(WORKLOADS):
            space, buildpacks, fail = self.plan(i)
            got = by_name[f"build-{i:03d}"]
            condition = succeeded(got)
            ready = next(c for c in got["status"]["conditions"] if c["type"] == k.READY)
            assert ready["status"] == "True", (i, ready)
            if fail:
                assert (condition["status"], condition["reason"]) == ("False", k.BUILD_FAILED), i
                assert "droplet" not in got["status"]
                continue
            assert (condition["status"], condition["reason"]) == ("True", k.BUILD_SUCCEEDED), (i, condition)
            droplet = got["status"]["droplet"]
            assert droplet["registry"]["image"].startswith(
                f"{self.registry_host}/cf/app-{i:03d}-droplets@sha256:"
            )
            assert droplet["registry"]["imagePullSecrets"] == [{"name": PULL_SECRET}]
            assert droplet["stack"] == "io.buildpacks.stacks.jammy"
            assert droplet["ports"] == [8080]
            assert [p["type"] for p in droplet["processTypes"]] == ["web"]
            image = await admin.get(r.IMAGE, f"app-{i:03d}", space)
            expected_kind = "Builder" if buildpacks else "ClusterBuilder"
            assert image["spec"]["builder"]["kind"] == expected_kind, i
        builders = 0
        for space in self.spaces:
            builders += len((await admin.list(r.BUILDER, space))["items"])
        lists = {(self.plan(i)[0], tuple(self.plan(i)[1])) for i in range(WORKLOADS) if self.plan(i)[1]}
        assert builders == len(lists)
        info = await admin.get(r.BUILDER_INFO, k.BUILDER_INFO_NAME, self.root)
        assert next(c for c in info["status"]["conditions"] if c["type"] == k.READY)["status"] == "True"
        assert [b["name"] for b in info["status"]["buildpacks"]][:2] == [
            "paketo-buildpacks/java",
            "paketo-buildpacks/go",
        ]


def succeeded(obj: Obj) -> Obj:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == k.SUCCEEDED), {}
    )
