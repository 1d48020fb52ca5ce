"""Registries for the client tests: the real one (Debian's ``docker-registry``, distribution 2.8) and the
in-process simulator, each with Basic (htpasswd) and with Bearer token authentication.

The real registry's token auth needs a token server: one runs in the test process and signs JWTs (ES256)
with a key whose self-signed certificate is the registry's ``rootcertbundle``; the certificate travels in
the token's ``x5c`` header, which is how distribution finds the signing key. Registries are started once
per session; tests keep apart by using their own repository names.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import bcrypt
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from service.registry import Keychain, RegistryClient
from simcluster.registry import OciRegistry, running_registry

DOCKER_REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
HAVE_DISTRIBUTION = Path(DOCKER_REGISTRY).is_file()
NO_DISTRIBUTION = "docker-registry (Debian package docker-registry, distribution 2.8) is not installed"
USER, PASSWORD = "alice", "wonderland"
SERVICE, ISSUER = "test-registry", "test-issuer"
DEADLINE = 10.0  # seconds any single operation may take before a test fails


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def docker_secret(host: str, username: str, password: str, name: str = "regcred") -> dict[str, Any]:
    config = {"auths": {host: {"username": username, "password": password}}}
    return {
        "metadata": {"name": name, "namespace": "cf"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


# --------------------------------------------------------------------------------- token server


@dataclass
class TokenServer:
    """Issues distribution-compatible JWTs: Basic credentials (or none) in, a token for the scopes out."""

    users: dict[str, str]
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    requests: int = 0
    url: str = ""

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )

    def bundle(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        subject = ""
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, encoded = header.partition(" ")
            username, _, password = base64.b64decode(encoded).decode().partition(":")
            if scheme.lower() != "basic" or self.users.get(username) != password:
                return web.json_response({"details": "incorrect username or password"}, status=401)
            subject = username
        access = []
        for scope in " ".join(request.query.getall("scope", [])).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if subject:  # anonymous users get a token that grants nothing
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        return web.json_response({"token": self.sign(subject, access), "expires_in": 300})


@asynccontextmanager
async def running_token_server(users: dict[str, str]) -> AsyncIterator[TokenServer]:
    server = TokenServer(users)
    app = web.Application()
    app.router.add_get("/token", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/token"
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


# ---------------------------------------------------------------------------- real registry


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def wait_until_serving(url: str, process: anyio.abc.Process, log: Path) -> None:
    """Poll ``/v2/`` until the registry answers (200 or 401); fail early if the process dies."""
    async with aiohttp.ClientSession(trust_env=False) as session:
        with anyio.fail_after(DEADLINE):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"docker-registry exited with {process.returncode}: {tail(log)}")
                try:
                    async with session.get(url + "/v2/", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status in (200, 401):
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await anyio.sleep(0.02)


def write_config(workdir: Path, port: int, auth: dict[str, Any]) -> Path:
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "auth": auth,
    }
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@asynccontextmanager
async def running_distribution(workdir: Path, auth: dict[str, Any]) -> AsyncIterator[str]:
    """``docker-registry serve`` on a free port with filesystem storage and deletes enabled; yields the
    registry's host:port."""
    port = free_port()
    path = write_config(workdir, port, auth)
    log = workdir / "registry.log"
    with open(log, "wb") as out:  # noqa: ASYNC230 - the child's output, opened once
        process = await anyio.open_process([DOCKER_REGISTRY, "serve", str(path)], stdout=out, stderr=out)
        async with process:
            try:
                await wait_until_serving(f"http://127.0.0.1:{port}", process, log)
                yield f"127.0.0.1:{port}"
            finally:
                with anyio.CancelScope(shield=True):
                    process.terminate()
                    with anyio.move_on_after(5):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()


# --------------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """One registry under test. ``sim`` is the simulator's state (None for the real registry)."""

    kind: str  # "distribution" or "sim"
    auth: str  # "basic" or "token"
    host: str
    sim: OciRegistry | None = None
    tokens: TokenServer | None = None

    def keychain(self, password: str = PASSWORD) -> Keychain:
        return Keychain.from_secrets([docker_secret(self.host, USER, password)])

    def repo(self, label: str = "app") -> str:
        """A repository of its own for each test."""
        return f"{self.host}/{label}-{uuid.uuid4().hex[:10]}"

    def token_requests(self) -> int:
        if self.tokens is not None:
            return self.tokens.requests
        assert self.sim is not None
        return self.sim.requests[("GET", "token")]

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.auth}"


def htpasswd(workdir: Path) -> Path:
    path = workdir / "htpasswd"
    # Cost 4: distribution checks the hash on every request.
    path.write_bytes(
        USER.encode() + b":" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)) + b"\n"
    )
    return path


@pytest.fixture(scope="session")
async def distribution_basic(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Backend]:
    if not HAVE_DISTRIBUTION:
        pytest.skip(NO_DISTRIBUTION)
    workdir = tmp_path_factory.mktemp("distribution-basic")
    auth = {"htpasswd": {"realm": "test-realm", "path": str(htpasswd(workdir))}}
    async with running_distribution(workdir, auth) as host:
        yield Backend("distribution", "basic", host)


@pytest.fixture(scope="session")
async def distribution_token(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Backend]:
    if not HAVE_DISTRIBUTION:
        pytest.skip(NO_DISTRIBUTION)
    workdir = tmp_path_factory.mktemp("distribution-token")
    async with running_token_server({USER: PASSWORD}) as tokens:
        bundle = workdir / "token-signer.pem"
        bundle.write_bytes(tokens.bundle())
        auth = {
            "token": {
                "realm": tokens.url,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(bundle),
            }
        }
        async with running_distribution(workdir, auth) as host:
            yield Backend("distribution", "token", host, tokens=tokens)


@pytest.fixture(scope="session")
async def sim_basic() -> AsyncIterator[Backend]:
    async with running_registry(OciRegistry(auth="basic", users={USER: PASSWORD}, realm="test-realm")) as r:
        yield Backend("sim", "basic", r.host, sim=r.registry)


@pytest.fixture(scope="session")
async def sim_token() -> AsyncIterator[Backend]:
    async with running_registry(OciRegistry(auth="token", users={USER: PASSWORD}, service=SERVICE)) as r:
        yield Backend("sim", "token", r.host, sim=r.registry)


@pytest.fixture(params=["distribution", "sim"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each registry with Basic authentication."""
    found: Backend = request.getfixturevalue(f"{request.param}_basic")
    return found


@pytest.fixture(params=["distribution-token", "sim-token"])
def token_backend(request: pytest.FixtureRequest) -> Backend:
    """Each registry with Bearer token authentication."""
    found: Backend = request.getfixturevalue(request.param.replace("-", "_"))
    return found


@pytest.fixture(params=["distribution-basic", "sim-basic", "distribution-token", "sim-token"])
def any_backend(request: pytest.FixtureRequest) -> Backend:
    """Each registry with each kind of authentication."""
    found: Backend = request.getfixturevalue(request.param.replace("-", "_"))
    return found


@dataclass
class Traced:
    """The HTTP requests a client sent, as (method, path)."""

    requests: list[tuple[str, str]] = field(default_factory=list)

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, p in self.requests if m == method and fragment in p)

    def __call__(self, method: str, path: str) -> None:
        self.requests.append((method, path))


@contextmanager
def deadline(seconds: float = DEADLINE) -> Iterator[None]:
    with anyio.fail_after(seconds):
        yield


@asynccontextmanager
async def client_for(backend: Backend, **options: Any) -> AsyncIterator[tuple[RegistryClient, Traced]]:
    traced = Traced()
    options.setdefault("keychain", backend.keychain())
    options.setdefault("timeout", DEADLINE)
    options.setdefault("connect_timeout", 2.0)
    async with RegistryClient(on_request=traced, **options) as client:
        yield client, traced
