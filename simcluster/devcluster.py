"""``kpack-image-builder devcluster``: the emulator as a process, with a kubeconfig for any client."""

from __future__ import annotations

import os
import signal
import ssl
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import yaml

from simcluster.crds import new_cluster
from simcluster.server import running_apiserver


def kubeconfig(url: str, token: str | None = None, *, insecure: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {"server": url}
    if insecure:
        cluster["insecure-skip-tls-verify"] = True
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": cluster}],
        "users": [{"name": "devcluster", "user": {"token": token} if token else {}}],
        "contexts": [
            {
                "name": "devcluster",
                "context": {"cluster": "devcluster", "user": "devcluster", "namespace": "default"},
            }
        ],
        "current-context": "devcluster",
        "preferences": {},
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> None:
    """Write atomically, so a client polling for the file never reads half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, path)


async def serve(
    *,
    host: str,
    port: int,
    kubeconfig_out: Path | None,
    bookmark_interval: float,
    crd_dirs: list[Path],
    token: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    kpack: bool = False,
    kpack_build_seconds: float = 2.0,
    kpack_failure_rate: float = 0.0,
    kpack_seed: int = 0,
    kpack_registry: str | None = None,
) -> None:
    context = None
    if tls_cert and tls_key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    cluster = new_cluster(crd_dirs)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with AsyncExitStack() as stack:
            api = await stack.enter_async_context(
                running_apiserver(
                    cluster,
                    host=host,
                    port=port,
                    bookmark_interval=bookmark_interval,
                    token=token,
                    ssl_context=context,
                )
            )
            if kpack:
                await _start_kpack(
                    stack, api, kpack_build_seconds, kpack_failure_rate, kpack_seed, kpack_registry
                )
            if kubeconfig_out:
                write_kubeconfig(kubeconfig_out, kubeconfig(api.url, token, insecure=context is not None))
            where = f"; kubeconfig {kubeconfig_out}" if kubeconfig_out else ""
            print(
                f"devcluster: serving the Kubernetes API emulator on {api.url}{where}",
                file=sys.stderr,
                flush=True,
            )
            async for _ in signals:
                break
    print("devcluster: stopped", file=sys.stderr, flush=True)


def registry_host(url: str) -> str:
    """``host[:port]`` of a registry given as a URL (``http://127.0.0.1:5000``) or as a host."""
    return url.split("://", 1)[-1].rstrip("/")


async def _start_kpack(
    stack: AsyncExitStack,
    api: Any,
    build_seconds: float,
    failure_rate: float,
    seed: int,
    registry: str | None,
) -> None:
    """The kpack simulator (webhooks and controllers) in this process, with an in-process OCI registry
    unless one is given, and the objects Korifi's Helm chart creates next to kpack."""
    from simcluster.kpack import KpackOptions, running_kpack
    from simcluster.registry import running_registry

    if registry:
        host = registry_host(registry)
    else:
        reg = await stack.enter_async_context(running_registry(host=api.host))
        host = reg.host
        print(f"devcluster: serving an OCI registry on {reg.url}", file=sys.stderr, flush=True)
    options = KpackOptions(build_seconds=build_seconds, failure_rate=failure_rate, seed=seed, registry=host)
    await stack.enter_async_context(running_kpack(api, options, seed=True))
    print(
        f"devcluster: kpack simulator running (builds take {build_seconds:g} s, failure rate {failure_rate:g}, "
        f"images pushed to {host})",
        file=sys.stderr,
        flush=True,
    )
