"""The real control plane as a session fixture: built if missing (minutes, once per machine), started once
per test session (seconds), shared by every test that asks for it; tests isolate by namespace.

Where it cannot be built (no ``go`` on PATH and nothing cached) the tests that need it skip, saying why —
except under ``CI=true``, where that is an error: a CI run must never silently skip the real server.

Part of ``make test``: the first run on a machine builds the binaries (about eight minutes cold, on two
cores), later ones find them cached.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
import pytest

from tests.controlplane.build import ensure_built, unavailable_reason
from tests.controlplane.cluster import ControlPlane, control_plane


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
