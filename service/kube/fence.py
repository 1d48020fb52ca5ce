"""A guard on the writes sent from one context (one task and what it awaits).

Whoever runs code that must stop writing the moment a condition ends — a controller's reconcile, which
may write only while its replica holds the leader lease — wraps it in ``guarded_writes(check)``. Every
request but reads (GET, HEAD, OPTIONS) sent from inside, retries included, first calls ``check``, which
raises to refuse. Reads stay allowed: they change nothing, and refusing them would only turn a clean
stop into errors. The guard is a context variable, so work outside (the lease renewal itself, the event
recorder) is not affected, and this layer needs to know nothing of leases.

A write already on the wire when the condition ends cannot be called back; resourceVersion guards cover
that case. What the guard removes is the much wider window of a process frozen (SIGSTOP, a paused VM)
in the middle of a reconcile that, once resumed, sends the rest of its writes before its lease renewal
task has run and noticed the lease is gone.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

READS = frozenset({"GET", "HEAD", "OPTIONS"})

_check: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "write_guard", default=None
)


@contextmanager
def guarded_writes(check: Callable[[], None]) -> Iterator[None]:
    token = _check.set(check)
    try:
        yield
    finally:
        _check.reset(token)


def before_sending(method: str) -> None:
    """Raise what the guard raises if this request may not be sent now."""
    check = _check.get()
    if check is not None and method not in READS:
        check()
