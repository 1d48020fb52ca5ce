"""Prometheus metrics of registry requests: ``kpack_image_builder_registry_requests_total{operation,
outcome}`` and ``kpack_image_builder_registry_request_duration_seconds{operation}``.

The registry package owns its metrics as ``service.kube.metrics`` owns the REST client's: the objects are
registered on the service's ``CollectorRegistry``, handed in by the composition (``service.app``), so the
package needs nothing of the runtime. Every HTTP exchange counts, token fetches, ``/v2/`` pings and the
resend after a 401 included, since each costs the registry a request (as ``rest_client_requests_total``
counts client-go's retries). Labels stay few: the operation is read from the method and the path's kind
(``manifests``, ``blobs``, ``tags``), never the repository or the registry host — a registry per
workload would otherwise make a series per app.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry
from yarl import URL

from service.metrics import Counter, Histogram

PREFIX = "kpack_image_builder_"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# Outcomes that say the registry (or the way to it) failed, not the request: what the alert counts.
ERROR_OUTCOMES = ("server_error", "unreachable", "timeout", "invalid_response")

_KINDS = (
    (re.compile(r"/blobs/uploads/[^/]*$"), "blob_upload"),
    (re.compile(r"/manifests/[^/]+$"), "manifest"),
    (re.compile(r"/blobs/[^/]+$"), "blob"),
)
_METHOD_VERBS = {
    "GET": "get",
    "HEAD": "head",
    "PUT": "put",
    "POST": "post",
    "PATCH": "patch",
    "DELETE": "delete",
}


def operation_of(method: str, url: URL, *, token: bool = False) -> str:
    """``manifest_get``, ``blob_head``, ``blob_upload_post``, ``tags_list``, ``ping``, ``token``, ``other``:
    read from the end of the path, since a repository's name may itself hold ``manifests`` or ``blobs``."""
    if token:
        return "token"
    verb = _METHOD_VERBS.get(method.upper(), "other")
    path = url.path
    if path.rstrip("/") == "/v2":
        return "ping"
    if path.endswith("/tags/list"):
        return "tags_list"
    for pattern, kind in _KINDS:
        if pattern.search(path):
            return f"{kind}_{verb}"
    return "other"


def outcome_of_status(status: int) -> str:
    """A registry's answer by class; a 401 is also the first step of every token exchange."""
    if status < 400:
        return "success"
    if status == 401:
        return "unauthorized"
    if status == 403:
        return "forbidden"
    if status == 404:
        return "not_found"
    if status == 429:
        return "throttled"
    if status >= 500:
        return "server_error"
    return "client_error"


class RegistryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            PREFIX + "registry_requests_total",
            "Container registry HTTP requests, by operation and outcome (success, not_found, unauthorized, "
            "forbidden, throttled, client_error, server_error, unreachable, timeout, invalid_response).",
            ("operation", "outcome"),
            registry=registry,
        )
        self.duration = Histogram(
            PREFIX + "registry_request_duration_seconds",
            "Latency of container registry HTTP requests, by operation (answers and failures alike).",
            ("operation",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def observe(self, operation: str, outcome: str, seconds: float) -> None:
        self.requests.labels(operation, outcome).inc()
        self.duration.labels(operation).observe(seconds)
