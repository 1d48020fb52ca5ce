"""Fault injection: make chosen requests fail or slow down, from Python or over ``/__sim__/faults``."""

from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any

_STATUS_REASON = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class FaultRule:
    """Requests matching ``method`` and ``path`` (a regex searched in the path, query excluded) are hit.

    ``count`` limits how many requests are hit (None: unlimited), ``probability`` thins them out.
    ``status`` 0 means the request is only delayed by ``latency`` seconds, not failed.
    """

    method: str = "*"
    path: str = ".*"
    status: int = 500
    reason: str = ""
    message: str = "injected fault"
    retry_after: float | None = None
    latency: float = 0.0
    count: int | None = None
    probability: float = 1.0
    id: int = 0
    hits: int = 0
    _regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex = re.compile(self.path)
        if not self.reason:
            self.reason = _STATUS_REASON.get(
                self.status, "InternalError" if self.status >= 500 else "BadRequest"
            )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        known = {
            "method",
            "path",
            "status",
            "reason",
            "message",
            "retry_after",
            "latency",
            "count",
            "probability",
        }
        aliases = {"retryAfter": "retry_after", "code": "status"}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = aliases.get(key, key)
            if name not in known:
                raise ValueError(f"unknown fault rule field {key!r}")
            kwargs[name] = value
        numbers = {"status": int, "count": int, "latency": float, "probability": float, "retry_after": float}
        for name, want in numbers.items():
            value = kwargs.get(name)
            if value is None or (want is float and isinstance(value, int | float)):
                continue
            if not isinstance(value, want) or isinstance(value, bool):
                raise TypeError(f"fault rule field {name!r} must be a number, not {value!r}")
        for name in ("method", "path", "reason", "message"):
            if name in kwargs and not isinstance(kwargs[name], str):
                raise TypeError(f"fault rule field {name!r} must be a string")
        status = kwargs.get("status", 500)
        if status is None or not (status == 0 or 400 <= status <= 599):
            raise ValueError("fault rule status must be 0 (latency only) or an HTTP error code (400-599)")
        if not 0.0 <= float(kwargs.get("probability", 1.0)) <= 1.0:
            raise ValueError("fault rule probability must be between 0 and 1")
        return cls(**kwargs)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "retryAfter": self.retry_after,
            "latency": self.latency,
            "count": self.count,
            "probability": self.probability,
            "hits": self.hits,
        }

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and self._regex.search(path) is not None


class Faults:
    def __init__(self, seed: int | None = None) -> None:
        self.rules: list[FaultRule] = []
        self._next_id = 1
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # rules may be added from a test's thread while the server runs

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            rule.id = self._next_id
            self._next_id += 1
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def pick(self, method: str, path: str) -> FaultRule | None:
        """The first live rule that hits this request, counting the hit."""
        with self._lock:
            for rule in self.rules:
                if rule.count is not None and rule.hits >= rule.count:
                    continue
                if not rule.matches(method, path):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                rule.hits += 1
                return rule
        return None
