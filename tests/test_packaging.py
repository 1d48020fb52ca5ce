"""Packaging: the Dockerfile's essentials, the .dockerignore, and what the wheel carries.

No Docker daemon is at hand, so the image is checked as text; the wheel is really built (offline, with
the hatchling of the test environment).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(dockerfile):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_pins_its_base_and_installs_only_locked_hashes(dockerfile: str) -> None:
    """tests/test_image.py builds and runs the image; this checks, without a builder, what a build on
    another base could not show: the default base is pinned by digest and every install is hash-locked."""
    args = dict(a.split("=", 1) for op, a in instructions(dockerfile) if op == "ARG" and "=" in a)
    assert re.fullmatch(
        r"docker\.io/library/python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", args["BASE_IMAGE"]
    )
    runs = " ".join(a for op, a in instructions(dockerfile) if op == "RUN")
    installs = re.findall(r"pip (?:--python \S+ )?install ([^;&]*)", runs)
    assert {f for i in installs for f in re.findall(r"-r (requirements/\S+)", i)} == {
        "requirements/build.txt",
        "requirements/image.txt",
        "requirements/sim.txt",
    }
    for install in installs:
        assert "--no-index" in install or (
            "--require-hashes" in install and "--only-binary :all:" in install
        ), install
    service = stages(dockerfile)[-1]
    assert service[0] == ("FROM", "base AS service")
    assert not [a for op, a in service if op == "RUN"]  # it copies the builder's venv, nothing else


def test_image_runs_the_service_as_a_non_root_numeric_user(dockerfile: str) -> None:
    runtime = stages(dockerfile)[-1]
    users = [a for op, a in runtime if op == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, users  # numeric, so runAsNonRoot can verify it
    assert user == "65532"
    entrypoint = [json.loads(a) for op, a in runtime if op == "ENTRYPOINT"]
    cmd = [json.loads(a) for op, a in runtime if op == "CMD"]
    assert entrypoint == [["kpack-image-builder"]]  # exec form, so SIGTERM reaches the service
    assert cmd == [["run"]]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0][0] in scripts
    exposed = {p for op, a in runtime if op == "EXPOSE" for p in a.split()}
    assert exposed == {"8080", "8081"}


def test_dockerignore_keeps_what_the_build_copies(dockerfile: str) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        # As Docker reads it: the last matching pattern decides, "!" re-includes.
        verdict = False
        for p in patterns:
            pattern = p.removeprefix("!").removeprefix("**/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
                verdict = not p.startswith("!")
        return verdict

    copied = [
        src
        for op, a in instructions(dockerfile)
        if op == "COPY" and not a.startswith("--from")
        for src in a.split()[:-1]
    ]
    assert {"pyproject.toml", "README.md", "service"} <= set(copied)
    # The simulated cluster is not part of the product: only the demo image carries it.
    service_copies = [a for op, a in stages(dockerfile)[-1] if op == "COPY"]
    assert service_copies == ["--from=builder /opt/venv /opt/venv"], service_copies
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not ignored(src), f".dockerignore drops {src}, which the Dockerfile copies"
    for heavy in (".git", ".venv", "tests", "charts", "docs", "benchmarks", "manifests/base"):
        assert ignored(heavy), f".dockerignore should keep {heavy} out of the build context"


@pytest.mark.timeout(300)
def test_wheel_carries_the_service_alone_and_its_command(tmp_path: Path) -> None:
    """Built as `pip wheel` builds it, without network: hatchling comes from the test environment."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = tmp_path.glob("kpack_image_builder-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    assert "service/__main__.py" in names and "service/reconcilers/buildworkload/track.py" in names
    # The product alone: no simulated cluster, no tests.
    assert not any(n.startswith(("simcluster/", "tests/", "benchmarks/")) for n in names), sorted(names)
    assert re.search(r"^kpack-image-builder = service\.__main__:main$", scripts, re.MULTILINE), scripts
