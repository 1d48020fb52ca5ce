"""Client-side request throttling: client-go's ``flowcontrol`` token bucket, for anyio."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import anyio


class TokenBucket:
    """A token bucket refilled at ``qps`` tokens per second, holding at most ``burst`` tokens.

    Like client-go's ``NewTokenBucketRateLimiter`` (``golang.org/x/time/rate`` underneath) it starts
    full, so the first ``burst`` requests go out at once, and every caller reserves its token at the
    moment it asks: waiters are served in arrival order and later callers queue behind them instead of
    racing for refills. ``qps <= 0`` disables throttling (controller-runtime's default of QPS -1).
    """

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if math.isnan(qps) or math.isinf(qps):
            raise ValueError(f"qps must be a finite number, not {qps}")
        self.qps = float(qps)
        # x/time/rate with burst 0 admits nothing at a finite rate; client-go requires burst >= 1.
        self.burst = max(1, int(burst))
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._last = clock()

    @property
    def enabled(self) -> bool:
        return self.qps > 0

    def _refill(self, now: float) -> None:
        # A clock that steps backwards (a fake one in tests) must not drain the bucket.
        elapsed = max(0.0, now - self._last)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.qps)
        self._last = max(self._last, now)

    def tokens(self) -> float:
        """Tokens available now; negative while callers are queued for future tokens."""
        if not self.enabled:
            return math.inf
        self._refill(self._clock())
        return self._tokens

    def try_acquire(self) -> bool:
        """Take a token if one is available right now, without waiting."""
        if not self.enabled:
            return True
        self._refill(self._clock())
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def reserve(self) -> float:
        """Take a token now, borrowing from the future if need be; returns the seconds until it is due.

        This is x/time/rate's ``Reserve().Delay()``, which client-go's work-queue bucket limiter uses: the
        caller is committed to waiting that long (or to handing the token back, as ``acquire`` does).
        """
        if not self.enabled:
            return 0.0
        self._refill(self._clock())
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0.0 else -self._tokens / self.qps

    async def acquire(self) -> float:
        """Wait for a token; returns the seconds this caller had to wait."""
        delay = self.reserve()
        if delay <= 0.0:
            return 0.0
        try:
            await self._sleep(delay)
        except BaseException:
            # A cancelled waiter gives its reservation back, as x/time/rate's Reservation.Cancel does,
            # so an abandoned request does not slow down the ones after it.
            self._refill(self._clock())
            self._tokens = min(float(self.burst), self._tokens + 1.0)
            raise
        return delay
