"""Starts the real control plane on 127.0.0.1: etcd, then kube-apiserver (TLS, RBAC, service-account
tokens, an admin in ``system:masters``), then kube-controller-manager with only the controllers a
controller's tests rely on; writes an admin kubeconfig.

    async with control_plane(ensure_built()) as cp:
        ...  # cp.kubeconfig, cp.url, cp.timings

Every certificate is made here with ``cryptography`` (one CA signs the serving certificate and the client
certificates; a separate EC key signs service-account tokens). The programs run in sessions of their own
(a Ctrl-C in the terminal reaches this process only, which stops them in order: controller manager, API
server, etcd) and die with it if it is killed outright (``PR_SET_PDEATHSIG``). Their logs are in the
working directory (``etcd.log``, ``kube-apiserver.log``, ``kube-controller-manager.log``), quoted when one
fails to start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from simcluster.certs import issue as _issue
from simcluster.certs import pem_cert as _pem_cert
from simcluster.certs import pem_key as _pem_key
from tests.controlplane.build import Binaries, kubernetes_version

Log = Callable[[str], None]

# The kube-controller-manager controllers a controller's tests rely on (names as v1.37's --controllers
# flag spells them: cmd/kube-controller-manager/names/controller_names.go). Nothing else runs: no
# workload controllers, no endpoints, no token Secrets, no scheduler, no kubelet — no Pod ever runs.
CONTROLLERS = (
    "garbage-collector-controller",  # ownerReferences: cascading deletion, foreground and orphan
    "namespace-controller",  # a deleted namespace's content goes, then the namespace
    "serviceaccount-controller",  # the `default` ServiceAccount in every namespace
    "root-ca-certificate-publisher-controller",  # the `kube-root-ca.crt` ConfigMap in every namespace
    "clusterrole-aggregation-controller",  # ClusterRoles with an aggregationRule (admin, edit, view)
)
SERVICE_CIDR = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN = "realcluster-admin"
STOP_GRACE = 15.0


def _log(message: str) -> None:
    print(f"controlplane: {message}", file=sys.stderr, flush=True)


class StartFailed(RuntimeError):
    """A program of the control plane exited or did not become ready; the message quotes its log."""


# ---------------------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class Pki:
    """The PEM files kube-apiserver and the clients need, in ``dir``."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    def client_cert(self, user: str) -> Path:
        return self.dir / f"{user}.crt"

    def client_key(self, user: str) -> Path:
        return self.dir / f"{user}.key"


def make_pki(directory: Path, client_users: dict[str, str]) -> Pki:
    """A CA, kube-apiserver's serving certificate (127.0.0.1, localhost, the in-cluster names), a client
    certificate per ``user -> group`` and the service-account signing key, written into ``directory``."""
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kpack-image-builder test CA")])
    ca_cert = _issue(ca_key, None, ca_key, ca_name, is_ca=True)
    pki.ca_cert.write_bytes(_pem_cert(ca_cert))

    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_network(SERVICE_CIDR)[1]),
        x509.DNSName("localhost"),
        *(
            x509.DNSName(name)
            for name in (
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ),
    ]
    serving = _issue(
        ca_key,
        ca_cert,
        serving_key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
    )
    pki.serving_cert.write_bytes(_pem_cert(serving))
    pki.serving_key.write_bytes(_pem_key(serving_key))

    for user, group in client_users.items():
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, group),
                x509.NameAttribute(NameOID.COMMON_NAME, user),
            ]
        )
        cert = _issue(ca_key, ca_cert, key, subject, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        pki.client_cert(user).write_bytes(_pem_cert(cert))
        pki.client_key(user).write_bytes(_pem_key(key))

    # kube-apiserver reads the verifying keys as PUBLIC KEY or as "EC PRIVATE KEY" (not PKCS#8).
    sa_key = ec.generate_private_key(ec.SECP256R1())
    pki.sa_key.write_bytes(
        sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    for path in directory.iterdir():
        path.chmod(0o600)
    return pki


def kubeconfig(url: str, pki: Pki, user: str) -> dict[str, Any]:
    """A kubeconfig for ``user`` with every certificate inline (it stays valid when ``pki.dir`` goes)."""

    def inline(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "realcluster",
                "cluster": {"server": url, "certificate-authority-data": inline(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": inline(pki.client_cert(user)),
                    "client-key-data": inline(pki.client_key(user)),
                },
            }
        ],
        "contexts": [
            {
                "name": "realcluster",
                "context": {"cluster": "realcluster", "user": user, "namespace": "default"},
            }
        ],
        "current-context": "realcluster",
        "preferences": {},
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> None:
    """Atomically, so a client polling for the file never reads half of it; readable by the owner only."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function: the child gets SIGKILL when this process dies (Linux), so a killed test session
    leaves no etcd or API server behind. Prepared before the fork: the child only calls into libc."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


@dataclass
class Program:
    name: str
    process: asyncio.subprocess.Process
    log: Path

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def stop(self) -> None:
        if not self.running:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def _start(name: str, argv: list[str], workdir: Path) -> Program:
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    (workdir / f"{name}.args").write_text("\n".join(argv) + "\n")
    return Program(name, process, log)


async def _wait_until(
    what: str, program: Program, check: Callable[[], Any], within: float, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + within
    last: BaseException | str | None = None
    while True:
        if not program.running:
            raise StartFailed(
                f"{program.name} exited ({program.process.returncode}) before {what}; "
                f"the end of {program.log}:\n{program.tail()}"
            )
        try:
            outcome = await check()
            if outcome is True:
                return
            last = outcome
        except (aiohttp.ClientError, OSError, TimeoutError, errors.ApiError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise StartFailed(
                f"not within {within:g} s: {what} (last: {last!r}); the end of {program.log}:\n{program.tail()}"
            )
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------------- the control plane
@dataclass
class ControlPlane:
    url: str
    kubeconfig: Path  # the admin's (system:masters)
    pki: Pki
    workdir: Path
    version: str
    programs: dict[str, Program] = field(default_factory=dict)
    # seconds from the start to: etcd healthy, kube-apiserver /readyz 200, controllers running (the
    # `default` ServiceAccount created in `default`)
    timings: dict[str, float] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the CA and presents the admin's certificate."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(self.pki.client_cert(ADMIN), self.pki.client_key(ADMIN))
        return ctx

    async def exited(self) -> str:
        """Waits until a program exits (none should before ``stop``) and names it."""
        waits = {asyncio.ensure_future(p.process.wait()): name for name, p in self.programs.items()}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return waits[next(iter(done))]

    async def stop(self) -> None:
        """Controller manager first, etcd last, each given STOP_GRACE seconds after SIGTERM."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            if program := self.programs.get(name):
                await program.stop()


@contextlib.asynccontextmanager
async def control_plane(
    bins: Binaries,
    *,
    workdir: Path | None = None,
    controllers: Iterable[str] = CONTROLLERS,
    start_timeout: float = 90.0,
    log: Log = _log,
) -> AsyncIterator[ControlPlane]:
    """etcd, kube-apiserver and kube-controller-manager, ready: /readyz answers 200 and the controllers
    run. Everything is stopped on the way out; ``workdir`` (default: a temporary directory, then removed)
    keeps the certificates, etcd's data and the logs."""
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="kpack-controlplane-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pki = make_pki(root / "pki", {ADMIN: "system:masters", "kube-controller-manager": "system:masters"})
    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    url = f"https://127.0.0.1:{api_port}"
    admin_kubeconfig = root / "admin.kubeconfig"
    write_kubeconfig(admin_kubeconfig, kubeconfig(url, pki, ADMIN))
    write_kubeconfig(root / "kcm.kubeconfig", kubeconfig(url, pki, "kube-controller-manager"))
    cp = ControlPlane(url, admin_kubeconfig, pki, root, kubernetes_version())
    try:
        async with aiohttp.ClientSession(trust_env=False) as http:
            await _start_etcd(cp, bins, http, etcd_port, etcd_peer, start_timeout)
            cp.timings["etcd"] = time.monotonic() - started
            await _start_apiserver(cp, bins, http, etcd_port, api_port, start_timeout)
            cp.timings["readyz"] = time.monotonic() - started
        log(f"kube-apiserver {cp.version} ready on {url} in {cp.timings['readyz']:.1f}s (logs in {root})")
        await _start_controller_manager(cp, bins, list(controllers), start_timeout)
        cp.timings["controllers"] = time.monotonic() - started
        log(f"kube-controller-manager running in {cp.timings['controllers']:.1f}s")
        yield cp
    finally:
        await cp.stop()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


async def _start_etcd(
    cp: ControlPlane, bins: Binaries, http: aiohttp.ClientSession, port: int, peer: int, within: float
) -> None:
    client_url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    argv = [
        str(bins.etcd),
        "--name=controlplane",
        f"--data-dir={cp.workdir / 'etcd'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=controlplane={peer_url}",
        "--unsafe-no-fsync",  # a test cluster: speed over durability
        "--log-level=warn",
    ]
    etcd = cp.programs["etcd"] = await _start("etcd", argv, cp.workdir)

    async def healthy() -> bool | str:
        async with http.get(f"{client_url}/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            body = await resp.json(content_type=None)
            return True if resp.status == 200 and body.get("health") == "true" else f"{resp.status} {body}"

    await _wait_until(f"etcd answers on {client_url}/health", etcd, healthy, within)


async def _start_apiserver(
    cp: ControlPlane, bins: Binaries, http: aiohttp.ClientSession, etcd_port: int, port: int, within: float
) -> None:
    pki = cp.pki
    argv = [
        str(bins.kube_apiserver),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cp.workdir / 'apiserver-certs'}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=RBAC",
        # As OpenShift runs it: setting an owner reference that blocks the owner's deletion needs the right
        # to update the owner's finalizers, so the least-privilege tests see what such a cluster refuses.
        "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
        f"--service-account-issuer={ISSUER}",
        f"--service-account-key-file={pki.sa_key}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # No kubelet or node ever registers; a loopback address cannot be the `kubernetes` Service's
        # endpoint, so the API server does not try to publish one.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ]
    apiserver = cp.programs["kube-apiserver"] = await _start("kube-apiserver", argv, cp.workdir)
    ctx = cp.ssl_context()

    async def ready() -> bool | str:
        async with http.get(f"{cp.url}/readyz", ssl=ctx, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return True if resp.status == 200 else f"{resp.status} {(await resp.text())[-300:]}"

    await _wait_until(f"kube-apiserver answers 200 on {cp.url}/readyz", apiserver, ready, within, 0.2)


async def _start_controller_manager(
    cp: ControlPlane, bins: Binaries, controllers: list[str], within: float
) -> None:
    argv = [
        str(bins.kube_controller_manager),
        f"--kubeconfig={cp.workdir / 'kcm.kubeconfig'}",
        f"--controllers={','.join(controllers)}",
        "--leader-elect=false",
        "--secure-port=0",  # no HTTPS endpoint of its own: nothing scrapes or probes it here
        "--use-service-account-credentials=false",
        f"--root-ca-file={cp.pki.ca_cert}",
    ]
    kcm = cp.programs["kube-controller-manager"] = await _start("kube-controller-manager", argv, cp.workdir)
    if "serviceaccount-controller" not in controllers:
        return
    async with KubeClient(await load_kubeconfig(str(cp.kubeconfig)), timeout=5) as client:

        async def default_service_account() -> bool | str:
            try:
                await client.get(r.SERVICE_ACCOUNT, "default", "default")
            except errors.NotFound:
                return "no ServiceAccount default/default yet"
            return True

        await _wait_until(
            "the controllers run (ServiceAccount default/default created)",
            kcm,
            default_service_account,
            within,
            0.2,
        )


# ---------------------------------------------------------------------------------------- CRDs
async def apply_crds(
    client: KubeClient, documents: Iterable[dict[str, Any]], within: float = 30.0
) -> list[str]:
    """Create (or replace) each CustomResourceDefinition, as the emulator's loader (simcluster/crds.py)
    does, and wait until the server serves them all (condition Established)."""
    names = []
    for doc in documents:
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        name = doc["metadata"]["name"]
        try:
            current = await client.get(r.CUSTOM_RESOURCE_DEFINITION, name)
        except errors.NotFound:
            await client.create(r.CUSTOM_RESOURCE_DEFINITION, doc)
        else:
            version = current["metadata"]["resourceVersion"]
            await client.update(
                r.CUSTOM_RESOURCE_DEFINITION,
                {**doc, "metadata": {**doc["metadata"], "resourceVersion": version}},
            )
        names.append(name)
    deadline = time.monotonic() + within
    for name in names:
        while True:
            crd = await client.get(r.CUSTOM_RESOURCE_DEFINITION, name)
            conditions = (crd.get("status") or {}).get("conditions") or ()
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise StartFailed(f"CRD {name} not Established within {within:g} s: {conditions}")
            await asyncio.sleep(0.1)
    return names
