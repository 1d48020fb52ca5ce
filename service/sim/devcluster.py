"""``kpack-image-builder devcluster``: the emulator as a process, with a kubeconfig for any client."""

from __future__ import annotations

import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import anyio
import yaml

from service.sim.crds import new_cluster
from service.sim.server import running_apiserver


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
) -> None:
    context = None
    if tls_cert and tls_key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    cluster = new_cluster(crd_dirs)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with running_apiserver(
            cluster,
            host=host,
            port=port,
            bookmark_interval=bookmark_interval,
            token=token,
            ssl_context=context,
        ) as api:
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
