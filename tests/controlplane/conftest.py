"""Where the real control plane cannot be had. (Its session fixture, ``real_control_plane``, is in
tests/conftest.py, so that any suite can run against it.)

Where it cannot be built (no ``go`` on PATH and nothing cached) the tests that need it skip, saying why —
except under ``CI=true``, where that is an error: a CI run must never silently skip the real server.

Part of ``make test``: the first run on a machine builds the binaries (about eight minutes cold, on two
cores), later ones find them cached.
"""

from __future__ import annotations

import os

import pytest

from tests.controlplane.build import unavailable_reason


def skip_unless_available(*, module_level: bool = False) -> None:
    """Skip (the calling test, or the calling module) when the control plane cannot be had here; fail
    instead under ``CI=true``."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, where the real control plane must not be skipped", pytrace=False)
    pytest.skip(f"{reason}: the tests against it are skipped", allow_module_level=module_level)
