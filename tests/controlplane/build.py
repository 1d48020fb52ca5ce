"""Builds the real control plane's three programs — kube-apiserver, kube-controller-manager, etcd — from
the Go module beside this file, once per machine.

The binaries go to ``~/.cache/kpack-image-builder/controlplane/<hash of go.sum>/`` (``$XDG_CACHE_HOME``
is honoured, and ``KPACK_CONTROLPLANE_CACHE`` names another root), never into the repository; they are
rebuilt only when ``go.sum`` changes (a new hash), and older builds beside them are removed then. The
build is ``go build -mod=readonly -trimpath`` with ``CGO_ENABLED=0``: static binaries, exactly the
modules ``go.sum`` pins. Go's own caches (``GOMODCACHE``, ``GOCACHE``) are Go's; point them elsewhere to
measure a cold build.

    python -m tests.controlplane.build      # builds what is missing, printing what it does
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parent
CACHE_ENV = "KPACK_CONTROLPLANE_CACHE"

# program name -> the Go package that is its main
PROGRAMS = {
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
}

Log = Callable[[str], None]


class BuildUnavailable(RuntimeError):
    """The binaries are not cached and cannot be built here (no ``go`` on PATH)."""


def _log(message: str) -> None:
    print(f"controlplane: {message}", file=sys.stderr, flush=True)


def _required_version(module: str) -> str:
    text = (MODULE_DIR / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{MODULE_DIR / 'go.mod'} does not require {module}")
    return match.group(1)


def kubernetes_version() -> str:
    """The pinned Kubernetes release, e.g. ``v1.37.2``."""
    return _required_version("k8s.io/kubernetes")


def etcd_version() -> str:
    return _required_version("go.etcd.io/etcd/server/v3")


def go_sum_hash() -> str:
    return hashlib.sha256((MODULE_DIR / "go.sum").read_bytes()).hexdigest()[:16]


def cache_root() -> Path:
    if root := os.environ.get(CACHE_ENV):
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kpack-image-builder" / "controlplane"


@dataclass(frozen=True)
class Binaries:
    dir: Path

    @property
    def etcd(self) -> Path:
        return self.dir / "etcd"

    @property
    def kube_apiserver(self) -> Path:
        return self.dir / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path:
        return self.dir / "kube-controller-manager"

    def missing(self) -> list[str]:
        return [name for name in PROGRAMS if not os.access(self.dir / name, os.X_OK)]


def binaries() -> Binaries:
    """Where this go.sum's binaries are (or will be); nothing is built."""
    return Binaries(cache_root() / go_sum_hash())


def go_available() -> bool:
    return shutil.which("go") is not None


def unavailable_reason() -> str | None:
    """Why the control plane cannot be had here (not built, and no Go to build it), or None."""
    if binaries().missing() and not go_available():
        return (
            f"`go` is not on PATH and the real control plane (Kubernetes {kubernetes_version()}) is not built"
        )
    return None


def _default_binary_name(package: str) -> str:
    # `go build -o dir/ pkg...` names a binary after the package path's last element, skipping a major
    # version suffix: go.etcd.io/etcd/server/v3 -> "server".
    parts = package.split("/")
    if re.fullmatch(r"v[0-9]+", parts[-1]) and len(parts) > 1:
        return parts[-2]
    return parts[-1]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two sessions starting at once (two shells, two pytest runs) build once.
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ldflags() -> str:
    version = kubernetes_version()
    major, minor = version.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    # -s -w: no symbol table or DWARF (a third smaller, faster to link). The -X lines make /version say
    # the release instead of "v0.0.0-master+$Format:%H$"; etcd has no such package and ignores them.
    return (
        f"-s -w -X {pkg}.gitVersion={version} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor}"
        f" -X {pkg}.gitTreeState=clean"
    )


def ensure_built(log: Log = _log) -> Binaries:
    """The binaries for this go.sum, built first if any is missing. Raises ``BuildUnavailable`` when they
    are missing and there is no Go, and ``subprocess.CalledProcessError`` when the build fails."""
    bins = binaries()
    if not bins.missing():
        log(f"kube-apiserver, kube-controller-manager, etcd cached in {bins.dir}")
        return bins
    go = shutil.which("go")
    if go is None:
        raise BuildUnavailable(
            f"`go` is not on PATH, so the real control plane (Kubernetes {kubernetes_version()}) "
            f"cannot be built into {bins.dir}"
        )
    bins.dir.mkdir(parents=True, exist_ok=True)
    with _locked(bins.dir / ".lock"):
        todo = bins.missing()
        if not todo:  # another process built them while this one waited
            return bins
        _build(go, bins, todo, log)
    _prune_older_builds(bins, log)
    return bins


def _build(go: str, bins: Binaries, todo: list[str], log: Log) -> None:
    packages = [PROGRAMS[name] for name in todo]
    log(
        f"building {', '.join(todo)} (Kubernetes {kubernetes_version()}, etcd {etcd_version()}) "
        f"into {bins.dir}; a cold build (empty Go caches) took 8 minutes on two cores here"
    )
    env = {**os.environ, "CGO_ENABLED": "0", "GOWORK": "off"}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=bins.dir, prefix=".build-") as tmp:
        command = [go, "build", "-mod=readonly", "-trimpath", "-ldflags", _ldflags(), "-o", tmp + os.sep]
        log(f"$ cd {MODULE_DIR} && CGO_ENABLED=0 {shlex.join(command + packages)}")
        subprocess.run([*command, *packages], cwd=MODULE_DIR, env=env, check=True, stdin=subprocess.DEVNULL)
        for name, package in zip(todo, packages, strict=True):
            # A rename in the same directory: a reader never sees half a binary.
            os.replace(Path(tmp) / _default_binary_name(package), bins.dir / name)
    sizes = ", ".join(f"{name} {(bins.dir / name).stat().st_size / 1e6:.0f} MB" for name in todo)
    log(f"built in {time.monotonic() - started:.0f}s: {sizes}")


def _prune_older_builds(bins: Binaries, log: Log) -> None:
    for other in bins.dir.parent.iterdir():
        if other != bins.dir and other.is_dir() and re.fullmatch(r"[0-9a-f]{16}", other.name):
            log(f"removing an older build (another go.sum): {other}")
            shutil.rmtree(other, ignore_errors=True)


def main() -> int:
    try:
        bins = ensure_built()
    except BuildUnavailable as exc:
        _log(str(exc))
        return 1
    except subprocess.CalledProcessError as exc:
        _log(f"the build failed ({exc.returncode}); go's messages are above")
        return 1
    for name in PROGRAMS:
        print(bins.dir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
