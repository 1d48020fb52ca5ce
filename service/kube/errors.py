"""Kubernetes API errors, in both directions.

The client maps a server's ``Status`` to one of these classes; the emulator raises the same classes
and serialises them back into a ``Status``. Keeping both sides here keeps reasons, codes and shapes
identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


class ApiError(Exception):
    """A request the API server refused, or that never got an answer (``code`` 0)."""

    code: int = 500
    reason: str = "InternalError"

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason
        self.details = details
        self.retry_after = retry_after
        self.headers = dict(headers) if headers else {}

    def status(self) -> dict[str, Any]:
        """The ``Status`` object kube-apiserver would send for this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"


class BadRequest(ApiError):
    code, reason = 400, "BadRequest"


class Unauthorized(ApiError):
    code, reason = 401, "Unauthorized"


class Forbidden(ApiError):
    code, reason = 403, "Forbidden"


class NotFound(ApiError):
    code, reason = 404, "NotFound"


class MethodNotAllowed(ApiError):
    code, reason = 405, "MethodNotAllowed"


class AlreadyExists(ApiError):
    code, reason = 409, "AlreadyExists"


class Conflict(ApiError):
    code, reason = 409, "Conflict"


class Expired(ApiError):
    """410: the resourceVersion (or continue token) is older than the server's history."""

    code, reason = 410, "Expired"


class UnsupportedMediaType(ApiError):
    code, reason = 415, "UnsupportedMediaType"


class Invalid(ApiError):
    code, reason = 422, "Invalid"


class TooManyRequests(ApiError):
    code, reason = 429, "TooManyRequests"


class InternalError(ApiError):
    code, reason = 500, "InternalError"


class ServiceUnavailable(ApiError):
    code, reason = 503, "ServiceUnavailable"


class ServerTimeout(ApiError):
    code, reason = 504, "Timeout"


class ConnectionFailed(ApiError):
    """No HTTP answer at all: refused, reset, DNS, TLS."""

    code, reason = 0, "ConnectionFailed"


class RequestTimeout(ApiError):
    """The client gave up waiting for an answer."""

    code, reason = 0, "RequestTimeout"


_BY_REASON: dict[str, type[ApiError]] = {
    cls.reason: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        AlreadyExists,
        Conflict,
        Expired,
        UnsupportedMediaType,
        Invalid,
        TooManyRequests,
        InternalError,
        ServiceUnavailable,
        ServerTimeout,
    )
}
_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    410: Expired,
    415: UnsupportedMediaType,
    422: Invalid,
    429: TooManyRequests,
    500: InternalError,
    503: ServiceUnavailable,
    504: ServerTimeout,
}


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: kube-apiserver never sends it


def error_from_response(code: int, body: bytes, headers: Mapping[str, str] | None = None) -> ApiError:
    """Build the typed error for a non-2xx answer, reading its ``Status`` body when there is one."""
    status: dict[str, Any] = {}
    try:
        parsed = orjson.loads(body) if body else {}
        if isinstance(parsed, dict):
            status = parsed
    except orjson.JSONDecodeError:
        pass
    return error_from_status(status, code=code, headers=headers, raw=body)


def error_from_status(
    status: Mapping[str, Any],
    *,
    code: int | None = None,
    headers: Mapping[str, str] | None = None,
    raw: bytes = b"",
) -> ApiError:
    """The typed error for a ``Status`` object (also the object of a watch ERROR event)."""
    code = int(status.get("code") or code or 500)
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or raw[:200].decode("utf-8", "replace") or f"HTTP {code}")
    # Reason is the finer signal (409 is Conflict or AlreadyExists; 410 is Gone or Expired).
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code)
    if cls is None:
        cls = InternalError if code >= 500 else BadRequest
    if cls is Expired and code != 410:
        cls = _BY_CODE.get(code, InternalError)
    details = status.get("details")
    retry_after = parse_retry_after((headers or {}).get("Retry-After"))
    if retry_after is None and isinstance(details, dict) and details.get("retryAfterSeconds"):
        retry_after = float(details["retryAfterSeconds"])
    return cls(
        message,
        code=code,
        reason=reason or cls.reason,
        details=details if isinstance(details, dict) else None,
        retry_after=retry_after,
        headers=headers,
    )


def success_status(details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details is not None:
        body["details"] = details
    return body
