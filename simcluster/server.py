"""The emulator's HTTP face: kube-apiserver's REST paths, discovery, probes and ``/__sim__/`` controls."""

from __future__ import annotations

import logging
import re
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import yaml
from aiohttp import web

from service.http import serving
from service.kube import errors
from service.kube.selectors import SelectorError, parse_field_selector, parse_label_selector
from simcluster.cluster import Cluster
from simcluster.faults import FaultRule, Faults
from simcluster.kinds import Kind
from simcluster.lifecycle import DeleteOptions
from simcluster.openapi import Documents, respond
from simcluster.tables import table_for, wants_table
from simcluster.watch import Watcher, frame

log = logging.getLogger("simcluster.server")

SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0+kpack-image-builder-sim",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.22",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_NAMESPACE_SUBRESOURCES = ("status", "finalize")
_NAMESPACES = ("", "namespaces")
_VERBS_COLLECTION = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
MAX_BODY = 3 * 1024 * 1024 + 64 * 1024  # kube-apiserver accepts 3 MiB request bodies
ANONYMOUS = "system:anonymous"
ADMIN_USER = "kubernetes-admin"  # who ``--token`` authenticates as


def query_bool(value: str | None) -> bool:
    """apimachinery's rule: absent, "0" or "false" (any case) is false; anything else, even "", is true."""
    return value is not None and value != "0" and value.lower() != "false"


_KUBE_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def kube_version_key(version: str) -> tuple[int, int, int, int, str]:
    """Sort key for kube-aware version order: v2, v1, v2beta1, v1beta2, v1beta1, v1alpha1, then others
    alphabetically."""
    m = _KUBE_VERSION.match(version)
    if m is None:
        return (1, 0, 0, 0, version)
    rank = {None: 0, "beta": 1, "alpha": 2}[m[2]]
    return (0, rank, -int(m[1]), -int(m[3] or 0), "")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class _NoHandler(Exception):
    """No API handler serves the path: kube-apiserver's handler chain ends in a plain-text 404. The
    built-in groups answer what they do not know with a ``NotFound`` Status; the CRD handler delegates
    everything outside the resources its CRDs define (unknown groups, versions, resources, and paths that
    do not fit a resource's scope) to that last handler."""


def _page_not_found() -> web.Response:
    return web.Response(text="404 page not found\n", status=404, content_type="text/plain", charset="utf-8")


def _error(exc: errors.ApiError) -> web.Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(
            int(exc.retry_after) if float(exc.retry_after).is_integer() else exc.retry_after
        )
    return web.Response(
        body=orjson.dumps(exc.status()),
        status=exc.code or 500,
        content_type="application/json",
        headers=headers,
    )


@dataclass(slots=True)
class Target:
    kind: Kind
    version: str
    namespace: str | None
    name: str | None
    subresource: str | None


class _WatchTables:
    """A watch asked for as a ``Table`` (``kubectl get --watch``): as kube-apiserver's watch encoder, every
    event's object (bookmarks included) becomes a one-row Table, with the column definitions only in the
    first; ERROR events keep their Status."""

    def __init__(self, t: Target) -> None:
        self.target = t
        self.headers = True

    def line(self, line: bytes) -> bytes:
        event = orjson.loads(line)
        obj = event["object"]
        if obj.get("kind") == "Status":
            return line
        meta = obj.get("metadata") or {}
        table = table_for(
            self.target.kind, self.target.version, [obj], {"resourceVersion": meta.get("resourceVersion", "")}
        )
        if not self.headers:
            table["columnDefinitions"] = None
        self.headers = False
        return frame(event["type"], orjson.dumps(table))


class ApiServer:
    def __init__(
        self,
        cluster: Cluster,
        faults: Faults,
        *,
        bookmark_interval: float = 60.0,
        token: str | None = None,
        default_watch_timeout: float = 1800.0,
        users: dict[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.faults = faults
        self.bookmark_interval = bookmark_interval
        self.token = token
        self.default_watch_timeout = default_watch_timeout
        # More bearer tokens, each naming the user it authenticates (as kube-apiserver's token file does).
        self.users: dict[str, str] = dict(users or {})
        self.openapi = Documents(cluster)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_response_prepare.append(self._date)
        return app

    async def _date(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer's ``Date`` by this server's clock (aiohttp writes the machine's when none is set),
        as kube-apiserver's Go server writes its own."""
        if self.cluster.clock_skew:
            response.headers["Date"] = formatdate(self.cluster.time(), usegmt=True)

    # ------------------------------------------------------------------ plumbing
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path.startswith("/__sim__/"):
            return await handler(request)
        if (
            self.token is not None
            and path not in ("/healthz", "/livez", "/readyz")
            and request.headers.get("Authorization") != f"Bearer {self.token}"
            and self._bearer(request) not in self.users
        ):
            return _error(errors.Unauthorized("Unauthorized"))
        rule = self.faults.pick(request.method, path)
        if rule is not None:
            if rule.latency > 0:
                await anyio.sleep(rule.latency)
            if rule.status:
                return _error(
                    errors.ApiError(
                        rule.message, code=rule.status, reason=rule.reason, retry_after=rule.retry_after
                    )
                )
        try:
            return await handler(request)
        except errors.ApiError as exc:
            return _error(exc)
        except _NoHandler:
            return _page_not_found()
        except SelectorError as exc:
            return _error(errors.BadRequest(str(exc)))

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        return header[len("Bearer ") :] if header.startswith("Bearer ") else None

    def user(self, request: web.Request) -> str:
        """Who the request is from, for admission: an ``Impersonate-User`` header (any client may
        impersonate: there is no RBAC), else the user its bearer token names, else ``system:anonymous``."""
        impersonated = request.headers.get("Impersonate-User")
        if impersonated:
            return impersonated
        token = self._bearer(request)
        if token is not None and token in self.users:
            return self.users[token]
        if token is not None and token == self.token:
            return ADMIN_USER
        return ANONYMOUS

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/__sim__/"):
            return await self._sim(request, path)
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(SERVER_VERSION)
        if path == "/openapi/v2" or path.startswith("/openapi/v3"):
            return respond(self.openapi, request)
        if path == "/api":
            return _json(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}
                    ],
                }
            )
        if path == "/apis":
            return _json(self._group_list())
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) == 2:
            found = self._group(parts[1])
            if found is None:
                raise _NoHandler
            return _json(found)
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _NoHandler
        if not rest:
            return _json(self._resource_list(group, version))
        return await self._resource(request, self._target(group, version, rest))

    def _built_in_group(self, group: str) -> bool:
        return any(k.group == group and not k.custom for k in self.cluster.kinds.values())

    def _not_found(self, group: str) -> Exception:
        """What a path under ``/api`` or ``/apis/<group>`` that serves nothing is answered with."""
        if self._built_in_group(group):
            return errors.NotFound("the server could not find the requested resource", details={})
        return _NoHandler()

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise self._not_found(group)
        try:
            kind = self.cluster.lookup(group, version, rest[0])
        except errors.NotFound:
            raise self._not_found(group) from None
        if namespace is not None and not kind.namespaced:
            raise self._not_found(group)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if name is not None and kind.namespaced and namespace is None:
            # a namespaced resource's cluster-wide path only lists and watches
            raise self._not_found(group)
        if (
            sub is not None
            and not (sub == "status" and kind.versions[version].status)
            and not (sub == "finalize" and kind.key == ("", "namespaces"))
        ):
            if kind.custom:
                # The CRD handler answers a subresource it does not serve as if the object were missing.
                raise errors.NotFound(
                    f'{kind.qualified} "{name}" not found',
                    details={"name": name, "group": kind.group, "kind": kind.plural},
                )
            raise errors.NotFound("the server could not find the requested resource", details={})
        return Target(kind, version, namespace, name, sub)

    # ------------------------------------------------------------------ resources
    async def _resource(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        method = request.method
        manager = (
            q.get("fieldManager") or request.headers.get("User-Agent", "unknown").split("/")[0] or "unknown"
        )
        dry_run = q.get("dryRun") == "All"
        user = self.user(request)
        if t.name is None:
            if method == "GET":
                labels = parse_label_selector(q.get("labelSelector"))
                fields = t.kind.field_selector(q.get("fieldSelector"))
                if query_bool(q.get("watch")):
                    return await self._watch(request, t, labels, fields)
                limit = int(q["limit"]) if q.get("limit", "").isdigit() else None
                result = self.cluster.list_objects(
                    t.kind,
                    t.version,
                    t.namespace,
                    labels=labels,
                    fields=fields,
                    limit=limit,
                    continue_token=q.get("continue") or None,
                )
                if wants_table(request.headers.get("Accept", "")):
                    return _json(table_for(t.kind, t.version, result["items"], result["metadata"]))
                return _json(result)
            if t.kind.namespaced and t.namespace is None and method != "GET":
                if t.kind.custom:  # the CRD handler serves only lists and watches there
                    raise _NoHandler
                raise errors.MethodNotAllowed(
                    "the server does not allow this method on the requested resource", details={}
                )
            if method == "POST":
                body = await self._body(request)
                return _json(
                    self.cluster.create(
                        t.kind, t.version, t.namespace, body, manager=manager, dry_run=dry_run, user=user
                    ),
                    201,
                )
            if method == "DELETE":
                if t.kind.key == _NAMESPACES:  # namespaces have no deletecollection
                    raise errors.MethodNotAllowed(
                        "the server does not allow this method on the requested resource", details={}
                    )
                labels = parse_label_selector(q.get("labelSelector"))
                fields = t.kind.field_selector(q.get("fieldSelector"))
                options = DeleteOptions.from_body(
                    await self._body(request, optional=True), q.get("propagationPolicy"), dry_run
                )
                return _json(
                    self.cluster.delete_collection(
                        t.kind,
                        t.version,
                        t.namespace,
                        labels=labels,
                        fields=fields,
                        options=options,
                        user=user,
                    )
                )
            if t.kind.custom and method in ("PUT", "PATCH"):
                raise errors.BadRequest("name must be provided")
            raise errors.MethodNotAllowed(
                "the server does not allow this method on the requested resource", details={}
            )
        if method == "GET":
            if query_bool(q.get("watch")):
                # The legacy single-object watch: a field selector on the name.
                fields = parse_field_selector(f"metadata.name={t.name}")
                return await self._watch(request, t, parse_label_selector(q.get("labelSelector")), fields)
            obj = self.cluster.view(t.kind, t.version, self.cluster.get(t.kind, t.namespace, t.name))
            if wants_table(request.headers.get("Accept", "")):
                return _json(
                    table_for(
                        t.kind, t.version, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]}
                    )
                )
            return _json(obj)
        if method == "PUT":
            body = await self._body(request)
            sub = "status" if t.subresource == "status" else None
            if t.subresource == "finalize":
                sub = None
            return _json(
                self.cluster.update(
                    t.kind,
                    t.version,
                    t.namespace,
                    t.name,
                    body,
                    subresource=sub,
                    manager=manager,
                    dry_run=dry_run,
                    user=user,
                )
            )
        if method == "PATCH":
            ctype = request.content_type
            if ctype == "application/apply-patch+yaml":
                raise errors.UnsupportedMediaType(
                    "server-side apply is not implemented by the kpack-image-builder API emulator"
                )
            raw = await request.read()
            return _json(
                self.cluster.patch(
                    t.kind,
                    t.version,
                    t.namespace,
                    t.name,
                    ctype,
                    raw,
                    subresource=t.subresource,
                    manager=manager,
                    dry_run=dry_run,
                    user=user,
                )
            )
        if method == "DELETE":
            options = DeleteOptions.from_body(
                await self._body(request, optional=True), q.get("propagationPolicy"), dry_run
            )
            if (
                q.get("gracePeriodSeconds") not in (None, "")
                and not q["gracePeriodSeconds"].lstrip("-").isdigit()
            ):
                raise errors.BadRequest("gracePeriodSeconds must be an integer")
            removed, obj = self.cluster.delete(t.kind, t.version, t.namespace, t.name, options, user=user)
            if removed and not t.kind.returns_deleted_object:
                return _json(
                    errors.success_status(
                        {
                            "name": t.name,
                            "group": t.kind.group,
                            "kind": t.kind.plural,
                            "uid": obj["metadata"]["uid"],
                        }
                    )
                )
            # kube-apiserver answers 202 for a deletion left pending after orphanDependents=false
            return _json(obj, 202 if not removed and options.orphan_dependents is False else 200)
        raise errors.MethodNotAllowed(
            "the server does not allow this method on the requested resource", details={}
        )

    async def _body(self, request: web.Request, optional: bool = False) -> Any:
        raw = await request.read()
        if not raw:
            if optional:
                return None
            raise errors.BadRequest("the body of the request was empty")
        try:
            if "yaml" in request.content_type:
                return yaml.safe_load(raw)
            return orjson.loads(raw)
        except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
            raise errors.BadRequest(f"the body of the request could not be decoded: {exc}") from None

    async def _watch(self, request: web.Request, t: Target, labels: Any, fields: Any) -> web.StreamResponse:
        q = request.query
        timeout = self.default_watch_timeout
        if q.get("timeoutSeconds"):
            try:
                timeout = float(q["timeoutSeconds"])
            except ValueError:
                raise errors.BadRequest(f'invalid timeoutSeconds "{q["timeoutSeconds"]}"') from None
        w = self.cluster.watch(
            t.kind,
            t.version,
            t.namespace,
            resource_version=q.get("resourceVersion"),
            labels=labels,
            fields=fields,
        )
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        bookmarks = query_bool(q.get("allowWatchBookmarks"))
        tables = _WatchTables(t) if wants_table(request.headers.get("Accept", "")) else None
        try:
            async with anyio.create_task_group() as tg:
                if bookmarks and self.bookmark_interval > 0:
                    tg.start_soon(self._bookmarks, t, w)
                with anyio.move_on_after(timeout):
                    try:
                        while True:
                            lines = await w.take()
                            if not lines:
                                break
                            if tables is not None:
                                lines = [tables.line(line) for line in lines]
                            await resp.write(b"".join(lines))
                    except OSError:  # ConnectionResetError included
                        pass  # the client went away (caught here: the task group would wrap it in a group)
                tg.cancel_scope.cancel()
        finally:
            self.cluster.stop_watch(t.kind, w)
        return resp

    async def _bookmarks(self, t: Target, w: Watcher) -> None:
        while not w.closed:
            await anyio.sleep(self.bookmark_interval)
            w.bookmark(t.kind.kind, t.kind.api_version(t.version), self.cluster.rv)

    # ------------------------------------------------------------------ discovery
    def _groups(self) -> dict[str, list[Kind]]:
        groups: dict[str, list[Kind]] = {}
        for kind in self.cluster.kinds.values():
            if kind.group:
                groups.setdefault(kind.group, []).append(kind)
        return groups

    def _group(self, name: str) -> dict[str, Any] | None:
        kinds = self._groups().get(name)
        if not kinds:
            return None
        versions = sorted({v for k in kinds for v in k.versions}, key=kube_version_key)
        preferred = versions[0]  # as kube-apiserver: the highest version, not necessarily the stored one
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": name,
            "versions": [{"groupVersion": f"{name}/{v}", "version": v} for v in versions],
            "preferredVersion": {"groupVersion": f"{name}/{preferred}", "version": preferred},
        }

    def _group_list(self) -> dict[str, Any]:
        groups = [g for name in sorted(self._groups()) if (g := self._group(name)) is not None]
        for g in groups:
            g.pop("kind")
            g.pop("apiVersion")
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources = []
        for kind in self.cluster.kinds.values():
            if kind.group != group or version not in kind.versions:
                continue
            entry: dict[str, Any] = {
                "name": kind.plural,
                "singularName": kind.singular,
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "verbs": [v for v in _VERBS_COLLECTION if v != "deletecollection"]
                if kind.key == _NAMESPACES
                else _VERBS_COLLECTION,
            }
            if kind.short_names:
                entry["shortNames"] = list(kind.short_names)
            if kind.categories:
                entry["categories"] = list(kind.categories)
            resources.append(entry)
            if kind.versions[version].status:
                resources.append(
                    {
                        "name": f"{kind.plural}/status",
                        "singularName": "",
                        "namespaced": kind.namespaced,
                        "kind": kind.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
            if kind.key == _NAMESPACES:
                resources.append(
                    {
                        "name": "namespaces/finalize",
                        "singularName": "",
                        "namespaced": False,
                        "kind": "Namespace",
                        "verbs": ["update"],
                    }
                )
        if not resources:
            raise self._not_found(group)
        group_version = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }

    # ------------------------------------------------------------------ /__sim__/
    async def _sim(self, request: web.Request, path: str) -> web.StreamResponse:
        if path == "/__sim__/faults":
            if request.method == "POST":
                try:
                    rule = self.faults.add(FaultRule.from_json(orjson.loads(await request.read())))
                except (ValueError, TypeError, AttributeError, re.error) as exc:
                    return _error(errors.BadRequest(f"bad fault rule: {exc}"))
                return _json(rule.as_json(), 201)
            if request.method == "DELETE":
                self.faults.clear()
                return _json({"cleared": True})
            return _json({"rules": [r.as_json() for r in self.faults.rules]})
        if path == "/__sim__/drop-watches" and request.method == "POST":
            return _json({"dropped": self.cluster.drop_watches()})
        if path == "/__sim__/watches" and request.method == "GET":
            open_by_kind = Counter(kind.qualified for kind, w in self.cluster.open_watches() if not w.closed)
            return _json({"open": dict(open_by_kind)})
        if path == "/__sim__/clock":
            if request.method == "PUT":
                try:
                    skew = float(orjson.loads(await request.read())["skewSeconds"])
                except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
                    return _error(errors.BadRequest(f'bad clock: {exc!r}; want {{"skewSeconds": <number>}}'))
                self.cluster.clock_skew = skew
            return _json({"skewSeconds": self.cluster.clock_skew, "now": self.cluster.stamp()})
        if path == "/__sim__/compact" and request.method == "POST":
            return _json({"compactedResourceVersion": str(self.cluster.compact())})
        return _error(errors.NotFound("no such emulator control"))


async def run_controllers(cluster: Cluster) -> None:
    """kube-controller-manager's part: garbage collection and the namespace and CRD finalizers."""
    while True:
        await cluster.work.wait()
        try:
            cluster.run_controllers_once()
        except Exception:  # one bad object must not stop collection for the rest
            log.exception("emulated controllers: pass failed")
        await anyio.lowlevel.checkpoint()


@dataclass
class RunningApiServer:
    url: str
    host: str
    port: int
    cluster: Cluster
    faults: Faults
    server: ApiServer


@asynccontextmanager
async def running_apiserver(
    cluster: Cluster | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    bookmark_interval: float = 60.0,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    faults: Faults | None = None,
    users: dict[str, str] | None = None,
) -> AsyncIterator[RunningApiServer]:
    """Serve the emulator on ``host:port`` (0: a free port) for the duration of the block. ``users`` maps
    more bearer tokens to the users they authenticate (``api.server.users`` can be extended later)."""
    cluster = cluster or Cluster()
    faults = faults or Faults()
    api = ApiServer(cluster, faults, bookmark_interval=bookmark_interval, token=token, users=users)
    scheme = "https" if ssl_context else "http"
    async with serving(api.app(), host, port, ssl_context) as bound:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_controllers, cluster)
                yield RunningApiServer(f"{scheme}://{host}:{bound}", host, bound, cluster, faults, api)
                tg.cancel_scope.cancel()
        finally:
            cluster.drop_watches()  # before the server stops: open watches end now, not at its timeout
