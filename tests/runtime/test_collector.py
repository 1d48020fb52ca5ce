"""The garbage collector's settings for the long-running process (service/runtime/collector.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.runtime import collector


@pytest.fixture
def restored() -> Iterator[None]:
    # The settings are the process's: put the test process's back afterwards.
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_freezes_start_up_and_raises_the_young_threshold(restored: None) -> None:
    _, middle, old = gc.get_threshold()
    collector.tune()
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 1000  # the imported modules, classes and functions


def test_garbage_of_start_up_is_collected_not_frozen(restored: None) -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    gc.disable()  # no collection between making the cycle and tune()
    try:
        Cycle()
        collector.tune()
    finally:
        gc.enable()
    assert not [o for o in gc.get_objects() if type(o) is Cycle]
    # …and what is frozen is alive: nothing frozen is a Cycle either.
    gc.unfreeze()
    assert not [o for o in gc.get_objects() if type(o) is Cycle]
