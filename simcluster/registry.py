"""An in-process OCI registry that answers as distribution 2.8 (Debian's ``docker-registry``) does.
(Past 600 lines: the routes, their error answers and the auth they share are one HTTP surface, compared
with distribution route by route.)

The demo and the kpack simulator need somewhere to push droplet images and read them back, and tests
must run where no registry binary is installed. Because the client is tested against both this and the
real registry, this one copies distribution 2.8 on every request the client makes: status codes, error
codes, messages and details, ``Docker-Content-Digest``, ``Location`` and content types, manifest
validation (referenced blobs and child manifests must exist in the repository), ``Accept`` checks for OCI
types, deletion by digest removing every tag pointing at it, deletion by tag refused, and Basic or
Bearer-token authentication with distribution's challenges.

Known differences from distribution 2.8 (everything else the client touches is meant to be identical):

* ``GET /v2/<name>/tags/list`` honours ``n`` and ``last`` (sorted tags, ``Link`` to the next page), as
  distribution 3 and the OCI spec do; 2.8 ignores both and returns every tag in storage order. Without
  ``n`` the sim returns every tag, sorted;
* Docker schema 2 manifests and manifest lists fetched by tag without their type in ``Accept`` are
  returned as they are, where 2.8 converts them to schema 1; schema 1 manifests cannot be pushed;
* Bearer tokens are opaque strings issued by the sim's own ``/token`` endpoint, not JWTs, and a token
  grants the requested actions to any valid user (anonymous users get ``pull`` only with
  ``anonymous_pull``); challenge scopes list actions as ``pull,push`` (2.8's order is random);
* uploads are kept in memory and checked only for the final digest (no ``Content-Range`` checks,
  ``_state`` is the upload's UUID, not signed state); an upload cancelled with ``DELETE`` answers
  ``BLOB_UPLOAD_UNKNOWN`` afterwards (not compared with 2.8); manifest bodies are not limited to 4 MiB;
* so that a long-running demo or devcluster does not grow without bound, only the last
  ``max_failed_uploads`` (1,000) uploads whose commit failed answer ``BLOB_UPLOAD_INVALID`` (older ones
  ``BLOB_UPLOAD_UNKNOWN``), and at most ``max_grants`` (10,000) tokens are kept: expired ones are
  forgotten, and past the limit the oldest go (their holders get ``invalid_token`` and fetch another);
* no garbage collection, no ``Range`` requests on blobs, no blob redirects, no read-only mode;
* the 500 ``UNKNOWN`` answer to a malformed digest (``…/manifests/sha256:abc``) has a shorter
  ``detail`` (no storage driver path).

``tests/registry/test_sim_conformance.py`` runs the same request script against both and compares
statuses, headers and bodies; extend it when the client starts using another part of the API.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from aiohttp import web

from service.http import serving
from service.registry import media

MAX_BODY = 256 * 1024 * 1024  # uploads; distribution streams, the sim keeps them in memory
MAX_MANIFEST = 4 * 1024 * 1024
API_HEADERS = {"Docker-Distribution-Api-Version": "registry/2.0"}
JSON_UTF8 = "application/json; charset=utf-8"
MAX_GRANTS = 10_000  # tokens kept (expired ones are dropped first, then the oldest)
MAX_FAILED_UPLOADS = 1_000  # failed uploads remembered, to answer BLOB_UPLOAD_INVALID

# Route patterns of distribution 2.8 (registry/api/v2/descriptors.go and the reference package).
# distribution's component is [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*; written unambiguously and atomic here,
# because Python's backtracking engine (unlike Go's RE2) takes exponential time on the original.
_COMPONENT = r"(?>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)"
_DOMAIN = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_ROUTE_DIGEST = r"[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+"  # go-digest's DigestRegexp
_ROUTES: list[tuple[str, re.Pattern[str]]] = [
    ("base", re.compile(r"^/v2/$")),
    ("catalog", re.compile(r"^/v2/_catalog$")),
    ("tags", re.compile(rf"^/v2/(?P<name>{_NAME})/tags/list$")),
    ("manifest", re.compile(rf"^/v2/(?P<name>{_NAME})/manifests/(?P<reference>{_TAG}|{_ROUTE_DIGEST})$")),
    ("blob", re.compile(rf"^/v2/(?P<name>{_NAME})/blobs/(?P<digest>{_ROUTE_DIGEST})$")),
    ("uploads", re.compile(rf"^/v2/(?P<name>{_NAME})/blobs/uploads/$")),
    ("upload", re.compile(rf"^/v2/(?P<name>{_NAME})/blobs/uploads/(?P<upload_id>[a-zA-Z0-9-_.=]+)$")),
]
# The methods each route's handler takes (gorilla's MethodHandler answers others with 405 and ``Allow``);
# the base route takes any method.
_METHODS: dict[str, tuple[str, ...] | None] = {
    "base": None,
    "catalog": ("GET",),
    "tags": ("GET",),
    "manifest": ("GET", "HEAD", "PUT", "DELETE"),
    "blob": ("GET", "HEAD", "DELETE"),
    "uploads": ("POST",),
    "upload": ("GET", "HEAD", "PATCH", "PUT", "DELETE"),
}

# Error codes: (HTTP status, message), from distribution's errcode registrations.
ERRORS: dict[str, tuple[int, str]] = {
    "UNKNOWN": (500, "unknown error"),
    "UNSUPPORTED": (405, "The operation is unsupported."),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNAVAILABLE": (503, "service unavailable"),
    "TOOMANYREQUESTS": (429, "too many requests"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "NAME_INVALID": (400, "invalid repository name"),
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNVERIFIED": (400, "manifest failed signature verification"),
    "MANIFEST_BLOB_UNKNOWN": (400, "blob unknown to registry"),
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "BLOB_UPLOAD_INVALID": (404, "blob upload invalid"),
    "PAGINATION_NUMBER_INVALID": (400, "invalid number of results requested"),
}
_NO_DETAIL = object()


class RegistryErrorResponse(Exception):
    """A distribution error: one or more ``(code, message, detail)``; the first decides the status."""

    def __init__(
        self,
        code: str,
        detail: Any = _NO_DETAIL,
        *,
        message: str | None = None,
        headers: Mapping[str, str] = {},
    ) -> None:
        super().__init__(code)
        self.errors: list[tuple[str, str, Any]] = [(code, message or ERRORS[code][1], detail)]
        self.headers = dict(headers)

    def add(self, code: str, detail: Any = _NO_DETAIL) -> None:
        self.errors.append((code, ERRORS[code][1], detail))

    def response(self) -> web.Response:
        body = []
        for code, message, detail in self.errors:
            entry: dict[str, Any] = {"code": code, "message": message}
            if detail is not _NO_DETAIL:
                entry["detail"] = detail
            body.append(entry)
        return web.Response(
            body=orjson.dumps({"errors": body}) + b"\n",
            status=ERRORS[self.errors[0][0]][0],
            headers={**API_HEADERS, "Content-Type": JSON_UTF8, **self.headers},
        )


def _plain(status: int, text: str, headers: Mapping[str, str] = {}) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        headers={**API_HEADERS, "X-Content-Type-Options": "nosniff", **headers},
        content_type="text/plain",
        charset="utf-8",
    )


def _json(doc: Any, status: int = 200, headers: Mapping[str, str] = {}) -> web.Response:
    return web.Response(
        body=orjson.dumps(doc) + b"\n",
        status=status,
        headers={**API_HEADERS, "Content-Type": JSON_UTF8, **headers},
    )


def _empty(status: int, headers: Mapping[str, str] = {}) -> web.Response:
    return web.Response(status=status, headers={**API_HEADERS, **headers})


@dataclass
class _Repository:
    blobs: set[str] = field(default_factory=set)  # linked layer/config blobs
    manifests: dict[str, str] = field(default_factory=dict)  # digest -> media type (revision links)
    tags: dict[str, str] | None = None  # tag -> digest; None until the first tag (then NAME_UNKNOWN ends)


@dataclass
class _Upload:
    repository: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Grant:
    user: str
    access: set[tuple[str, str, str]]  # (type, name, action)
    expires: float


@dataclass
class RunningRegistry:
    url: str  # http://127.0.0.1:port
    host: str  # 127.0.0.1:port, the registry part of image references
    port: int
    registry: OciRegistry


Auth = Literal["none", "basic", "token"]


class OciRegistry:
    """Registry state and its aiohttp application.

    ``auth``: ``"none"``, ``"basic"`` (``users`` checked on every request, ``realm`` in the challenge) or
    ``"token"`` (Bearer tokens from ``/token`` on the same server, for ``users``; ``service`` names it).
    ``tag_deletion`` lets ``DELETE /v2/<name>/manifests/<tag>`` remove a tag, as OCI distribution 1.1
    registries do (2.8 refuses it, and so does the sim by default).
    ``requests`` counts ``(method, route)`` pairs and ``log`` keeps the last requests, for tests.
    ``max_grants`` and ``max_failed_uploads`` bound what the registry remembers of tokens and of failed
    uploads (see the module docstring)."""

    def __init__(
        self,
        *,
        auth: Auth = "none",
        users: Mapping[str, str] | None = None,
        realm: str = "sim-registry",
        service: str = "sim-registry",
        token_ttl: int = 300,
        token_field: Literal["token", "access_token", "both"] = "both",
        anonymous_pull: bool = False,
        delete_enabled: bool = True,
        tag_deletion: bool = False,
        max_grants: int = MAX_GRANTS,
        max_failed_uploads: int = MAX_FAILED_UPLOADS,
    ) -> None:
        self.auth = auth
        self.users = dict(users or {})
        self.realm = realm
        self.service = service
        self.token_ttl = token_ttl
        self.token_field = token_field
        self.anonymous_pull = anonymous_pull
        self.delete_enabled = delete_enabled
        self.tag_deletion = tag_deletion
        self.token_realm = ""  # set once the server knows its URL
        self.blobs: dict[str, bytes] = {}  # the content store, shared by all repositories
        self.repositories: dict[str, _Repository] = {}
        self.uploads: dict[str, _Upload] = {}
        self.max_grants = max_grants
        self.max_failed_uploads = max_failed_uploads
        self.failed_uploads: dict[str, None] = {}  # upload ids, oldest first (an insertion-ordered set)
        self.grants: dict[str, _Grant] = {}  # by token, oldest first
        self.requests: Counter[tuple[str, str]] = Counter()
        self.log: deque[tuple[str, str]] = deque(maxlen=10_000)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    # --------------------------------------------------------------------------------- helpers
    def tags(self, name: str) -> dict[str, str]:
        """The tags of a repository (a copy), for tests."""
        repo = self.repositories.get(name)
        return dict(repo.tags or {}) if repo else {}

    def manifest(self, name: str, reference: str) -> bytes | None:
        """The raw manifest a tag or digest names in a repository, for tests."""
        repo = self.repositories.get(name)
        if repo is None:
            return None
        digest = (repo.tags or {}).get(reference, reference)
        return self.blobs.get(digest) if digest in repo.manifests else None

    def _repo(self, name: str) -> _Repository:
        return self.repositories.setdefault(name, _Repository())

    @staticmethod
    def _base_url(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    # ---------------------------------------------------------------------------------- routing
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/token" and self.auth == "token":
            self.requests[(request.method, "token")] += 1
            return self._token(request)
        found = next(((r, m) for r, p in _ROUTES if (m := p.match(path)) is not None), None)
        if found is None:
            return _plain(404, "404 page not found\n")
        route, m = found
        self.requests[(request.method, route)] += 1
        self.log.append((request.method, str(request.rel_url)))
        params = m.groupdict()
        try:
            # distribution's order: authorisation, then the repository name, then the method
            self._authorize(request, route, params.get("name"))
            if params.get("name") is not None and len(params["name"]) > 255:
                raise RegistryErrorResponse("NAME_INVALID", {"Name": params["name"]})
            methods = _METHODS[route]
            if methods is not None and request.method not in methods:
                allow = {"Allow": ", ".join(sorted(methods))}
                if request.method == "OPTIONS":
                    return web.Response(status=200, headers={**API_HEADERS, **allow})
                return _plain(405, "Method not allowed\n", allow)
            handler = getattr(self, f"_{route}")
            response: web.StreamResponse = await handler(request, **params)
            return response
        except RegistryErrorResponse as exc:
            return exc.response()

    # ------------------------------------------------------------------------------------ auth
    def _access(self, request: web.Request, route: str, name: str | None) -> list[tuple[str, str, str]]:
        """distribution's access records for a request: (type, name, action)."""
        if route == "base":
            return []
        if route == "catalog":
            return [("registry", "catalog", "*")]
        assert name is not None
        method = request.method
        if method in ("GET", "HEAD"):
            records = [("repository", name, "pull")]
        elif method in ("POST", "PUT", "PATCH"):
            records = [("repository", name, "pull"), ("repository", name, "push")]
        else:
            records = [("repository", name, "delete")]
        source = request.query.get("from")
        if route == "uploads" and "mount" in request.query and source:
            records.append(("repository", source, "pull"))
        return records

    def _authorize(self, request: web.Request, route: str, name: str | None) -> None:
        if self.auth == "none":
            return
        access = self._access(request, route, name)
        detail = [{"Type": t, "Class": "", "Name": n, "Action": a} for t, n, a in access] or None
        header = request.headers.get("Authorization", "")
        if self.auth == "basic":
            user = self._basic_user(header)
            if user is None:
                raise RegistryErrorResponse(
                    "UNAUTHORIZED", detail, headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'}
                )
            return
        scheme, _, token = header.partition(" ")
        error = ""
        if scheme.lower() != "bearer" or not token:
            error = "required"
        else:
            grant = self.grants.get(token)
            if grant is None or grant.expires <= time.monotonic():
                self.grants.pop(token, None)
                error = "invalid_token"
            elif any(a not in grant.access for a in access):
                error = "insufficient_scope"
        if not error:
            return
        challenge = f'Bearer realm="{self.token_realm}",service="{self.service}"'
        scopes: dict[tuple[str, str], list[str]] = {}
        for t, n, a in access:
            scopes.setdefault((t, n), []).append(a)
        if scopes:
            challenge += ',scope="' + " ".join(f"{t}:{n}:{','.join(a)}" for (t, n), a in scopes.items()) + '"'
        if error != "required":
            challenge += f',error="{error}"'
        raise RegistryErrorResponse("UNAUTHORIZED", detail, headers={"WWW-Authenticate": challenge})

    def _basic_user(self, header: str) -> str | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep or user not in self.users or not secrets.compare_digest(self.users[user], password):
            return None
        return user

    def _token(self, request: web.Request) -> web.Response:
        """The token server: Basic credentials (or none) in, an opaque token for the asked scopes out."""
        header = request.headers.get("Authorization")
        user = ""
        if header:
            found = self._basic_user(header)
            if found is None:
                return web.Response(
                    body=orjson.dumps({"details": "incorrect username or password"}) + b"\n",
                    status=401,
                    content_type="application/json",
                    headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'},
                )
            user = found
        if request.query.get("service", self.service) != self.service:
            return web.Response(status=400, text="unknown service")
        access: set[tuple[str, str, str]] = set()
        for scope_param in request.query.getall("scope", []):
            for scope in scope_param.split():
                kind, _, rest = scope.partition(":")
                target, _, actions = rest.rpartition(":")
                for action in actions.split(","):
                    if user or (self.anonymous_pull and action == "pull"):
                        access.add((kind, target, action))
        token = secrets.token_urlsafe(24)
        self._grant(token, _Grant(user, access, time.monotonic() + self.token_ttl))
        doc: dict[str, Any] = {
            "expires_in": self.token_ttl,
            "issued_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        if self.token_field in ("token", "both"):
            doc["token"] = token
        if self.token_field in ("access_token", "both"):
            doc["access_token"] = token
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    def _grant(self, token: str, grant: _Grant) -> None:
        """Keep a new token's grant, first dropping the oldest grants while they have expired (tokens share
        one lifetime, so the oldest expire first) or while there are ``max_grants`` of them."""
        now = time.monotonic()
        while self.grants:
            oldest = next(iter(self.grants))
            if self.grants[oldest].expires > now and len(self.grants) < self.max_grants:
                break
            del self.grants[oldest]
        self.grants[token] = grant

    # ---------------------------------------------------------------------------------- handlers
    async def _base(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"{}", headers={**API_HEADERS, "Content-Type": JSON_UTF8})

    async def _catalog(self, request: web.Request) -> web.StreamResponse:
        names = sorted(
            n for n, r in self.repositories.items() if r.tags is not None or r.manifests or r.blobs
        )
        return self._page(request, names, "repositories", "/v2/_catalog", {})

    async def _tags(self, request: web.Request, name: str) -> web.StreamResponse:
        repo = self.repositories.get(name)
        if repo is None or repo.tags is None:
            raise RegistryErrorResponse("NAME_UNKNOWN", {"name": name})
        if not repo.tags:
            return _json({"name": name, "tags": None})
        return self._page(request, sorted(repo.tags), "tags", f"/v2/{name}/tags/list", {"name": name})

    def _page(
        self, request: web.Request, items: list[str], key: str, path: str, extra: dict[str, Any]
    ) -> web.StreamResponse:
        n_param = request.query.get("n")
        last = request.query.get("last", "")
        if n_param is None:
            return _json({**extra, key: [i for i in items if i > last] if last else items})
        try:
            n = int(n_param)
        except ValueError:
            n = -1
        if n < 0:
            raise RegistryErrorResponse("PAGINATION_NUMBER_INVALID", {"n": n_param})
        after = [i for i in items if i > last] if last else items
        page = after[:n]
        headers = {}
        if n and len(after) > n:
            headers["Link"] = f'<{path}?last={page[-1]}&n={n}>; rel="next"'
        return _json({**extra, key: page}, headers=headers)

    async def _manifest(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        if request.method in ("GET", "HEAD"):
            return self._get_manifest(request, name, reference)
        if request.method == "PUT":
            return await self._put_manifest(request, name, reference)
        return self._delete_manifest(name, reference)

    def _get_manifest(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        repo = self.repositories.get(name) or _Repository()
        if media.is_digest(reference):
            digest = reference
        elif re.fullmatch(_TAG, reference):
            digest_or_none = (repo.tags or {}).get(reference)
            if digest_or_none is None:
                raise RegistryErrorResponse("MANIFEST_UNKNOWN", {"Tag": reference})
            digest = digest_or_none
        else:  # matched the route's digest pattern but is no valid digest: 2.8 fails on the storage path
            raise RegistryErrorResponse("UNKNOWN", {"Path": f"_manifests/tags/{reference}/current/link"})
        if request.headers.get("If-None-Match", "").strip() == f'"{digest}"':
            return web.Response(status=304, headers=API_HEADERS)
        media_type = repo.manifests.get(digest)
        if media_type is None:
            raise RegistryErrorResponse("MANIFEST_UNKNOWN", {"Name": name, "Revision": digest})
        accepted = {
            part.split(";")[0].strip()
            for value in request.headers.getall("Accept", [])
            for part in value.split(",")
        }
        if media_type == media.OCI_MANIFEST and media.OCI_MANIFEST not in accepted:
            raise RegistryErrorResponse(
                "MANIFEST_UNKNOWN",
                message="OCI manifest found, but accept header does not support OCI manifests",
            )
        if media_type == media.OCI_INDEX and media.OCI_INDEX not in accepted:
            raise RegistryErrorResponse(
                "MANIFEST_UNKNOWN", message="OCI index found, but accept header does not support OCI indexes"
            )
        body = self.blobs[digest]
        return web.Response(
            body=body,
            headers={
                **API_HEADERS,
                "Content-Type": media_type,
                "Docker-Content-Digest": digest,
                "Etag": f'"{digest}"',
            },
        )

    async def _put_manifest(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        body = await request.read()
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type not in media.MANIFEST_TYPES:
            # 2.8 falls back to schema 1, which such a body never satisfies.
            raise RegistryErrorResponse("MANIFEST_INVALID", {})
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RegistryErrorResponse("MANIFEST_INVALID", {}) from None
        if not isinstance(doc, dict) or not self._shape_ok(content_type, doc):
            raise RegistryErrorResponse("MANIFEST_INVALID", {})
        digest = media.sha256_digest(body)
        if media.is_digest(reference):
            if reference != digest:
                raise RegistryErrorResponse("DIGEST_INVALID")
            tag = None
        elif re.fullmatch(_TAG, reference):
            tag = reference
        else:
            raise RegistryErrorResponse("DIGEST_INVALID")
        if doc.get("schemaVersion") != 2:
            raise RegistryErrorResponse("UNKNOWN", {})
        repo = self._repo(name)
        missing: list[str] = []
        if content_type in media.INDEXES:
            for entry in doc.get("manifests") or []:
                child = entry.get("digest") if isinstance(entry, dict) else None
                if child not in repo.manifests:
                    missing.append(str(child))
        else:
            refs = [doc.get("config"), *(doc.get("layers") or [])]
            for descriptor in refs:
                blob = descriptor.get("digest") if isinstance(descriptor, dict) else None
                if descriptor and descriptor.get("urls"):
                    continue
                if blob not in repo.blobs:
                    missing.append(str(blob))
        if missing:
            error = RegistryErrorResponse("MANIFEST_BLOB_UNKNOWN", missing[0])
            for blob in missing[1:]:
                error.add("MANIFEST_BLOB_UNKNOWN", blob)
            raise error
        self.blobs[digest] = body
        repo.manifests[digest] = content_type
        if tag is not None:
            if repo.tags is None:
                repo.tags = {}
            repo.tags[tag] = digest
        return _empty(
            201,
            {
                "Location": f"{self._base_url(request)}/v2/{name}/manifests/{digest}",
                "Docker-Content-Digest": digest,
            },
        )

    @staticmethod
    def _shape_ok(content_type: str, doc: dict[str, Any]) -> bool:
        """distribution 2.8's unmarshal checks for each manifest type."""
        declared = doc.get("mediaType")
        if content_type == media.OCI_MANIFEST:
            return doc.get("manifests") is None and declared in (None, "", media.OCI_MANIFEST)
        if content_type == media.OCI_INDEX:
            return (
                doc.get("config") is None
                and doc.get("layers") is None
                and declared in (None, "", media.OCI_INDEX)
            )
        return declared == content_type  # Docker types must say what they are

    def _delete_manifest(self, name: str, reference: str) -> web.StreamResponse:
        if not self.delete_enabled:
            raise RegistryErrorResponse("UNSUPPORTED")
        repo = self.repositories.get(name)
        if not media.is_digest(reference):
            if not self.tag_deletion:
                raise RegistryErrorResponse("DIGEST_INVALID")  # 2.8 deletes by digest only
            if repo is None or reference not in (repo.tags or {}):
                raise RegistryErrorResponse("MANIFEST_UNKNOWN", {"Tag": reference})
            del (repo.tags or {})[reference]
            return _empty(202)
        if repo is None or reference not in repo.manifests:
            raise RegistryErrorResponse("MANIFEST_UNKNOWN")
        del repo.manifests[reference]
        if repo.tags is not None:
            for tag in [t for t, d in repo.tags.items() if d == reference]:
                del repo.tags[tag]
        return _empty(202)

    async def _blob(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        repo = self.repositories.get(name)
        if request.method == "DELETE":
            if not self.delete_enabled:
                raise RegistryErrorResponse("UNSUPPORTED")
            if repo is None or digest not in repo.blobs:
                raise RegistryErrorResponse("BLOB_UNKNOWN", digest)
            repo.blobs.discard(digest)
            return _empty(202)
        if repo is None or digest not in repo.blobs:
            raise RegistryErrorResponse("BLOB_UNKNOWN", digest)
        return web.Response(
            body=self.blobs[digest],
            headers={
                **API_HEADERS,
                "Accept-Ranges": "bytes",
                "Cache-Control": "max-age=31536000",
                "Content-Type": "application/octet-stream",
                "Docker-Content-Digest": digest,
                "Etag": f'"{digest}"',
            },
        )

    async def _uploads(self, request: web.Request, name: str) -> web.StreamResponse:
        mount, source = request.query.get("mount"), request.query.get("from")
        if mount and source:
            origin = self.repositories.get(source)
            if origin is not None and mount in origin.blobs:
                self._repo(name).blobs.add(mount)
                return _empty(
                    201,
                    {
                        "Location": f"{self._base_url(request)}/v2/{name}/blobs/{mount}",
                        "Docker-Content-Digest": mount,
                    },
                )
        await request.read()  # 2.8 ignores a body (and ?digest=) here: no single-request uploads
        upload_id = str(uuid.uuid4())
        self.uploads[upload_id] = _Upload(name)
        return self._upload_status(request, name, upload_id, 202)

    def _upload_status(self, request: web.Request, name: str, upload_id: str, status: int) -> web.Response:
        size = len(self.uploads[upload_id].data)
        return _empty(
            status,
            {
                "Location": f"{self._base_url(request)}/v2/{name}/blobs/uploads/{upload_id}?_state={upload_id}",
                "Range": f"0-{max(size - 1, 0)}",
                "Docker-Upload-UUID": upload_id,
            },
        )

    async def _upload(self, request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
        upload = self.uploads.get(upload_id)
        if upload_id in self.failed_uploads:
            raise RegistryErrorResponse("BLOB_UPLOAD_INVALID")  # 2.8: its state is valid, its data gone
        if upload is None or upload.repository != name:
            raise RegistryErrorResponse("BLOB_UPLOAD_UNKNOWN")
        if request.method in ("GET", "HEAD"):
            return self._upload_status(request, name, upload_id, 204)
        if request.method == "DELETE":
            del self.uploads[upload_id]
            return _empty(204)
        if request.method == "PATCH":
            upload.data += await request.read()
            return self._upload_status(request, name, upload_id, 202)
        # PUT: a missing or unparsable digest leaves the upload as it was, for a retry
        digest = request.query.get("digest")
        if not digest:
            raise RegistryErrorResponse("DIGEST_INVALID", "digest missing")
        if not media.is_digest(digest):
            raise RegistryErrorResponse("DIGEST_INVALID", "digest parsing failed")
        upload.data += await request.read()
        data = bytes(upload.data)
        if media.sha256_digest(data) != digest:
            del self.uploads[upload_id]  # 2.8 cancels the upload when the commit fails
            self.failed_uploads[upload_id] = None
            while len(self.failed_uploads) > max(self.max_failed_uploads, 0):
                del self.failed_uploads[next(iter(self.failed_uploads))]
            raise RegistryErrorResponse("DIGEST_INVALID", {"Digest": digest, "Reason": {}})
        del self.uploads[upload_id]
        self.blobs[digest] = data
        self._repo(name).blobs.add(digest)
        return _empty(
            201,
            {
                "Location": f"{self._base_url(request)}/v2/{name}/blobs/{digest}",
                "Docker-Content-Digest": digest,
            },
        )


@asynccontextmanager
async def running_registry(
    registry: OciRegistry | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningRegistry]:
    """Serve ``registry`` (a fresh anonymous one by default) on ``host:port`` (0: a free port) for the
    duration of the block. With token auth its realm is ``<url>/token``."""
    registry = registry or OciRegistry()
    async with serving(registry.app(), host, port) as bound:
        url = f"http://{host}:{bound}"
        registry.token_realm = registry.token_realm or f"{url}/token"
        yield RunningRegistry(url, f"{host}:{bound}", bound, registry)
