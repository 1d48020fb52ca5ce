"""Structured logs: one JSON object per line with zap's field names (as controller-runtime writes them),
or aligned text for a human at a terminal.

Context travels as ``extra=`` fields on the standard ``logging`` calls (``controller``, ``namespace``,
``reconcileID``, ...); both formats print every such field. Inside a reconcile, the reconcile's own fields
are added to every record (``ReconcileFields``). ``logging`` refuses an ``extra`` key that is a
``LogRecord`` attribute (``name``, ``msg``, ``args``, ``module``, ...: KeyError), so such a field is passed
with a trailing underscore and printed without it: ``extra={"name_": "w-1"}`` prints ``name``, as
controller-runtime's ``name`` key. The four zap keys (``level``, ``ts``, ``logger``, ``msg``) always win
over a field of the same name.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

from service.runtime.reconcile import context_fields

LEVELS = ("debug", "info", "warn", "error")
FORMATS = ("json", "text")

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_ZAP_LEVEL = {"WARNING": "warn", "CRITICAL": "error"}


def _timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds, as controller-runtime's zap encoder writes ``ts``."""
    seconds = int(created)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"
    )


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        if key.endswith("_") and key[:-1] in _STANDARD:
            key = key[:-1]  # ``name_`` → ``name``: see the module docstring
        out[key] = value
    return out


def _level(record: logging.LogRecord) -> str:
    return _ZAP_LEVEL.get(record.levelname, record.levelname.lower())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": _level(record),
            "ts": _timestamp(record.created),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = str(record.exc_info[1]) or type(record.exc_info[1]).__name__
            entry["stacktrace"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stacktrace"] = record.stack_info
        try:
            return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # orjson.JSONEncodeError is one
            # A field orjson cannot write (an int beyond 64 bits, a nested oddity): print it as text rather
            # than lose the line to logging's "--- Logging error ---".
            return orjson.dumps({k: v if isinstance(v, str) else repr(v) for k, v in entry.items()}).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{_timestamp(record.created)} {_level(record).upper():5} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info and record.exc_info[1] is not None:
            line += "\n" + self.formatException(record.exc_info)
        elif record.stack_info:
            line += "\n" + record.stack_info
        return line


def python_level(level: str) -> int:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(LEVELS)}")
    return {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}[
        level
    ]


class ReconcileFields(logging.Filter):
    """Every record logged during a reconcile carries its ``controller``, ``namespace``, ``name`` and
    ``reconcileID``, whoever logs it (a reconciler, the client, the registry), unless it names its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in context_fields().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


def setup_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route every logger to one handler on stderr (or ``stream``) in the chosen format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    python_level(level)  # validate before anything changes
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ReconcileFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(python_level(level))
    # aiohttp's access log would print a line per probe and scrape.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
