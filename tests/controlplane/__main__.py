"""``python -m tests.controlplane build|run``: build the real control plane, or start it in the foreground.

    python -m tests.controlplane build
    python -m tests.controlplane run --kubeconfig-out realcluster.kubeconfig [--crds] [--workdir DIR]

``run`` builds what is missing, starts etcd, kube-apiserver and kube-controller-manager on 127.0.0.1,
writes the admin kubeconfig once /readyz answers and the controllers run (and, with ``--crds``, once
kpack's and the project's CRDs are served), and stops everything on Ctrl-C or SIGTERM (the kubeconfig is
removed then: it names a server that is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.controlplane import build
from tests.controlplane.cluster import StartFailed, apply_crds, control_plane, write_kubeconfig


def _log(message: str) -> None:
    print(f"controlplane: {message}", file=sys.stderr, flush=True)


async def serve(bins: build.Binaries, kubeconfig_out: Path | None, workdir: Path | None, crds: bool) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signalled: list[int] = []

    def on_signal(signum: int) -> None:
        if signalled:
            _log("already stopping")
            return
        signalled.append(signum)
        _log(f"{signal.Signals(signum).name}: stopping")
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with control_plane(bins, workdir=workdir) as cp:
            if crds:
                from service.kube.client import KubeClient
                from service.kube.config import load_kubeconfig
                from simcluster.crds import bundled_crd_dirs, read_documents

                async with KubeClient(await load_kubeconfig(str(cp.kubeconfig))) as client:
                    names = await apply_crds(client, read_documents(bundled_crd_dirs()))
                _log(f"{len(names)} CRDs served (kpack's and manifests/crds)")
            if kubeconfig_out:
                write_kubeconfig(kubeconfig_out, _read_yaml(cp.kubeconfig))
            where = (
                f"; admin kubeconfig {kubeconfig_out}"
                if kubeconfig_out
                else f"; admin kubeconfig {cp.kubeconfig}"
            )
            _log(
                f"ready: kube-apiserver {cp.version} on {cp.url}{where}; logs in {cp.workdir}; "
                f"/readyz after {cp.timings['readyz']:.1f}s, controllers after {cp.timings['controllers']:.1f}s; "
                "Ctrl-C stops it"
            )
            name = await cp.exited()
            program = cp.programs[name]
            _log(f"{name} exited ({program.process.returncode}); the end of {program.log}:\n{program.tail()}")
            return 1
    except asyncio.CancelledError:
        if not signalled:
            raise
        task.uncancel()
        _log("stopped")
        return 0
    except StartFailed as exc:
        _log(f"failed to start: {exc}")
        return 1
    finally:
        if kubeconfig_out:
            with contextlib.suppress(FileNotFoundError):
                os.remove(kubeconfig_out)


def _read_yaml(path: Path) -> dict[str, object]:
    import yaml

    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.controlplane", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build kube-apiserver, kube-controller-manager and etcd if missing")
    run = commands.add_parser("run", help="start the control plane in the foreground")
    run.add_argument("--kubeconfig-out", type=Path, help="write the admin kubeconfig here once ready")
    run.add_argument(
        "--workdir", type=Path, help="keep certificates, etcd data and logs here (default: temporary)"
    )
    run.add_argument("--crds", action="store_true", help="also create kpack's CRDs and the project's")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build.main()
    try:
        bins = build.ensure_built()
    except build.BuildUnavailable as exc:
        _log(str(exc))
        return 1
    except subprocess.CalledProcessError as exc:
        _log(f"the build failed ({exc.returncode}); go's messages are above")
        return 1
    return asyncio.run(serve(bins, args.kubeconfig_out, args.workdir, args.crds))


if __name__ == "__main__":
    sys.exit(main())
