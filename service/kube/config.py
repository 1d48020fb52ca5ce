"""Where the API server is and how to authenticate to it: kubeconfig, in-cluster or explicit.

kubernetes_asyncio does the parsing (kubeconfig merging, inline certificates, exec plugins, the
in-cluster token refresh hook); this module turns its ``Configuration`` into a small ``ClusterConfig``
that our own aiohttp client uses. kubernetes_asyncio costs ~0.4 s and ~64 MiB to import, so it is only
imported inside the loaders, and only here; its loosely typed objects stay behind ``Any``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_FILE = f"{SERVICE_ACCOUNT_DIR}/token"
CA_FILE = f"{SERVICE_ACCOUNT_DIR}/ca.crt"
NAMESPACE_FILE = f"{SERVICE_ACCOUNT_DIR}/namespace"

AuthProvider = Callable[[], Awaitable[str | None]]


class ConfigError(ValueError):
    """No usable cluster configuration; the message is one line, fit for a CLI error."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


async def _no_auth() -> str | None:
    return None


@dataclass(frozen=True)
class ClusterConfig:
    host: str  # scheme://host[:port][/prefix], no trailing slash
    ssl: ssl.SSLContext | bool  # False for plain http
    tls_server_name: str | None = None
    proxy: str | None = None
    auth_provider: AuthProvider = field(default=_no_auth, repr=False, compare=False)

    async def authorization(self) -> str | None:
        """The ``Authorization`` header value for the next request (tokens may have rotated)."""
        return await self.auth_provider()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # The kubeconfig loader asserts on some malformed shapes, leaving no message at all.
    return text or f"malformed document ({type(exc).__name__})"


def _ssl_context(
    *, ca_file: str | None, cert_file: str | None = None, key_file: str | None = None, verify: bool = True
) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            ctx.load_cert_chain(cert_file, keyfile=key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS material (CA {ca_file}, cert {cert_file}): {_one_line(exc)}"
        ) from exc
    # Go's crypto/x509 (so kubectl) accepts cluster CAs lacking the key-identifier extensions that
    # Python 3.13's VERIFY_X509_STRICT demands; several cluster installers still mint such CAs.
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tls_for(
    host: str, *, ca_file: str | None, cert_file: str | None, key_file: str | None, verify: bool
) -> ssl.SSLContext | bool:
    if host.startswith("http://"):
        return False
    if not host.startswith("https://"):
        raise ConfigError(f"API server URL must start with https:// or http://, got {host!r}")
    return _ssl_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file, verify=verify)


def _configuration() -> Any:
    """A fresh kubernetes_asyncio Configuration, so no loader touches the process-global default."""
    from kubernetes_asyncio.client.configuration import Configuration

    return Configuration()


def _library_errors() -> tuple[type[BaseException], ...]:
    import yaml
    from kubernetes_asyncio.config.config_exception import ConfigException

    # The kubeconfig loader signals malformed documents with whatever the bad shape trips over.
    return (
        ConfigException,
        yaml.YAMLError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        AssertionError,
    )


def _from_configuration(cfg: Any, auth: AuthProvider) -> ClusterConfig:
    host = str(cfg.host).rstrip("/")
    tls = _tls_for(
        host,
        ca_file=cfg.ssl_ca_cert,
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        verify=bool(cfg.verify_ssl),
    )
    return ClusterConfig(host, tls, cfg.tls_server_name or None, cfg.proxy or None, auth)


def default_kubeconfig() -> str:
    """``$KUBECONFIG`` (a path list) or ``~/.kube/config``, as of now rather than of import time."""
    return os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")


def _existing(paths: str) -> list[str]:
    return [p for p in paths.split(os.pathsep) if p and os.path.exists(os.path.expanduser(p))]


async def load_kubeconfig(path: str | None = None, context: str | None = None) -> ClusterConfig:
    """The cluster of ``context`` (default: current-context) in ``path`` (default: ``default_kubeconfig()``).

    ``path`` may be a path list like ``$KUBECONFIG``; the files are merged as kubectl merges them.
    """
    paths = path or default_kubeconfig()
    if not _existing(paths):
        raise ConfigError(f"kubeconfig not found: {paths}")
    from kubernetes_asyncio.config import kube_config

    cfg = _configuration()
    try:
        # persist_config=False: refreshed credentials are never written back into the user's file.
        loader: Any = await kube_config.load_kube_config(
            config_file=paths, context=context, client_configuration=cfg, persist_config=False
        )
    except _library_errors() as exc:
        raise ConfigError(f"cannot load kubeconfig {paths}: {_one_line(exc)}") from exc
    if getattr(loader, "host", None) is None:
        raise ConfigError(f"kubeconfig {paths}: the selected cluster has no server URL")

    lock = anyio.Lock()

    async def authorization() -> str | None:
        # Exec credential plugins hand out expiring tokens; kubernetes_asyncio only refreshes them from
        # a background loop that never returns, so refresh here, on demand, once per expiry.
        if hasattr(loader, "exec_plugin_expiry"):
            async with lock:
                try:
                    await loader.load_from_exec_plugin()
                except _library_errors() as exc:
                    raise ConfigError(f"kubeconfig exec credential plugin failed: {_one_line(exc)}") from exc
                if getattr(loader, "token", None):
                    cfg.api_key["BearerToken"] = loader.token
        value = await cfg.get_api_key_with_prefix("BearerToken")
        return str(value) if value else None

    return _from_configuration(cfg, authorization)


def load_incluster(
    token_file: str = TOKEN_FILE, ca_file: str = CA_FILE, environ: Mapping[str, str] = os.environ
) -> ClusterConfig:
    """The service-account configuration a pod gets: KUBERNETES_SERVICE_HOST/PORT, token and CA files.

    The token is re-read once the cached copy is older than a minute, so rotated (bound) service
    account tokens are picked up.
    """
    from kubernetes_asyncio.config import incluster_config

    load_incluster_config: Any = incluster_config.load_incluster_config
    cfg = _configuration()
    try:
        load_incluster_config(
            client_configuration=cfg, token_filename=token_file, cert_filename=ca_file, environ=environ
        )
    except _library_errors() as exc:
        raise ConfigError(f"not running in a cluster: {_one_line(exc)}") from exc

    async def authorization() -> str | None:
        try:
            value = await cfg.get_api_key_with_prefix("BearerToken")
        except _library_errors():
            # The projected token is missing or empty mid-rotation; the copy the configuration still holds
            # is valid for a while, and the file is tried again on the next request.
            value = cfg.api_key.get("BearerToken")
        return str(value) if value else None

    return _from_configuration(cfg, authorization)


def explicit(
    host: str, token: str | None = None, ca_file: str | None = None, insecure: bool = False
) -> ClusterConfig:
    """A cluster given by URL (and optionally a bearer token and CA bundle), e.g. from CLI flags."""
    host = host.rstrip("/")
    tls = _tls_for(host, ca_file=ca_file, cert_file=None, key_file=None, verify=not insecure)
    header = f"Bearer {token}" if token else None

    async def authorization() -> str | None:
        return header

    return ClusterConfig(host, tls, None, None, authorization)


async def load(kubeconfig: str | None = None, context: str | None = None) -> ClusterConfig:
    """An explicit kubeconfig, else ``$KUBECONFIG`` / ``~/.kube/config`` if present, else in-cluster."""
    if kubeconfig:
        return await load_kubeconfig(kubeconfig, context)
    paths = default_kubeconfig()
    if _existing(paths):
        return await load_kubeconfig(paths, context)
    try:
        return load_incluster()
    except ConfigError as exc:
        raise ConfigError(f"no cluster configuration: no kubeconfig at {paths}, and {exc}") from exc


def incluster_namespace(path: str = NAMESPACE_FILE) -> str | None:
    """The pod's namespace from its service-account mount, or None outside a cluster."""
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError:
        return None
    return value or None
