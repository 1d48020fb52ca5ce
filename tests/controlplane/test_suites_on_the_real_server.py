"""The suites that matter, against the real control plane: the reconcilers' suite (Korifi's behaviours,
this service's differences and the reliability regressions) runs through ``TEST_KUBECONFIG``, as a person
would point it at any cluster. The emulator-only tests (fault injection) skip, saying why; everything else
must pass against kube-apiserver and kube-controller-manager as it does against the emulator."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from simcluster.crds import bundled_crd_dirs, read_documents
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.helpers import child_env

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
async def test_the_reconcilers_suite_passes_against_kube_apiserver(real_control_plane: ControlPlane) -> None:
    # What the service needs installed, as in a Korifi cluster: kpack's CRDs and the project's.
    async with KubeClient(await load_kubeconfig(str(real_control_plane.kubeconfig))) as client:
        await apply_crds(client, read_documents(bundled_crd_dirs()))
    env = child_env()
    with anyio.fail_after(540):
        run = await anyio.run_process(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reconcilers"],
            cwd=ROOT,
            env={**env, "TEST_KUBECONFIG": str(real_control_plane.kubeconfig)},
            check=False,
        )
    out = run.stdout.decode()
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    assert run.returncode == 0, out[-20000:] + run.stderr.decode()[-5000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
