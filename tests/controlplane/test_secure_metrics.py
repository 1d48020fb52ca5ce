"""Secure metrics on the real kube-apiserver: ``/metrics`` over HTTPS, each scrape's bearer token
authenticated (TokenReview) and authorized (SubjectAccessReview on the non-resource URL ``/metrics``) by
the API server, as kubebuilder's scaffold serves it (docs/metrics.md, "Secure metrics").

The service runs as ``run`` assembles it, with the chart's identity and ``metrics.secure`` on (so the
chart's RBAC for the reviews is what is proven); a Prometheus-like client scrapes with the tokens of
ServiceAccounts bound, or not, to a ClusterRole granting ``get`` on ``/metrics``. (The emulator serves no
TokenReview: this runs against kube-apiserver only.)
"""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.app import assemble, manager_options
from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from service.registry.client import RegistryClient
from simcluster.certs import issue, pem_cert, pem_key
from simcluster.crds import bundled_crd_dirs, read_documents
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.controlplane.conftest import skip_unless_available
from tests.controlplane.identity import (
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    VALUES,
    install_identity,
    permissions,
    release_name,
    remove_identity,
    render_chart,
    wait_authorized,
)
from tests.reconcilers.conftest import service_config

skip_unless_available(module_level=True)
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

Obj = dict[str, Any]


def certificate(directory: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metrics")])
    cert = issue(key, None, key, name, sans=[x509.DNSName("localhost")])
    directory.mkdir()
    (directory / "tls.crt").write_bytes(pem_cert(cert))
    (directory / "tls.key").write_bytes(pem_key(key))


async def token_of(admin: KubeClient, namespace: str, account: str) -> str:
    await admin.create(
        r.SERVICE_ACCOUNT,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
        namespace,
    )
    status, _, raw = await admin.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    assert status == 201, raw
    token: str = yaml.safe_load(raw)["status"]["token"]
    return token


@contextlib.asynccontextmanager
async def metrics_reader(admin: KubeClient, namespace: str, account: str) -> AsyncIterator[None]:
    """What an operator binds Prometheus's ServiceAccount to (the chart's ``<release>-metrics-reader``)."""
    name = f"metrics-reader-{uuid.uuid4().hex[:6]}"
    await admin.create(
        CLUSTER_ROLE,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
        },
    )
    await admin.create(
        CLUSTER_ROLE_BINDING,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    )
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            for resource in (CLUSTER_ROLE_BINDING, CLUSTER_ROLE):
                with contextlib.suppress(errors.NotFound):
                    await admin.delete(resource, name)


async def test_only_an_identity_rbac_lets_get_metrics_reads_them_over_https(
    real_control_plane: ControlPlane, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certificate(certs)
    async with KubeClient(await load_kubeconfig(str(real_control_plane.kubeconfig)), timeout=10) as admin:
        await apply_crds(admin, read_documents(bundled_crd_dirs()))
        documents = render_chart(
            release_name(), f"secure-{uuid.uuid4().hex[:6]}", {**VALUES, "metrics": {"secure": True}}
        )
        identity = await install_identity(admin, real_control_plane, documents)
        try:
            await wait_authorized(admin, identity, permissions(documents))
            config = replace(
                service_config(container_repository_prefix="registry.example/cf/"),
                metrics_bind_address="127.0.0.1:0",
                health_probe_bind_address="0",  # not needed here (and one port would serve both)
                metrics_secure=True,
                metrics_cert_dir=str(certs),
            )
            reader = await token_of(admin, identity.namespace, "prometheus")
            stranger = await token_of(admin, identity.namespace, "stranger")
            options = manager_options(config, "secure-metrics-test", identity.namespace)
            async with (
                metrics_reader(admin, identity.namespace, "prometheus"),
                KubeClient(identity.cluster, timeout=5.0) as client,
                RegistryClient(timeout=5.0) as images,
                anyio.create_task_group() as tg,
            ):
                manager = assemble(config, client, images, options=options)
                ports = await tg.start(manager.run)
                url = f"https://127.0.0.1:{ports['metrics']}/metrics"
                trust = ssl.create_default_context(cafile=str(certs / "tls.crt"))
                trust.check_hostname = False  # the certificate names localhost; the test dials 127.0.0.1
                try:
                    async with aiohttp.ClientSession() as http:

                        async def scrape(token: str | None) -> tuple[int, str]:
                            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
                            async with http.get(url, headers=headers, ssl=trust) as resp:
                                return resp.status, await resp.text()

                        assert (await scrape(None))[0] == 401
                        assert (await scrape("not-a-token"))[0] == 401
                        status, text = await scrape(stranger)
                        assert status == 403 and "Forbidden" in text, (status, text)
                        status, text = await scrape(reader)
                        assert status == 200 and "controller_runtime_reconcile_total" in text, status
                        # Plain HTTP is not served on the metrics port.
                        with pytest.raises(aiohttp.ClientError):
                            async with http.get(url.replace("https:", "http:")) as resp:
                                await resp.read()
                finally:
                    manager.shutdown()
        finally:
            await remove_identity(admin, identity, documents)
