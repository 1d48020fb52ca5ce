"""The API server's clock, as this process knows it from the server's answers.

The limits the reconcilers keep are counted from times the API server wrote: a workload's or a Build's
``creationTimestamp``, a workload's ``deletionTimestamp``. Read against this machine's clock, any skew
between the two machines becomes a wrong decision. A controller an hour ahead of the server would find
every Build past ``buildTimeout`` the moment it ran. It would also let every deleted workload go without
waiting for its Builds' finalizers.

Kubernetes' own controllers sidestep this by timing only what they stamped themselves or first saw (the
node lifecycle controller). These limits are Korifi's and kpack's, counted from the server's stamps and
kept across restarts. So the service reads "now" from the server's clock instead:
- every answer carries an HTTP ``Date`` (RFC 9110 §6.6.1), which kube-apiserver and aiohttp send;
- the offset from it is added to this machine's clock wherever the service reads a server's time, or
  writes a time it will later compare with one (as AWS's SDKs correct their request signing from Date).

A ``Date`` has whole seconds, so one answer places the server's clock within a second. An offset under
``TOLERANCE`` is taken as none, so clocks kept in step by NTP read exactly as before. The offset is
process-wide: a process of this service talks to one API server.
"""

from __future__ import annotations

import logging
import time as _time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

log = logging.getLogger(__name__)

# Seconds of difference below which the clocks are taken to agree: a Date, truncated to the second and
# stamped before the answer travels, is up to a second behind, and limits here are tens of seconds.
TOLERANCE = 2.0


class ServerClock:
    def __init__(self) -> None:
        self.offset = 0.0  # seconds to add to this machine's clock to read the server's
        self._last_date: str | None = None

    def observe(self, date: str | None, received: float | None = None) -> None:
        """Learn from one answer's ``Date``, received at ``received`` (this machine's Unix time; now by
        default). Only a Date that differs from the last one is parsed: one in a second, under load."""
        if not date or date == self._last_date:
            return
        self._last_date = date
        try:
            stamped = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            return  # not an HTTP date: nothing learnt
        if stamped.tzinfo is None:
            stamped = stamped.replace(tzinfo=UTC)  # "-0000", which RFC 5322 allows, means UTC
        # The middle of the second it names: the server's clock was somewhere within it.
        skew = stamped.timestamp() + 0.5 - (_time.time() if received is None else received)
        offset = skew if abs(skew) >= TOLERANCE else 0.0
        if (offset == 0.0) != (self.offset == 0.0):
            # Said when the clocks part or meet again, not on every correction: a skew is a node's fault
            # an operator should hear of once (and ``apiserver_clock_offset_seconds`` shows).
            if offset:
                log.warning(
                    "the API server's clock differs from this node's: limits are counted by the server's",
                    extra={"offset_seconds": round(offset, 1)},
                )
            else:
                log.info("the API server's clock agrees with this node's again")
        self.offset = offset

    def time(self) -> float:
        """Now by the server's clock, as a Unix time."""
        return _time.time() + self.offset

    def now(self) -> datetime:
        """Now by the server's clock, in UTC."""
        return datetime.fromtimestamp(self.time(), UTC)


SERVER = ServerClock()  # the API server's clock, fed by every answer the Kubernetes client gets


def server_time() -> float:
    return SERVER.time()


def server_now() -> datetime:
    return SERVER.now()
