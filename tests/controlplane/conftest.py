"""The real control plane as a session fixture: built if missing (minutes, once per machine), started once
per test session (seconds), shared by every test that asks for it; tests isolate by namespace.

Where it cannot be built (no ``go`` on PATH and nothing cached) the tests that need it skip, saying why —
except under ``CI=true``, where that is an error: a CI run must never silently skip the real server.

Not part of ``make test`` yet: a plain ``pytest`` leaves this folder's tests out (and says so at the
end); they run when asked for by path (``pytest tests/controlplane``) or with ``KPACK_CONTROLPLANE_TESTS=1``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.controlplane.build import ensure_built, unavailable_reason
from tests.controlplane.cluster import ControlPlane, control_plane

HERE = Path(__file__).resolve().parent
OPT_IN_ENV = "KPACK_CONTROLPLANE_TESTS"
_left_out: list[str] = []


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get(OPT_IN_ENV) == "1":
        return True
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if (
        collection_path.name.startswith("test_")
        and collection_path.suffix == ".py"
        and not _asked_for(config)
    ):
        _left_out.append(collection_path.name)
        return True
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _left_out:
        terminalreporter.write_line(
            "tests/controlplane (the real control plane) left out: not part of `make test` yet; "
            f"`pytest tests/controlplane` or {OPT_IN_ENV}=1 runs it"
        )


def skip_unless_available(*, module_level: bool = False) -> None:
    """Skip (the calling test, or the calling module) when the control plane cannot be had here; fail
    instead under ``CI=true``."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, where the real control plane must not be skipped", pytrace=False)
    pytest.skip(f"{reason}: the tests against it are skipped", allow_module_level=module_level)


@pytest.fixture(scope="session")
async def real_control_plane() -> AsyncIterator[ControlPlane]:
    skip_unless_available()
    bins = await anyio.to_thread.run_sync(ensure_built)
    async with control_plane(bins) as cp:
        yield cp
