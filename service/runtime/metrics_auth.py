"""``/metrics`` behind the API server's authentication and authorization, as kubebuilder's scaffold serves it
(controller-runtime's ``filters.WithAuthenticationAndAuthorization``; kube-rbac-proxy before it).

A scrape must carry a bearer token. The API server says who it belongs to (a ``TokenReview``) and whether
that identity may ``get`` the non-resource URL ``/metrics`` (a ``SubjectAccessReview``), so access is
granted with ordinary RBAC — a ClusterRole with ``nonResourceURLs: ["/metrics"]``, bound to Prometheus's
ServiceAccount. No token or an invalid one is 401, a known identity without the right 403, the API server
unreachable 500 (never an open door). Answers are cached as the apiserver's delegating authenticator and
authorizer cache them (a token 2 minutes, an allowed decision 5 minutes, a denied one 30 seconds), so a
scrape every few seconds costs the API server nothing after the first.

The server's certificate comes from a directory holding ``tls.crt`` and ``tls.key``: a Secret mounted (a
cert-manager Certificate's, or the self-signed one the chart makes). The service makes none itself, unlike
controller-runtime: that would need a cryptography library in the image for this one optional feature.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.resources import SUBJECT_ACCESS_REVIEW, TOKEN_REVIEW

log = logging.getLogger("service.runtime.metrics_auth")

Obj = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKEN_TTL = 120.0  # the apiserver's delegating authenticator: --authentication-token-webhook-cache-ttl
ALLOWED_TTL = 300.0  # its delegating authorizer: allowed decisions
DENIED_TTL = 30.0  # and denied ones
CACHE_LIMIT = 1024  # distinct tokens remembered; older ones are forgotten first


class _TtlCache:
    def __init__(self) -> None:
        self._items: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any | None:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        return hit[1]

    def put(self, key: str, value: Any, ttl: float) -> None:
        if len(self._items) >= CACHE_LIMIT:
            self._items.pop(next(iter(self._items)))
        self._items[key] = (time.monotonic() + ttl, value)


class DelegatedAuth:
    """aiohttp middleware: the API server authenticates and authorizes every request."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._users = _TtlCache()
        self._decisions = _TtlCache()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _refuse(401, "Unauthorized")
        try:
            user = await self._authenticate(token.strip())
            if user is None:
                return _refuse(401, "Unauthorized")
            if not await self._authorize(user, request.path, request.method):
                name = user.get("username", "")
                return _refuse(403, f"Forbidden (user={name}, verb=get, resource=, subresource=)")
        except errors.ApiError as exc:
            log.error("cannot check a metrics request with the API server: %s", exc.message)
            return _refuse(500, "Internal Server Error")
        return await handler(request)

    async def _authenticate(self, token: str) -> Obj | None:
        key = hashlib.sha256(token.encode()).hexdigest()  # tokens are not kept in memory as they are
        cached = self._users.get(key)
        if cached is not None:
            return cached or None
        review = await self.client.create(
            TOKEN_REVIEW,
            {"apiVersion": TOKEN_REVIEW.api_version, "kind": TOKEN_REVIEW.kind, "spec": {"token": token}},
        )
        status = review.get("status") or {}
        user: Obj = dict(status.get("user") or {}) if status.get("authenticated") else {}
        self._users.put(key, user, TOKEN_TTL)
        return user or None

    async def _authorize(self, user: Obj, path: str, method: str) -> bool:
        verb = "get" if method in ("GET", "HEAD") else method.lower()
        spec: Obj = {
            "user": user.get("username", ""),
            "groups": user.get("groups") or [],
            "uid": user.get("uid", ""),
            "nonResourceAttributes": {"path": path, "verb": verb},
        }
        if user.get("extra"):
            spec["extra"] = user["extra"]
        key = hashlib.sha256(repr(sorted(spec.items())).encode()).hexdigest()
        cached = self._decisions.get(key)
        if cached is not None:
            return bool(cached)
        review = await self.client.create(
            SUBJECT_ACCESS_REVIEW,
            {
                "apiVersion": SUBJECT_ACCESS_REVIEW.api_version,
                "kind": SUBJECT_ACCESS_REVIEW.kind,
                "spec": spec,
            },
        )
        allowed = bool((review.get("status") or {}).get("allowed"))
        self._decisions.put(key, allowed, ALLOWED_TTL if allowed else DENIED_TTL)
        return allowed


def _refuse(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


def server_tls(cert_dir: str) -> ssl.SSLContext:
    """The metrics server's TLS, from ``tls.crt`` and ``tls.key`` in ``cert_dir`` (read once, at start)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    directory = Path(cert_dir)
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    return context
