"""``kpack-image-builder devcluster --kpack`` as a process: the seeded ClusterBuilder becomes ready, an
Image is built and pushed to the in-process registry, and the process still stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import yaml

from service.kube import resources as r
from service.registry.client import RegistryClient
from tests.helpers import fast_client
from tests.sim.kpack.conftest import builder_ready, condition, eventually, get_or_none, image

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[3]
START_DEADLINE = 20.0


async def test_devcluster_with_kpack(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "dev.kubeconfig"
    log_path = tmp_path / "devcluster.log"
    argv = [
        sys.executable,
        "-m",
        "simcluster",
        "devcluster",
        "--port",
        "0",
        "--kubeconfig-out",
        str(kubeconfig),
    ]
    with log_path.open("wb") as log:
        proc = await anyio.open_process(
            [*argv, "--kpack", "--kpack-build-seconds", "0.05"],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            with anyio.fail_after(START_DEADLINE):
                while not kubeconfig.exists():
                    assert proc.returncode is None, log_path.read_text()
                    await anyio.sleep(0.02)
            url = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
            async with fast_client(url) as client:
                builder = await builder_ready(client)
                registry = builder["spec"]["tag"].split("/", 1)[0]
                assert registry.startswith("127.0.0.1:")  # the in-process registry
                await client.create(r.IMAGE, image(tag=f"{registry}/cf/app-droplets"))
                build = await eventually(
                    lambda: get_or_none(client, r.BUILD, "app-build-1", "cf"),
                    until=lambda b: b is not None and condition(b, "Succeeded").get("status") == "True",
                    what="build 1 succeeded",
                )
            async with RegistryClient() as reg:
                config = await reg.image_config(build["status"]["latestImage"])
            assert "io.buildpacks.build.metadata" in config.labels
        finally:
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                code = await proc.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "kpack simulator running" in output and "serving an OCI registry" in output


def test_bad_kpack_options_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "simcluster", "devcluster", "--kpack", "--kpack-failure-rate", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "--kpack-failure-rate" in done.stderr
