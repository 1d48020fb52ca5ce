"""The container image, built for real and run as the chart's pod runs it (docs/image.md).

The Dockerfile is built with Debian's ``buildah`` (``bud --isolation chroot --network host``: no daemon,
no container runtime) into a storage of this module's own, on a base made here: Debian bookworm by
``debootstrap`` (minbase with python3 and python3-venv), so neither Docker Hub nor its python image is
needed, and the Dockerfile is shown to build on a Debian Python that refuses system-wide pip installs
(PEP 668). The debootstrapped tree is cached as a tarball under ``~/.cache/kpack-image-builder/image-base/``,
keyed by its recipe, so only the first run pays for it. pip fetches the locked distributions from the
index (PIP_INDEX_URL if set), trusting the CA bundle pip trusts here (PIP_CERT), passed as a build secret.

Both images are then run with ``images/podrun.py``, under the pod's constraints: the image's numeric
non-root user, a read-only root filesystem with /tmp alone writable, no capabilities, no_new_privs, and a
network namespace of its own. The service image must answer ``kpack-image-builder --help``; the demo
image (the Dockerfile's ``demo`` target) must run ``demo --exit-when-done`` to the end with every sample
workload ending as it should.

Needs root on Linux, buildah, debootstrap (and Debian's archive keyring) and the network. Without them it
skips, saying why, except under ``CI=true``, where it fails: CI must build the image. Marked ``image``, so
``pytest -m "not image"`` leaves it out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PODRUN = ROOT / "images" / "podrun.py"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The base image's recipe: every input that changes the tree is in the cache key.
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = ("python3", "python3-venv")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Left out of the base: apt's caches (re-downloadable), docs, and what debootstrap copies from the host.
TRIM = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "dev/*",
)
EMPTIED = ("etc/resolv.conf", "etc/hostname")
RECIPE_VERSION = 1  # bump when the steps below change what the tarball holds

pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]


def unavailable_reason() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (buildah's storage, debootstrap and images/podrun.py mount and chroot)"
    for tool, package in (
        ("buildah", "buildah"),
        ("debootstrap", "debootstrap"),
        ("unshare", "util-linux"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if not KEYRING.exists():
        return f"{KEYRING} is missing (Debian package debian-archive-keyring)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _available() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, where the image must be built", pytrace=False)
    pytest.skip(f"{reason}: the image is not built")


@dataclass
class Buildah:
    """buildah on a storage of its own (graph root, run root, storage.conf, signature policy), so the
    host's configuration and images neither matter nor change."""

    home: Path

    def __post_init__(self) -> None:
        self.root, self.runroot = self.home / "root", self.home / "run"
        self.policy = self.home / "policy.json"
        # Only images this module made are used (--pull=never), so there is nothing to verify.
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.storage_conf = self.home / "storage.conf"
        self.storage_conf.write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.root}"\nrunroot = "{self.runroot}"\n'
        )

    def __call__(self, *args: str, timeout: float = 120) -> str:
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"buildah {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout.strip()

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(self.storage_conf)}
        env.pop("BUILDAH_ISOLATION", None)
        command = ["buildah", "--root", str(self.root), "--runroot", str(self.runroot)]
        command += ["--storage-driver", "overlay", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)

    def config(self, image: str) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self("inspect", "--type", "image", image))["OCIv1"]["config"]
        return config

    def close(self) -> None:
        for args in (("rm", "--all"), ("rmi", "--all", "--force")):
            self.run(*args, timeout=120)
        shutil.rmtree(self.home, ignore_errors=True)


def base_tarball() -> Path:
    """The debootstrapped tree as a tarball, made once per recipe (atomically: concurrent runs each make
    their own and the last rename wins, with equal content)."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
    recipe = {
        "suite": DEBIAN_SUITE,
        "mirror": DEBIAN_MIRROR,
        "packages": DEBIAN_PACKAGES,
        "arch": arch.stdout.strip(),
        "trim": TRIM,
        "emptied": EMPTIED,
        "version": RECIPE_VERSION,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path.home() / ".cache" / "kpack-image-builder" / "image-base"
    tarball = cache / f"debian-{DEBIAN_SUITE}-python3-{key}.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"rootfs-{key}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        done = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                f"--keyring={KEYRING}",
                DEBIAN_SUITE,
                str(work),
                DEBIAN_MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, "debootstrap failed:\n" + (done.stdout + done.stderr)[-4000:]
        for pattern in TRIM:
            for path in work.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        for name in EMPTIED:
            (work / name).write_text("")
        partial = tarball.with_name(f"{tarball.name}.{os.getpid()}.partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(work), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def import_base(buildah: Buildah) -> str:
    tarball = base_tarball()
    name = "localhost/kpack-image-builder-test-base:" + tarball.stem.rsplit("-", 1)[-1]
    container = buildah("from", "--signature-policy", str(buildah.policy), "scratch")
    buildah("add", container, str(tarball), "/")
    # What Debian's own images set; the Dockerfile's ENV PATH extends it.
    buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", container)
    buildah("config", "--cmd", "/bin/bash", container)
    buildah("commit", "--signature-policy", str(buildah.policy), "--rm", container, name)
    return name


def revision() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def pip_ca() -> str | None:
    """The CA bundle pip trusts on this machine, for the build's pip (a proxy may re-sign TLS)."""
    for candidate in (os.environ.get("PIP_CERT"), ssl.get_default_verify_paths().cafile):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@dataclass
class Images:
    buildah: Buildah
    base: str
    service: str
    demo: str
    build_args: dict[str, str]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    buildah = Buildah(tmp_path_factory.mktemp("buildah"))
    try:
        base = import_base(buildah)
        build_args = {
            "BASE_IMAGE": base,
            "VERSION": PYPROJECT["project"]["version"],
            "REVISION": revision(),
            "SOURCE": "https://example.org/kpack-image-builder.git",
        }
        if os.environ.get("PIP_INDEX_URL"):
            build_args["PIP_INDEX_URL"] = os.environ["PIP_INDEX_URL"]
        common = ["--signature-policy", str(buildah.policy), "--isolation", "chroot", "--network", "host"]
        common += ["--pull=never", "--layers"]
        for key, value in build_args.items():
            common += ["--build-arg", f"{key}={value}"]
        if ca := pip_ca():
            common += ["--secret", f"id=pip-ca,src={ca}"]
        service, demo = "localhost/kpack-image-builder:test", "localhost/kpack-image-builder-demo:test"
        # The demo target after the service's: it reuses the builder stage's layers.
        for target, name in (("service", service), ("demo", demo)):
            done = buildah.run("bud", *common, "--target", target, "-t", name, str(ROOT), timeout=900)
            assert done.returncode == 0, f"building {target}:\n" + (done.stdout + done.stderr)[-6000:]
        yield Images(buildah, base, service, demo, build_args)
    finally:
        buildah.close()


@dataclass
class Container:
    rootfs: Path
    config: dict[str, Any]


@pytest.fixture
def mounted(images: Images, request: pytest.FixtureRequest) -> Iterator[Container]:
    """The image (``request.param``: "service" or "demo") as a container whose root filesystem is at hand."""
    image = getattr(images, request.param)
    container = images.buildah(
        "from", "--pull=never", "--signature-policy", str(images.buildah.policy), image
    )
    try:
        yield Container(Path(images.buildah("mount", container)), images.buildah.config(image))
    finally:
        images.buildah.run("umount", container, timeout=60)
        images.buildah.run("rm", container, timeout=60)


def run_as_pod(
    container: Container, args: list[str] | None = None, *, command: list[str] | None = None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """The image's entrypoint with ``args`` (default: its CMD), or ``command`` instead, as the pod runs it."""
    config = container.config
    if command is None:
        command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [] if args is None else args)]
    return subprocess.run(
        [
            sys.executable,
            str(PODRUN),
            str(container.rootfs),
            f"--user={config['User']}",
            f"--workdir={config.get('WorkingDir') or '/'}",
            *(f"--env={e}" for e in config.get("Env") or []),
            "--",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def locked(requirements: Path) -> dict[str, str]:
    """{normalized name: version} of a lock file."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", requirements.read_text(), re.MULTILINE)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def installed(site_packages: Path) -> dict[str, str]:
    out = {}
    for metadata in site_packages.glob("*.dist-info/METADATA"):
        fields = dict(re.findall(r"^(Name|Version): (.+)$", metadata.read_text(), re.MULTILINE))
        out[re.sub(r"[-_.]+", "-", fields["Name"]).lower()] = fields["Version"]
    return out


def test_image_config_is_the_pods_and_labelled(images: Images) -> None:
    config = images.buildah.config(images.service)
    assert config["User"] == "65532:65532"  # numeric: runAsNonRoot can check it
    assert config["Entrypoint"] == ["kpack-image-builder"] and config["Cmd"] == ["run"]
    assert set(config["ExposedPorts"]) == {"8080/tcp", "8081/tcp"}
    labels = config["Labels"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["org.opencontainers.image.version"] == images.build_args["VERSION"]
    assert labels["org.opencontainers.image.revision"] == images.build_args["REVISION"]
    assert labels["org.opencontainers.image.source"] == images.build_args["SOURCE"]
    assert labels["org.opencontainers.image.base.name"] == images.base


@pytest.mark.parametrize("mounted", ["service"], indirect=True)
def test_service_image_holds_the_locked_distributions_and_nothing_to_build_with(mounted: Container) -> None:
    [site_packages] = (mounted.rootfs / "opt" / "venv" / "lib").glob("python3*/site-packages")
    expected = locked(ROOT / "requirements" / "image.txt")
    expected[PYPROJECT["project"]["name"]] = PYPROJECT["project"]["version"]
    # Exactly the lock: no pip, setuptools or hatchling (they stay in the builder stage), no sim extra.
    assert installed(site_packages) == expected
    assert (site_packages / "service" / "__main__.py").exists()
    assert not (site_packages / "simcluster").exists()
    assert not list((mounted.rootfs / "opt").glob("build*")) and not (mounted.rootfs / "src").exists()


@pytest.mark.parametrize("mounted", ["service"], indirect=True)
def test_the_pods_constraints_hold_in_the_container(mounted: Container) -> None:
    probe = (
        "import os, pathlib\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), os.getpid())\n"
        "print(status['CapEff'].strip(), status['CapBnd'].strip(), status['NoNewPrivs'].strip())\n"
        "pathlib.Path('/tmp/written').write_text('ok')\n"
        "for path in ('/written', '/opt/venv/written', '/etc/written'):\n"
        "    try:\n"
        "        pathlib.Path(path).write_text('no')\n"
        "    except OSError as exc:\n"
        "        print(path, exc.strerror)\n"
    )
    done = run_as_pod(mounted, command=["python3", "-c", probe], timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "65532 65532 [] 1",
        "0000000000000000 0000000000000000 1",
        "/written Read-only file system",
        "/opt/venv/written Read-only file system",
        "/etc/written Read-only file system",
    ]


@pytest.mark.parametrize("mounted", ["service"], indirect=True)
def test_service_image_answers_help(mounted: Container) -> None:
    done = run_as_pod(mounted, ["--help"], timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("usage: kpack-image-builder"), done.stdout
    assert "run" in done.stdout and "explain" in done.stdout


@pytest.mark.parametrize("mounted", ["demo"], indirect=True)
def test_demo_image_runs_the_demo_to_the_end(mounted: Container) -> None:
    done = run_as_pod(
        mounted,
        [
            "demo",
            "--exit-when-done",
            "--build-seconds=0.3",
            "--metrics-bind-address=127.0.0.1:0",
            "--health-probe-bind-address=127.0.0.1:0",
            "--timeout=90",
        ],
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name, outcome in (
        ("space-a/java-app-build-1", "True/BuildSucceeded"),
        ("space-b/broken-app-build-1", "False/BuildFailed"),
        ("space-b/typo-app-build-1", "False/InvalidBuildpacks"),
        ("space-a/endless-app-build-1", "False/BuildTimeout"),
    ):
        assert any(line.startswith(f"{name} ") and outcome in line for line in lines), (name, done.stdout)
    assert lines[-1] == "all done", done.stdout[-2000:]
