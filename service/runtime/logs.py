"""Structured logs: one JSON object per line with zap's field names (as controller-runtime writes them),
or aligned text for a human at a terminal.

Context travels as ``extra=`` fields on the standard ``logging`` calls (``controller``, ``namespace``,
``name``, ``reconcileID``, ...); both formats print every such field.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

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
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


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
        entry.update(_fields(record))
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = str(record.exc_info[1]) or type(record.exc_info[1]).__name__
            entry["stacktrace"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{_timestamp(record.created)} {_level(record).upper():5} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info and record.exc_info[1] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


def python_level(level: str) -> int:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(LEVELS)}")
    return {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}[
        level
    ]


def setup_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route every logger to one handler on stderr (or ``stream``) in the chosen format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(python_level(level))
    # aiohttp's access log would print a line per probe and scrape.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
