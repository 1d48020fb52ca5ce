"""An asynchronous Kubernetes REST client: plain dicts in and out, orjson on the wire; unary requests over
the lean HTTP/1.1 pool of service/http/pool.py, watches (and everything when a proxy is configured) over
aiohttp.

It speaks the API conventions directly (paths from ``Resource``, list paging, watch streams, patch
content types, ``DeleteOptions``) rather than through generated models, which are slow and allocate
heavily. Every call has a timeout, throttling follows client-go's token bucket, and the retry policy is
client-go's: a 429 (or a 5xx with ``Retry-After``) was not processed, so any verb is retried after the
delay the server asked for; a transport failure may or may not have reached the server, so only reads
are retried.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
import anyio
import orjson
from prometheus_client import CollectorRegistry
from yarl import URL

from service.http import TLS_CLOSE_GRACE, LazySession, request_body
from service.http import pool as http_pool
from service.kube import errors, server_clock
from service.kube.config import ClusterConfig
from service.kube.fence import before_sending
from service.kube.metrics import RestClientMetrics
from service.kube.ratelimit import TokenBucket
from service.kube.resources import Resource

Obj = dict[str, Any]
Items = list[Obj]  # a module-level alias: inside KubeClient, ``list`` names the method


@dataclass
class Page:
    """One page of a list (``KubeClient.pages``)."""

    items: Items
    resource_version: str | None  # the list's, on the last page only
    restarted: bool = False  # the list began again (an expired continue token): drop earlier pages


Params = Mapping[str, str | int | bool | None]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# Only these may be resent after a transport failure: the first attempt may have been processed.
SAFE_METHODS = frozenset({"GET", "HEAD"})
# What goes through the lean transport (service/http/pool.py) when no proxy is configured; watches, HEAD and
# anything else go through aiohttp.
LEAN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
# kube-apiserver ends a watch without timeoutSeconds after min-request-timeout (1800 s) times [1, 2).
SERVER_MAX_WATCH_SECONDS = 3600.0
# Extra silence tolerated beyond the server-side watch timeout before the stream counts as dead.
WATCH_READ_MARGIN = 30.0
# 2 MiB read buffer: lines up to 4 MiB, above the 1.5 MiB etcd object limit plus the event envelope.
READ_BUFSIZE = 2**21

_TLS_ERRORS = (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError, ssl.SSLError)
# A transport failure of either transport: the request may or may not have reached the server.
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


def _query(params: Params | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        else:
            out.append((key, str(value)))
    return out


def _host_label(host: str) -> str:
    url = URL(host)
    name = url.host or "none"
    if ":" in name:
        name = f"[{name}]"
    return f"{name}:{url.port}" if url.port is not None else name


def _decode(status: int, data: bytes) -> Obj:
    if not data:
        return {}
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise errors.ApiError(
            f"response is not JSON: {data[:200].decode('utf-8', 'replace')}",
            code=status,
            reason="InvalidResponse",
        ) from exc
    if not isinstance(parsed, dict):
        raise errors.ApiError("response is not a JSON object", code=status, reason="InvalidResponse")
    return parsed


def _name_and_namespace(res: Resource, obj: Mapping[str, Any]) -> tuple[str, str | None]:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ValueError(f"{res.kind} object has no metadata.name")
    return str(name), meta.get("namespace")


def _require_namespace(res: Resource, namespace: str | None) -> None:
    # Without it the path would address the all-namespaces collection and the server would answer 404
    # for a reason that is hard to see; this is a programming error, not an API error.
    if res.namespaced and not namespace:
        raise ValueError(f"{res.kind} is namespaced: a namespace is required")


class WatchStream:
    """The events of one open watch, as ``(type, object)``; ends when the server closes the stream.

    Raises the typed error of an ``ERROR`` event (410 is ``errors.Expired``), ``errors.ConnectionFailed``
    when the stream breaks or carries something that is not an event, and ``errors.RequestTimeout``
    when the server goes silent for longer than the read timeout.
    """

    def __init__(self, response: aiohttp.ClientResponse, description: str) -> None:
        self._response = response
        self._description = description
        self._eof = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> tuple[str, Obj]:
        while True:
            try:
                line = await self._response.content.readline()
            except TimeoutError as exc:
                raise errors.RequestTimeout(f"{self._description}: no data within the read timeout") from exc
            except (aiohttp.ClientError, ValueError) as exc:
                # ValueError: a line beyond the read buffer ("Chunk too big").
                raise errors.ConnectionFailed(f"{self._description}: stream broken: {exc}") from exc
            if not line:
                self._eof = True
                raise StopAsyncIteration
            if line.isspace():
                continue
            try:
                event = orjson.loads(line)
                event_type, obj = event["type"], event["object"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise errors.ConnectionFailed(
                    f"{self._description}: malformed watch event: {line[:200].decode('utf-8', 'replace')}"
                ) from exc
            if not isinstance(obj, dict) or not isinstance(event_type, str):
                raise errors.ConnectionFailed(f"{self._description}: malformed watch event")
            if event_type == "ERROR":
                raise errors.error_from_status(obj)
            return event_type, obj

    def close(self) -> None:
        # Both calls are synchronous, so cancellation cannot interrupt the cleanup. A stream read to its
        # end leaves a reusable connection; any other must be closed, not pooled with unread data.
        if self._eof:
            self._response.release()
        else:
            self._response.close()


class KubeClient(LazySession):
    """One API server connection pool; use as ``async with KubeClient(config) as client``."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        qps: float = 20.0,
        burst: int = 30,
        registry: CollectorRegistry | None = None,
        metrics: RestClientMetrics | None = None,
        timeout: float = 30.0,
        connection_limit: int = 100,
        user_agent: str | None = None,
        max_throttle_retries: int = 10,
        max_retry_after: float = 60.0,
        connection_retries: int = 4,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        watch_read_margin: float = WATCH_READ_MARGIN,
    ) -> None:
        self.config = config
        self._close_grace = TLS_CLOSE_GRACE if config.host.startswith("https:") else 0.0
        self.timeout = timeout
        self.limiter = TokenBucket(qps, burst)
        # Clients that share a registry share one set of metrics (a name registers once per registry).
        self.metrics = metrics or (RestClientMetrics(registry) if registry is not None else None)
        self.host_label = _host_label(config.host)
        self._connection_limit = connection_limit
        self._user_agent = user_agent
        self._max_throttle_retries = max_throttle_retries
        self._max_retry_after = max_retry_after
        self._connection_retries = connection_retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._watch_read_margin = watch_read_margin
        # The origin (scheme://host[:port]) and the path prefix a kubeconfig's server URL may carry.
        origin = URL(config.host)
        self._path_prefix = origin.raw_path.rstrip("/")
        self._pool: http_pool.Http1Pool | None = None
        self._pool_made = False
        self._fixed_headers = [("Accept", JSON)] + ([("User-Agent", user_agent)] if user_agent else [])

    # ------------------------------------------------------------------ lifecycle
    def _new_session(self) -> aiohttp.ClientSession:
        headers = {"Accept": JSON}
        if self._user_agent:
            headers["User-Agent"] = self._user_agent
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connection_limit, ssl=self.config.ssl),
            headers=headers,
            # Proxies come from the kubeconfig only; HTTP(S)_PROXY and .netrc must not leak in.
            trust_env=False,
            read_bufsize=READ_BUFSIZE,
        )

    def _new_pool(self) -> http_pool.Http1Pool | None:
        if self.config.proxy:
            return None
        context = self.config.ssl if isinstance(self.config.ssl, ssl.SSLContext) else None
        return http_pool.Http1Pool(
            self.config.host,
            ssl_context=context,
            server_hostname=self.config.tls_server_name,
            limit=self._connection_limit,
            connect_timeout=self.timeout,
        )

    def _get_pool(self) -> http_pool.Http1Pool | None:
        if not self._pool_made:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} is closed")
            self._pool, self._pool_made = self._new_pool(), True
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose(TLS_CLOSE_GRACE)
        await super().close()

    # ------------------------------------------------------------------ transport
    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _throttle_delay(self, status: int, headers: Mapping[str, str]) -> float | None:
        """How long the server asked us to wait before resending, or None if it must not be resent."""
        retry_after = errors.parse_retry_after(headers.get("Retry-After"))
        if status == 429:
            # APF always sends Retry-After; a 429 from elsewhere (a proxy) still means "not processed".
            return min(retry_after if retry_after is not None else 1.0, self._max_retry_after)
        if status >= 500 and retry_after is not None:
            return min(retry_after, self._max_retry_after)
        return None

    def _observe(self, method: str, status: int | None, seconds: float | None) -> None:
        if self.metrics is not None:
            self.metrics.observe(method, self.host_label, status, seconds)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None,
        data: bytes | None,
        content_type: str | None,
        client_timeout: aiohttp.ClientTimeout | float,
        stream: bool,
    ) -> tuple[int, Mapping[str, str], bytes, aiohttp.ClientResponse | None]:
        """One logical request with its retries: status, headers and body. With ``stream`` it goes through
        aiohttp and a 2xx response comes back unread and open (the last item); otherwise that is None."""
        query = _query(params)
        pool = None if stream or method not in LEAN_METHODS else self._get_pool()
        # The lean pool takes seconds; aiohttp its ClientTimeout (a watch's has a read timeout of its own).
        if pool is None:
            session = self._get_session()
            url = URL(self.config.host + path)
            timeout = (
                client_timeout
                if isinstance(client_timeout, aiohttp.ClientTimeout)
                else aiohttp.ClientTimeout(total=client_timeout)
            )
        else:
            target = http_pool.request_target(self._path_prefix + path, query)
            seconds = (
                client_timeout if isinstance(client_timeout, float) else client_timeout.total or self.timeout
            )
        throttled = failures = 0
        while True:
            if self.limiter.enabled:  # off by default: then not even an await per request
                await self.limiter.acquire()
            before_sending(method)  # after any wait: a guard closed meanwhile refuses the attempt
            headers: dict[str, str] = {}
            authorization = await self.config.authorization()
            if authorization:
                headers["Authorization"] = authorization
            if data is not None:
                headers["Content-Type"] = content_type or JSON
            started = time.perf_counter()
            response: aiohttp.ClientResponse | None = None
            try:
                if pool is not None:
                    headers_out = self._fixed_headers + list(headers.items())
                    answer = await pool.request(method, target, headers_out, data, seconds)
                    status, response_headers, body = answer.status, answer.headers, answer.body
                else:
                    response = await session.request(
                        method,
                        url,
                        params=query,
                        data=request_body(data),
                        headers=headers,
                        timeout=timeout,
                        allow_redirects=False,
                        server_hostname=self.config.tls_server_name,
                        proxy=self.config.proxy,
                    )
                    status, response_headers = response.status, response.headers
                    body = b"" if stream and 200 <= status < 300 else await response.read()
            except _TRANSPORT_ERRORS as exc:
                if response is not None:
                    response.close()
                self._observe(method, None, None)
                failures += 1
                if (
                    method not in SAFE_METHODS
                    or failures > self._connection_retries
                    or isinstance(exc, _TLS_ERRORS)
                ):
                    raise self._transport_error(method, path, exc) from exc
                await anyio.sleep(self._backoff(failures))
                continue
            except BaseException:
                if response is not None:
                    response.close()
                raise
            self._observe(method, status, None if stream else time.perf_counter() - started)
            server_clock.SERVER.observe(response_headers.get("Date"))
            delay = self._throttle_delay(status, response_headers)
            if delay is not None and throttled < self._max_throttle_retries:
                if response is not None:
                    response.release()
                throttled += 1
                await anyio.sleep(delay)
                continue
            return status, response_headers, body, response

    def _transport_error(self, method: str, path: str, exc: BaseException) -> errors.ApiError:
        if isinstance(exc, TimeoutError):
            return errors.RequestTimeout(f"{method} {self.config.host}{path}: no answer in time ({exc!r})")
        return errors.ConnectionFailed(f"{method} {self.config.host}{path}: {exc or type(exc).__name__}")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Any = None,
        content_type: str | None = None,
        request_timeout: float | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Any API call: status, headers (case-insensitive) and the raw body; non-2xx is not raised.

        ``body`` is sent as is when it is ``bytes``, else encoded with orjson (Content-Type defaults to
        ``application/json``). Booleans in ``params`` go out as ``true``/``false``; None values are dropped.
        """
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        status, headers, raw, _ = await self._send(
            method.upper(),
            path,
            params=params,
            data=data,
            content_type=content_type,
            client_timeout=float(request_timeout or self.timeout),
            stream=False,
        )
        return status, headers, raw

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Any = None,
        content_type: str | None = None,
        answer: bool = True,
    ) -> Obj:
        status, headers, raw = await self.request(
            method, path, params=params, body=body, content_type=content_type
        )
        if not 200 <= status < 300:
            raise errors.error_from_response(status, raw, headers)
        # A writer that reads nothing of the object written says so: decoding it was ~2 % of the
        # service's CPU (a status patch, a finalizer patch and an Event create per workload).
        return _decode(status, raw) if answer else {}

    # ------------------------------------------------------------------ reads
    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        _require_namespace(res, namespace)
        return await self._call("GET", res.path(namespace, name))

    async def get_status(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        _require_namespace(res, namespace)
        return await self._call("GET", res.path(namespace, name, "status"))

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> Obj:
        """One page: the raw List object (``items``, ``metadata.resourceVersion``, ``metadata.continue``)."""
        params: dict[str, str | int | None] = {
            "labelSelector": label_selector or None,
            "fieldSelector": field_selector or None,
            "limit": limit or None,
            "continue": continue_ or None,
            "resourceVersion": resource_version,
            "resourceVersionMatch": resource_version_match or None,
        }
        return await self._call("GET", res.path(namespace), params=params)

    async def list_all(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> tuple[Items, str]:
        """Every item, following ``continue``; returns the items and the list's resourceVersion."""
        items: Items = []
        rv = ""
        async for page in self.pages(
            res,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            page_size=page_size,
            resource_version=resource_version,
            resource_version_match=resource_version_match,
        ):
            if page.restarted:
                items = []
            items.extend(page.items)
            rv = page.resource_version or rv
        return items, rv

    async def pages(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> AsyncIterator[Page]:
        """A list one page at a time (client-go's pager), so that a caller can consume each page before
        the next is asked for. When a continue token expires mid-way (410), the whole list is asked for
        again in one unpaged request, yielded ``restarted``: the pages before it are to be dropped. The
        last page carries the list's resourceVersion."""
        token: str | None = None
        restarted = False
        while True:
            try:
                page = await self.list(
                    res,
                    namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    limit=None if restarted else page_size,
                    continue_=token,
                    # The server rejects a resourceVersion next to a continue token: the token pins it.
                    resource_version=None if token else resource_version,
                    resource_version_match=None if token else resource_version_match,
                )
            except errors.Expired:
                if token is None:
                    raise
                token, restarted = None, True
                continue
            meta = page.get("metadata") or {}
            token = None if restarted else (meta.get("continue") or None)
            yield Page(
                page.get("items") or [],
                None if token else str(meta.get("resourceVersion", "")),
                restarted,
            )
            if token is None:
                return

    @asynccontextmanager
    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        allow_bookmarks: bool = True,
        timeout_seconds: int | None = None,
    ) -> AsyncIterator[WatchStream]:
        """Open a watch; the block gets a ``WatchStream`` of ``(type, object)`` events.

        Opening checks the HTTP status (non-2xx raises the typed error) and is retried like any read;
        once open, nothing is retried: the caller resumes from the last resourceVersion it saw.
        """
        params: dict[str, str | int | bool | None] = {
            "watch": True,
            "resourceVersion": resource_version,
            "labelSelector": label_selector or None,
            "fieldSelector": field_selector or None,
            "allowWatchBookmarks": True if allow_bookmarks else None,
            "timeoutSeconds": timeout_seconds,
        }
        silence = (
            timeout_seconds if timeout_seconds is not None else SERVER_MAX_WATCH_SECONDS
        ) + self._watch_read_margin
        # No total: a watch lives as long as the server keeps it; a dead peer shows up as read silence.
        client_timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=silence)
        path = res.path(namespace)
        status, headers, raw, response = await self._send(
            "GET",
            path,
            params=params,
            data=None,
            content_type=None,
            client_timeout=client_timeout,
            stream=True,
        )
        if not 200 <= status < 300 or response is None:
            raise errors.error_from_response(status, raw, headers)
        stream = WatchStream(response, f"watch {path}")
        try:
            yield stream
        finally:
            stream.close()

    # ------------------------------------------------------------------ writes
    async def create(
        self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None, *, answer: bool = True
    ) -> Obj:
        """POST a new object; returns it as written, or ``{}`` with ``answer=False`` (errors still raise).
        The other writes take ``answer`` too."""
        namespace = namespace or (obj.get("metadata") or {}).get("namespace")
        _require_namespace(res, namespace)
        return await self._call("POST", res.path(namespace), body=obj, answer=answer)

    async def update(self, res: Resource, obj: Mapping[str, Any]) -> Obj:
        """PUT the whole object; its metadata.resourceVersion makes the write conditional (409 if stale)."""
        name, namespace = _name_and_namespace(res, obj)
        _require_namespace(res, namespace)
        return await self._call("PUT", res.path(namespace, name), body=obj)

    async def update_status(self, res: Resource, obj: Mapping[str, Any]) -> Obj:
        name, namespace = _name_and_namespace(res, obj)
        _require_namespace(res, namespace)
        return await self._call("PUT", res.path(namespace, name, "status"), body=obj)

    async def merge_patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        answer: bool = True,
    ) -> Obj:
        _require_namespace(res, namespace)
        return await self._call(
            "PATCH",
            res.path(namespace, name, subresource),
            body=patch,
            content_type=MERGE_PATCH,
            answer=answer,
        )

    async def json_patch(
        self,
        res: Resource,
        name: str,
        ops: Sequence[Mapping[str, Any]],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        answer: bool = True,
    ) -> Obj:
        _require_namespace(res, namespace)
        return await self._call(
            "PATCH",
            res.path(namespace, name, subresource),
            body=list(ops),
            content_type=JSON_PATCH,
            answer=answer,
        )

    async def patch_status(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
        *,
        answer: bool = True,
    ) -> Obj:
        return await self.merge_patch(res, name, patch, namespace, subresource="status", answer=answer)

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        preconditions: Mapping[str, str] | None = None,
        propagation_policy: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> Obj:
        """Delete one object; returns what the server answers (the object, or a success Status)."""
        _require_namespace(res, namespace)
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if preconditions:
            options["preconditions"] = dict(preconditions)
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        return await self._call("DELETE", res.path(namespace, name), body=options)

    async def delete_collection(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        propagation_policy: str | None = None,
    ) -> Obj:
        params = {
            "labelSelector": label_selector or None,
            "fieldSelector": field_selector or None,
            "propagationPolicy": propagation_policy or None,
        }
        return await self._call("DELETE", res.path(namespace), params=params)
