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


def test_dockerfile_is_multi_stage_on_python_311_slim(dockerfile: str) -> None:
    args = dict(a.split("=", 1) for op, a in instructions(dockerfile) if op == "ARG" and "=" in a)
    builder, runtime = stages(dockerfile)
    base = args.get("PYTHON_IMAGE", "")
    assert base == "python:3.11-slim"
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert runtime[0][1].split()[0] in ("${PYTHON_IMAGE}", base)
    # The builder makes wheels with pip; the runtime installs only from them (no index).
    assert any(op == "RUN" and "pip wheel" in a for op, a in builder)
    installs = [a for op, a in runtime if op == "RUN" and "pip install" in a]
    assert len(installs) == 1 and "--no-index" in installs[0] and "from=builder" in installs[0]


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
        return any(
            fnmatch.fnmatch(path, p.removeprefix("**/")) or path.startswith(p.rstrip("/") + "/")
            for p in patterns
        )

    copied = [
        src
        for op, a in instructions(dockerfile)
        if op == "COPY" and not a.startswith("--from")
        for src in a.split()[:-1]
    ]
    assert {"pyproject.toml", "README.md", "service"} <= set(copied)
    assert "simcluster" not in copied  # the simulated cluster is not part of the product
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not ignored(src), f".dockerignore drops {src}, which the Dockerfile copies"
    for heavy in (".git", ".venv", "tests", "charts", "simcluster"):
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
