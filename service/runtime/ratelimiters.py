"""Work-queue rate limiters (client-go ``util/workqueue/default_rate_limiters.go``)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from service.kube.ratelimit import TokenBucket
from service.runtime.clock import REAL_CLOCK, Clock


class RateLimiter(Protocol):
    def when(self, item: Hashable) -> float:
        """The delay before ``item`` may be retried; records a failure for it."""
        ...

    def forget(self, item: Hashable) -> None: ...

    def num_requeues(self, item: Hashable) -> int: ...


class ItemExponentialFailure:
    """``base * 2**failures`` per item, capped at ``cap``."""

    def __init__(self, base: float = 0.005, cap: float = 1000.0) -> None:
        self.base = base
        self.cap = cap
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        n = self._failures.get(item, 0)
        self._failures[item] = n + 1
        if n >= 64:  # 2**64 overflows as Go's does; the cap applies long before
            return self.cap
        return min(self.base * float(1 << n), self.cap)

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class Bucket:
    """One token bucket for all items: every call takes a token, waiting (in the delay) when none is left."""

    def __init__(self, qps: float = 10.0, burst: int = 100, clock: Clock = REAL_CLOCK) -> None:
        self._bucket = TokenBucket(qps, burst, clock=clock.now)

    def when(self, item: Hashable) -> float:
        return self._bucket.reserve()

    def forget(self, item: Hashable) -> None:
        """A bucket never forgets: its tokens are shared."""

    def num_requeues(self, item: Hashable) -> int:
        return 0


class MaxOf:
    """Asks every limiter (so each records the attempt) and waits for the longest."""

    def __init__(self, *limiters: RateLimiter) -> None:
        self.limiters = limiters

    def when(self, item: Hashable) -> float:
        return max(limiter.when(item) for limiter in self.limiters)

    def forget(self, item: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self.limiters)


RATE_LIMITER_KINDS = ("controller-runtime", "classic")


def default_rate_limiter(kind: str = "controller-runtime", clock: Clock = REAL_CLOCK) -> RateLimiter:
    """``controller-runtime``: per-item 5 ms doubling to 1000 s (its default since v0.23).

    ``classic``: client-go's DefaultControllerRateLimiter, the same per-item backoff combined with an
    overall 10 qps / burst 100 token bucket.
    """
    if kind == "controller-runtime":
        return ItemExponentialFailure(0.005, 1000.0)
    if kind == "classic":
        return MaxOf(ItemExponentialFailure(0.005, 1000.0), Bucket(10.0, 100, clock))
    raise ValueError(f"unknown rate limiter {kind!r}: expected one of {', '.join(RATE_LIMITER_KINDS)}")
