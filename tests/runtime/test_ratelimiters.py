"""Work-queue rate limiters against client-go's default_rate_limiters.go (machinery.md §1.4)."""

from __future__ import annotations

from collections.abc import Hashable

import pytest

from service.runtime.clock import FakeClock
from service.runtime.ratelimiters import (
    RATE_LIMITER_KINDS,
    Bucket,
    ItemExponentialFailure,
    MaxOf,
    default_rate_limiter,
)

# 5 ms * 2^n for the first 18 failures (machinery.md §1.4), then the 1000 s cap.
EXPECTED = [
    0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    163.84, 327.68, 655.36,
]  # fmt: skip


def test_exponential_sequence_doubles_from_5ms_and_caps_at_1000s_from_the_19th_failure() -> None:
    limiter = ItemExponentialFailure()
    delays = [limiter.when("a") for _ in range(25)]
    assert delays[:18] == pytest.approx(EXPECTED)
    assert delays[18:] == [1000.0] * 7
    assert sum(delays[:18]) == pytest.approx(1310.715)
    assert limiter.num_requeues("a") == 25


def test_exponential_does_not_overflow_after_very_many_failures() -> None:
    limiter = ItemExponentialFailure()
    for _ in range(200):
        delay = limiter.when("a")
    assert delay == 1000.0


def test_exponential_is_per_item_and_forget_resets() -> None:
    limiter = ItemExponentialFailure(0.005, 1000.0)
    for _ in range(3):
        limiter.when("a")
    assert limiter.when("b") == 0.005  # another item starts at the base
    assert limiter.num_requeues("a") == 3
    assert limiter.num_requeues("b") == 1
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0
    assert limiter.when("a") == 0.005
    limiter.forget("never-seen")  # harmless
    assert limiter.num_requeues("b") == 1


def test_bucket_spends_the_burst_then_reservations_accumulate() -> None:
    clock = FakeClock()
    bucket = Bucket(qps=10.0, burst=100, clock=clock)
    assert [bucket.when(i) for i in range(100)] == [0.0] * 100  # the bucket starts full
    # Every reservation takes a token even when it has to wait: the k-th extra waits k/qps.
    assert [bucket.when(f"x{k}") for k in range(1, 6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    clock.advance(0.5)  # five tokens refilled, all already promised
    assert bucket.when("y") == pytest.approx(0.1)
    clock.advance(60)  # refills to the burst, no more
    assert [bucket.when(i) for i in range(100)] == [0.0] * 100
    assert bucket.when("z") == pytest.approx(0.1)


def test_bucket_is_shared_and_never_forgets() -> None:
    clock = FakeClock()
    bucket = Bucket(qps=1.0, burst=1, clock=clock)
    assert bucket.when("a") == 0.0
    assert bucket.when("b") == pytest.approx(1.0)  # a different item, the same bucket
    bucket.forget("a")
    assert bucket.when("a") == pytest.approx(2.0)
    assert bucket.num_requeues("a") == 0


class Recording:
    def __init__(self, delay: float, requeues: int = 0) -> None:
        self.delay, self.requeues = delay, requeues
        self.asked: list[Hashable] = []
        self.forgotten: list[Hashable] = []

    def when(self, item: Hashable) -> float:
        self.asked.append(item)
        return self.delay

    def forget(self, item: Hashable) -> None:
        self.forgotten.append(item)

    def num_requeues(self, item: Hashable) -> int:
        return self.requeues


def test_max_of_asks_every_limiter_and_waits_for_the_longest() -> None:
    limiters = [Recording(0.1, 1), Recording(3.0, 4), Recording(0.5, 2)]
    combined = MaxOf(*limiters)
    assert combined.when("a") == 3.0
    assert all(limiter.asked == ["a"] for limiter in limiters)  # every one recorded the attempt
    assert combined.num_requeues("a") == 4
    combined.forget("a")
    assert all(limiter.forgotten == ["a"] for limiter in limiters)


def test_max_of_exponential_and_bucket_in_a_storm() -> None:
    clock = FakeClock()
    combined = MaxOf(ItemExponentialFailure(0.005, 1000.0), Bucket(10.0, 100, clock))
    delays = [combined.when(f"key-{i}") for i in range(1000)]
    assert delays[:100] == [0.005] * 100  # the per-item delay while the burst lasts
    assert delays[-1] == pytest.approx(90.0)  # (1000 - 100) / 10 qps
    assert combined.num_requeues("key-0") == 1


def test_default_controller_runtime_is_exponential_only() -> None:
    limiter = default_rate_limiter("controller-runtime", clock=FakeClock())
    delays = [limiter.when(f"key-{i}") for i in range(1000)]
    assert delays == [0.005] * 1000  # no bucket: a storm is not throttled
    assert [limiter.when("key-0") for _ in range(2)] == pytest.approx([0.01, 0.02])
    assert default_rate_limiter().when("x") == 0.005  # and it is the default


def test_default_classic_adds_the_10_qps_burst_100_bucket() -> None:
    clock = FakeClock()
    limiter = default_rate_limiter("classic", clock=clock)
    delays = [limiter.when(f"key-{i}") for i in range(101)]
    assert delays[:100] == [0.005] * 100
    assert delays[100] == pytest.approx(0.1)
    assert limiter.num_requeues("key-0") == 1
    limiter.forget("key-0")
    assert limiter.num_requeues("key-0") == 0


def test_default_rate_limiter_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown rate limiter 'fastest'") as info:
        default_rate_limiter("fastest")
    for kind in RATE_LIMITER_KINDS:
        assert kind in str(info.value)
