"""Cluster configuration: kubeconfig files, in-cluster service accounts, explicit URLs, and the fallbacks."""

from __future__ import annotations

import base64
import datetime
import functools
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from service.kube import config as kcfg
from service.kube import errors
from service.kube.client import KubeClient
from service.kube.config import ConfigError
from simcluster.server import RunningApiServer, running_apiserver

pytestmark = pytest.mark.anyio

# Throwaway test PKI (EC P-256, valid until 2126) that protects nothing: a CA, and a certificate it
# signed for 127.0.0.1 and "kubernetes.test" that serves both as server and as client certificate.
TEST_CA = """-----BEGIN CERTIFICATE-----
MIIBjDCCATGgAwIBAgIUQDaZNvo18VpIOqFqYrqKBXWPBIQwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAgFw0yNjExMjIwMjM4MTVaGA8yMTI2MTAyOTAy
MzgxNVowEjEQMA4GA1UEAwwHdGVzdC1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABO4sE1i6W3lTY5+0V7w2ydn+swHl714iwTxuzf1mNUUfu5zZcRJTn/2VRRzk
F9PLP5SMOLcFht67VQ+RoB9ckQqjYzBhMB8GA1UdIwQYMBaAFNIyyo1FGmdVg3C7
yspbrLC8qcHkMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1Ud
DgQWBBTSMsqNRRpnVYNwu8rKW6ywvKnB5DAKBggqhkjOPQQDAgNJADBGAiEA1Mwo
IGfXFH0L7DlWXtivHnI3U2cQ3ypa8Air/49L2OgCIQCo+usy9/AkOWKH2Fez08l5
R9hcsKfj2EmOxRqI3XsP5w==
-----END CERTIFICATE-----
"""
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIBzjCCAXWgAwIBAgIUXhH4cazfuK1sJHq5Wk0d9pw4O20wCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAgFw0yNjExMjIwMjM4MTVaGA8yMTI2MTAyOTAy
MzgxNVowGTEXMBUGA1UEAwwOa3ViZS1hcGlzZXJ2ZXIwWTATBgcqhkjOPQIBBggq
hkjOPQMBBwNCAASM20cd0Dx3N1HO8WTY8iOgpUFrb4YeviyLlOsFf/BXzN2ETE5j
cnFT/CdWAFFNdRtQBXpYMnA+sIGwEtvVbxMto4GfMIGcMCAGA1UdEQQZMBeCD2t1
YmVybmV0ZXMudGVzdIcEfwAAATAJBgNVHRMEAjAAMA4GA1UdDwEB/wQEAwIHgDAd
BgNVHSUEFjAUBggrBgEFBQcDAQYIKwYBBQUHAwIwHQYDVR0OBBYEFE+A+9+B3i9X
w3IL3K3eqdEV58FoMB8GA1UdIwQYMBaAFNIyyo1FGmdVg3C7yspbrLC8qcHkMAoG
CCqGSM49BAMCA0cAMEQCIErMGK48qQr0JOxjdX7knuVVA5jgj8ngeqgboVEU7bm2
AiAoPLdNjUdv78SB3RL/OV7v2j1lsxfTUWo7QVKk6VJG7w==
-----END CERTIFICATE-----
"""
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMvBOsvwzKKt5HbS5
eQu8/ZF1BxL3SQtcXo53fcAFOlKhRANCAASM20cd0Dx3N1HO8WTY8iOgpUFrb4Ye
viyLlOsFf/BXzN2ETE5jcnFT/CdWAFFNdRtQBXpYMnA+sIGwEtvVbxMt
-----END PRIVATE KEY-----
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubeconfig(
    server: str,
    user: dict[str, Any],
    *,
    cluster: dict[str, Any] | None = None,
    name: str = "test",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    }


def write(path: Path, doc: Any) -> str:
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


def remove(path: str) -> None:
    os.unlink(path)


def assert_one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    return {
        "ca": write(tmp_path / "ca.crt", TEST_CA),
        "cert": write(tmp_path / "tls.crt", TEST_CERT),
        "key": write(tmp_path / "tls.key", TEST_KEY),
    }


@asynccontextmanager
async def tls_apiserver(
    pki: dict[str, str], *, client_certs: bool, token: str
) -> AsyncIterator[RunningApiServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["cert"], pki["key"])
    if client_certs:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=pki["ca"])
    async with running_apiserver(ssl_context=ctx, token=token) as api:
        yield api


async def version(cfg: kcfg.ClusterConfig) -> int:
    async with KubeClient(cfg, connection_retries=0) as client:
        status, _, _ = await client.request("GET", "/version")
        return status


# ---------------------------------------------------------------------- kubeconfig
async def test_kubeconfig_with_token_and_plain_http(tmp_path: Path) -> None:
    path = write(tmp_path / "config", kubeconfig("http://127.0.0.1:8080/", {"token": "abc"}))
    cfg = await kcfg.load_kubeconfig(path)
    assert cfg.host == "http://127.0.0.1:8080"
    assert cfg.ssl is False
    assert cfg.tls_server_name is None
    assert await cfg.authorization() == "Bearer abc"


async def test_kubeconfig_with_token_file(tmp_path: Path) -> None:
    token_file = write(tmp_path / "token", "from-file")
    path = write(tmp_path / "config", kubeconfig("http://k:80", {"tokenFile": token_file}))
    cfg = await kcfg.load_kubeconfig(path)
    assert await cfg.authorization() == "Bearer from-file"


async def test_kubeconfig_with_basic_auth(tmp_path: Path) -> None:
    path = write(tmp_path / "config", kubeconfig("http://k:80", {"username": "alice", "password": "s3cret"}))
    cfg = await kcfg.load_kubeconfig(path)
    assert await cfg.authorization() == "Basic " + b64("alice:s3cret")


async def test_kubeconfig_without_credentials(tmp_path: Path) -> None:
    path = write(tmp_path / "config", kubeconfig("http://k:80", {}))
    assert await (await kcfg.load_kubeconfig(path)).authorization() is None


async def test_kubeconfig_context_selection(tmp_path: Path) -> None:
    doc = kubeconfig("http://a:1", {"token": "ta"}, name="a")
    other = kubeconfig("http://b:2", {"token": "tb"}, name="b")
    for section in ("clusters", "users", "contexts"):
        doc[section] += other[section]
    path = write(tmp_path / "config", doc)
    current = await kcfg.load_kubeconfig(path)
    chosen = await kcfg.load_kubeconfig(path, context="b")
    assert (current.host, await current.authorization()) == ("http://a:1", "Bearer ta")
    assert (chosen.host, await chosen.authorization()) == ("http://b:2", "Bearer tb")


async def test_kubeconfig_env_is_read_at_call_time_and_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One file names the cluster and context, another holds the user, as $KUBECONFIG lists allow.
    doc = kubeconfig("http://merged:6443", {"token": "merged-token"})
    users = {"apiVersion": "v1", "kind": "Config", "users": doc.pop("users")}
    first = write(tmp_path / "clusters", {**doc, "users": []})
    second = write(tmp_path / "users", users)
    missing = str(tmp_path / "absent")
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([missing, first, second]))
    cfg = await kcfg.load_kubeconfig()
    assert cfg.host == "http://merged:6443"
    assert await cfg.authorization() == "Bearer merged-token"


async def test_kubeconfig_default_is_home_kube_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    write(tmp_path / ".kube" / "config", kubeconfig("http://home:1", {"token": "h"}))
    assert kcfg.default_kubeconfig() == str(tmp_path / ".kube" / "config")
    assert (await kcfg.load_kubeconfig()).host == "http://home:1"


async def test_loaders_leave_the_global_configuration_alone(tmp_path: Path, pki: dict[str, str]) -> None:
    from kubernetes_asyncio.client.configuration import Configuration

    before = Configuration.get_default()
    await kcfg.load_kubeconfig(write(tmp_path / "config", kubeconfig("http://elsewhere:1", {"token": "x"})))
    token = write(tmp_path / "token", "y")
    env = {"KUBERNETES_SERVICE_HOST": "10.1.2.3", "KUBERNETES_SERVICE_PORT": "443"}
    kcfg.load_incluster(token, pki["ca"], env)
    after = Configuration.get_default()
    assert (after.host, after.api_key) == (before.host, before.api_key)
    assert "elsewhere" not in after.host and "10.1.2.3" not in after.host


async def test_kubeconfig_tls_with_inline_ca_client_cert_and_server_name(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    async with tls_apiserver(pki, client_certs=True, token="tls-token") as api:
        user = {
            "client-certificate-data": b64(TEST_CERT),
            "client-key-data": b64(TEST_KEY),
            "token": "tls-token",
        }
        # The certificate does not name "localhost": only tls-server-name makes verification pass.
        url = f"https://localhost:{api.port}"
        named = kubeconfig(
            url,
            user,
            cluster={"certificate-authority-data": b64(TEST_CA), "tls-server-name": "kubernetes.test"},
        )
        cfg = await kcfg.load_kubeconfig(write(tmp_path / "named", named))
        assert cfg.tls_server_name == "kubernetes.test"
        assert isinstance(cfg.ssl, ssl.SSLContext) and cfg.ssl.verify_mode == ssl.CERT_REQUIRED
        assert await version(cfg) == 200

        unnamed = kubeconfig(url, user, cluster={"certificate-authority-data": b64(TEST_CA)})
        with pytest.raises(errors.ConnectionFailed):
            await version(await kcfg.load_kubeconfig(write(tmp_path / "unnamed", unnamed)))

        no_client_cert = kubeconfig(
            f"https://127.0.0.1:{api.port}",
            {"token": "tls-token"},
            cluster={"certificate-authority": pki["ca"]},
        )
        with pytest.raises(errors.ConnectionFailed):
            await version(await kcfg.load_kubeconfig(write(tmp_path / "nocert", no_client_cert)))


async def test_kubeconfig_insecure_skip_tls_verify(tmp_path: Path, pki: dict[str, str]) -> None:
    async with tls_apiserver(pki, client_certs=False, token="t") as api:
        doc = kubeconfig(
            f"https://127.0.0.1:{api.port}", {"token": "t"}, cluster={"insecure-skip-tls-verify": True}
        )
        cfg = await kcfg.load_kubeconfig(write(tmp_path / "config", doc))
        assert isinstance(cfg.ssl, ssl.SSLContext) and cfg.ssl.verify_mode == ssl.CERT_NONE
        assert await version(cfg) == 200
        # The same server is refused when its certificate must verify against the system roots.
        strict = kubeconfig(f"https://127.0.0.1:{api.port}", {"token": "t"})
        with pytest.raises(errors.ConnectionFailed):
            await version(await kcfg.load_kubeconfig(write(tmp_path / "strict", strict)))


EXEC_PLUGIN = """
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=float(sys.argv[2]))
status = {"token": f"tok-{n}", "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status}))
"""


@pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")  # inside kubernetes_asyncio
@pytest.mark.parametrize(("minutes", "expected"), [(1.0, ["tok-2", "tok-3"]), (60.0, ["tok-1", "tok-1"])])
async def test_kubeconfig_exec_plugin_token_is_refreshed_when_it_expires(
    tmp_path: Path, minutes: float, expected: list[str]
) -> None:
    # kubernetes_asyncio treats a token expiring within 5 minutes as expired: 1 minute forces a new exec
    # on every request, 60 minutes none.
    plugin = write(tmp_path / "plugin.py", EXEC_PLUGIN)
    counter = tmp_path / "count"
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [plugin, str(counter), str(minutes)],
            "interactiveMode": "Never",
        }
    }
    cfg = await kcfg.load_kubeconfig(write(tmp_path / "config", kubeconfig("http://k:1", user)))
    with anyio.fail_after(30):
        seen = [await cfg.authorization(), await cfg.authorization()]
    assert seen == [f"Bearer {t}" for t in expected]
    assert counter.read_text() == expected[-1].removeprefix("tok-")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("clusters: [unclosed", "malformed YAML"),
        ("just a string", "not a mapping"),
        ("apiVersion: v1\nkind: Config\n", "no contexts"),
        (
            yaml.safe_dump(
                kubeconfig("http://k:1", {}, cluster={}) | {"clusters": [{"name": "test", "cluster": {}}]}
            ),
            "empty cluster",
        ),
    ],
)
async def test_kubeconfig_malformed(tmp_path: Path, content: str, why: str) -> None:
    path = write(tmp_path / "config", content)
    with pytest.raises(ConfigError) as info:
        await kcfg.load_kubeconfig(path)
    assert_one_line(info.value)
    assert path in str(info.value), why


async def test_kubeconfig_errors_are_one_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config",
        kubeconfig("https://k:443", {"token": "t"}, cluster={"certificate-authority": "/nope/ca.crt"}),
    )
    cases = [
        kcfg.load_kubeconfig(str(tmp_path / "absent")),
        kcfg.load_kubeconfig(path),
        kcfg.load_kubeconfig(write(tmp_path / "ctx", kubeconfig("http://k:1", {})), context="missing"),
        kcfg.load_kubeconfig(
            write(
                tmp_path / "bad-ca",
                kubeconfig("https://k:1", {}, cluster={"certificate-authority-data": b64("not a cert")}),
            )
        ),
        kcfg.load_kubeconfig(write(tmp_path / "ftp", kubeconfig("ftp://k:1", {}))),
    ]
    messages = []
    for case in cases:
        with pytest.raises(ConfigError) as info:
            await case
        assert_one_line(info.value)
        messages.append(str(info.value))
    assert "kubeconfig not found" in messages[0]
    assert "/nope/ca.crt" in messages[1]
    assert "missing" in messages[2]
    assert "ftp://" in messages[4]


async def test_kubeconfig_cluster_without_server(tmp_path: Path) -> None:
    doc = kubeconfig("http://k:1", {}, cluster={"insecure-skip-tls-verify": False})
    del doc["clusters"][0]["cluster"]["server"]
    with pytest.raises(ConfigError, match="no server"):
        await kcfg.load_kubeconfig(write(tmp_path / "config", doc))


# ---------------------------------------------------------------------- in-cluster
def service_account(tmp_path: Path, pki: dict[str, str], token: str = "sa-token") -> dict[str, Any]:
    return {
        "token_file": write(tmp_path / "token", token),
        "ca_file": pki["ca"],
        "environ": {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
    }


async def test_incluster(tmp_path: Path, pki: dict[str, str]) -> None:
    cfg = kcfg.load_incluster(**service_account(tmp_path, pki))
    assert cfg.host == "https://10.96.0.1:443"
    assert isinstance(cfg.ssl, ssl.SSLContext) and cfg.ssl.verify_mode == ssl.CERT_REQUIRED
    assert await cfg.authorization() == "Bearer sa-token"


async def test_incluster_ipv6_service_host(tmp_path: Path, pki: dict[str, str]) -> None:
    sa = service_account(tmp_path, pki)
    sa["environ"] = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert kcfg.load_incluster(**sa).host == "https://[fd00::1]:6443"


async def test_incluster_token_is_cached_for_a_minute(tmp_path: Path, pki: dict[str, str]) -> None:
    sa = service_account(tmp_path, pki, "first")
    cfg = kcfg.load_incluster(**sa)
    write(Path(sa["token_file"]), "second")
    assert await cfg.authorization() == "Bearer first"


async def test_incluster_rotated_token_is_reread(
    tmp_path: Path, pki: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes_asyncio.config import incluster_config

    monkeypatch.setattr(incluster_config, "TOKEN_REFRESH_PERIOD", datetime.timedelta(0))
    sa = service_account(tmp_path, pki, "first")
    cfg = kcfg.load_incluster(**sa)
    assert await cfg.authorization() == "Bearer first"
    write(Path(sa["token_file"]), "second")
    assert await cfg.authorization() == "Bearer second"
    # Mid-rotation the file may be briefly absent: the token in hand is still good.
    remove(sa["token_file"])
    assert await cfg.authorization() == "Bearer second"
    write(Path(sa["token_file"]), "third")
    assert await cfg.authorization() == "Bearer third"


async def test_incluster_errors(tmp_path: Path, pki: dict[str, str]) -> None:
    good = service_account(tmp_path, pki)
    empty_ca = write(tmp_path / "empty.crt", "")
    cases: list[dict[str, Any]] = [
        {**good, "environ": {}},
        {**good, "environ": {"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": "443"}},
        {**good, "token_file": str(tmp_path / "absent")},
        {**good, "token_file": write(tmp_path / "empty-token", "")},
        {**good, "ca_file": str(tmp_path / "absent.crt")},
        {**good, "ca_file": empty_ca},
        {**good, "ca_file": write(tmp_path / "garbage.crt", "garbage")},
    ]
    for case in cases:
        with pytest.raises(ConfigError) as info:
            kcfg.load_incluster(**case)
        assert_one_line(info.value)


def test_incluster_namespace(tmp_path: Path) -> None:
    assert kcfg.incluster_namespace(write(tmp_path / "ns", "korifi\n")) == "korifi"
    assert kcfg.incluster_namespace(write(tmp_path / "blank", "  \n")) is None
    assert kcfg.incluster_namespace(str(tmp_path / "absent")) is None


# ---------------------------------------------------------------------- explicit
async def test_explicit(pki: dict[str, str]) -> None:
    plain = kcfg.explicit("http://127.0.0.1:8001/", token="t")
    assert (plain.host, plain.ssl, await plain.authorization()) == (
        "http://127.0.0.1:8001",
        False,
        "Bearer t",
    )
    verified = kcfg.explicit("https://api.example:6443", ca_file=pki["ca"])
    assert isinstance(verified.ssl, ssl.SSLContext) and verified.ssl.verify_mode == ssl.CERT_REQUIRED
    assert await verified.authorization() is None
    insecure = kcfg.explicit("https://api.example:6443", insecure=True)
    assert isinstance(insecure.ssl, ssl.SSLContext) and insecure.ssl.verify_mode == ssl.CERT_NONE
    assert "super-secret" not in repr(kcfg.explicit("http://k:1", token="super-secret"))


async def test_explicit_errors(tmp_path: Path) -> None:
    for call in (
        lambda: kcfg.explicit("127.0.0.1:6443"),
        lambda: kcfg.explicit("https://k:1", ca_file=str(tmp_path / "absent.crt")),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        assert_one_line(info.value)


async def test_explicit_round_trip_over_tls(pki: dict[str, str]) -> None:
    async with tls_apiserver(pki, client_certs=False, token="e") as api:
        assert await version(kcfg.explicit(api.url, token="e", ca_file=pki["ca"])) == 200
        async with KubeClient(kcfg.explicit(api.url, token="wrong", ca_file=pki["ca"])) as client:
            status, _, _ = await client.request("GET", "/version")
        assert status == 401


# ---------------------------------------------------------------------- load()
async def test_load_prefers_the_explicit_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", write(tmp_path / "env", kubeconfig("http://env:1", {})))
    explicit = write(tmp_path / "explicit", kubeconfig("http://explicit:1", {}))
    assert (await kcfg.load(explicit)).host == "http://explicit:1"
    assert (await kcfg.load()).host == "http://env:1"


async def test_load_falls_back_to_incluster(
    tmp_path: Path, pki: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setattr(
        kcfg, "load_incluster", functools.partial(kcfg.load_incluster, **service_account(tmp_path, pki))
    )
    assert (await kcfg.load()).host == "https://10.96.0.1:443"


async def test_load_without_any_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError) as info:
        await kcfg.load()
    assert_one_line(info.value)
    assert str(tmp_path / "absent") in str(info.value)
    assert "not running in a cluster" in str(info.value)


async def test_load_reports_a_broken_explicit_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        await kcfg.load(str(tmp_path / "absent"))
    assert_one_line(info.value)


def test_importing_the_client_does_not_import_kubernetes_asyncio() -> None:
    code = "import sys, service.kube.client, service.kube.config; print('kubernetes_asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
