"""What a reconcile is given, what it returns, and how its failures are judged — controller-runtime's
``pkg/reconcile``, with the one classification of exceptions the whole runtime uses.

A reconcile gets a ``Request`` and returns a ``Result`` (or None), or raises. ``judge`` decides what a
raised exception means, so that no reconciler decides "retry or give up" for itself:

| exception                                   | verdict   | logged                   |
| ``TerminalError``                            | terminal  | error, no traceback      |
| 409 Conflict / AlreadyExists (a stale cache) | requeue   | info                     |
| ``Requeue(after)``                           | requeue   | info                     |
| an API error, or any error marked expected   | error     | error, no traceback      |
| a timeout of the reconcile                   | error     | error, no traceback      |
| anything else (a bug)                        | error     | error, with traceback    |

An exception is *expected* — ordinary weather, not a bug — when it is an API error or its class says
``expected = True`` (registry errors do): its traceback would say nothing the message does not.

Each reconcile runs in a ``ReconcileContext`` (``current()``): the request, a reconcile id, and the
deadline the controller will enforce. Every log record written during a reconcile carries its
``controller``, ``namespace``, ``name`` and ``reconcileID`` (see ``service.runtime.logs``), and a
reconciler that must leave a trace before it is cancelled (a status saying it timed out) reads
``remaining()``: the controller cancels only after a grace period past the deadline.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from service.kube.errors import AlreadyExists, ApiError, Conflict
from service.runtime.store import Obj


class Request(NamedTuple):
    """The key of one object to reconcile. A tuple rather than a frozen dataclass: the work queue hashes
    each request a dozen times per add/get/done (its sets and maps), and a tuple's hash is C, a
    dataclass's a Python call (3 to 4 µs per cycle, benchmarks/runtime.py)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def for_object(cls, obj: Obj) -> Request:
        meta = obj["metadata"]
        return cls(meta.get("namespace", ""), meta["name"])


@dataclass(frozen=True, slots=True)
class Result:
    requeue: bool = False
    requeue_after: float = 0.0


Reconcile = Callable[[Request], Awaitable[Result | None]]


class TerminalError(Exception):
    """A reconcile failure that retrying cannot fix: logged and counted, not requeued."""


class Requeue(Exception):
    """Not a failure: try again after ``after`` seconds (0: with the rate limiter's backoff)."""

    def __init__(self, message: str, after: float = 0.0) -> None:
        super().__init__(message)
        self.after = after


# --------------------------------------------------------------------------- judging outcomes
@dataclass(frozen=True)
class Verdict:
    kind: str  # "terminal", "requeue" or "error"
    level: int  # the logging level of the line that reports it
    traceback: bool  # whether that line carries the traceback
    after: float = 0.0  # for "requeue": when (0: rate-limited backoff)


def expected(error: BaseException) -> bool:
    """Ordinary weather, not a bug: an API error, or an error whose class says ``expected = True``."""
    return isinstance(error, ApiError) or bool(getattr(error, "expected", False))


def judge(error: BaseException, *, timed_out: bool = False) -> Verdict:
    if isinstance(error, TerminalError):
        return Verdict("terminal", logging.ERROR, False)
    if isinstance(error, Conflict | AlreadyExists):
        # Optimistic locking at work, or a create for an object the cache has not seen yet: the cache
        # was behind a write. Retried from fresh state, without an error's alarm.
        return Verdict("requeue", logging.INFO, False)
    if isinstance(error, Requeue):
        return Verdict("requeue", logging.INFO, False, error.after)
    return Verdict("error", logging.ERROR, not timed_out and not expected(error))


# --------------------------------------------------------------------------- the reconcile's context
@dataclass(frozen=True)
class ReconcileContext:
    controller: str
    request: Request
    reconcile_id: str
    deadline: float | None = None  # on time.monotonic(); None: no limit
    log_fields: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        """Seconds until the controller's deadline (infinity without one)."""
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


_current: contextvars.ContextVar[ReconcileContext | None] = contextvars.ContextVar(
    "reconcile_context", default=None
)


def current() -> ReconcileContext | None:
    """The context of the reconcile running in this task, if any."""
    return _current.get()


@contextmanager
def running(context: ReconcileContext) -> Iterator[ReconcileContext]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def context_fields() -> dict[str, Any]:
    """The log fields of the current reconcile (empty outside one)."""
    context = _current.get()
    return context.log_fields if context is not None else {}
