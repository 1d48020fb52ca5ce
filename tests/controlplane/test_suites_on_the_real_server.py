"""The suites that matter, against the real control plane: the reconcilers' suite (Korifi's behaviours,
this service's differences and the reliability regressions) runs through ``TEST_KUBECONFIG``, as a person
would point it at any cluster. The emulator-only tests (fault injection) skip, saying why; everything else
must pass against kube-apiserver and kube-controller-manager as it does against the emulator.

The service under test speaks as the Helm chart's ServiceAccount (``TEST_SERVICE_KUBECONFIG``: a
TokenRequest token, bound only to the RBAC the chart renders), so every behaviour of the suite is also
shown to work with the chart's least privilege; the tests themselves play Korifi and kpack as an
administrator."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import anyio
import orjson
import pytest

from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from simcluster.crds import bundled_crd_dirs, read_documents
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.controlplane.identity import (
    install_identity,
    permissions,
    release_name,
    remove_identity,
    render_chart,
    wait_authorized,
)
from tests.helpers import child_env

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
async def test_the_reconcilers_suite_passes_against_kube_apiserver_with_the_charts_rbac(
    real_control_plane: ControlPlane, tmp_path: Path
) -> None:
    # What the service needs installed, as in a Korifi cluster: kpack's CRDs and the project's.
    async with KubeClient(await load_kubeconfig(str(real_control_plane.kubeconfig))) as admin:
        await apply_crds(admin, read_documents(bundled_crd_dirs()))
        documents = render_chart(release_name(), f"suite-release-{uuid.uuid4().hex[:6]}")
        identity = await install_identity(admin, real_control_plane, documents)
        await wait_authorized(admin, identity, permissions(documents))
        service_kubeconfig = tmp_path / "service.kubeconfig"
        service_kubeconfig.write_bytes(orjson.dumps(identity.kubeconfig))  # JSON is YAML
        try:
            with anyio.fail_after(540):
                run = await anyio.run_process(
                    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reconcilers"],
                    cwd=ROOT,
                    env={
                        **child_env(),
                        "TEST_KUBECONFIG": str(real_control_plane.kubeconfig),
                        "TEST_SERVICE_KUBECONFIG": str(service_kubeconfig),
                    },
                    check=False,
                )
        finally:
            await remove_identity(admin, identity, documents)
    out = run.stdout.decode()
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    assert run.returncode == 0, out[-20000:] + run.stderr.decode()[-5000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
