"""The documents of one cluster, built on demand and cached until its CRDs change, and the HTTP answers
kube-openapi's handlers give: content negotiation, ETags, and the v3 index with hashed URLs."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from simcluster.apiextensions import CRD_KEY
from simcluster.openapi import crd
from simcluster.openapi.protobuf import encode_document
from simcluster.store import Store

Obj = dict[str, Any]

DATA = Path(__file__).resolve().parents[1] / "openapi_builtin.json"
JSON_TYPE = "application/json"
V2_PROTOBUF_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
_NO_CACHE = "no-cache, private"
# kube-openapi's v2 handler: what it offers, in its order (it takes both spellings of the protobuf type).
_V2_OFFERS = [
    ("application", "json"),
    ("application", "com.github.proto-openapi.spec.v2@v1.0+protobuf"),
    ("application", "com.github.proto-openapi.spec.v2.v1.0+protobuf"),
]


@functools.cache
def builtin() -> Obj:
    """``openapi_builtin.json`` (loaded once, on first use)."""
    data: Obj = orjson.loads(DATA.read_bytes())
    return data


@functools.cache
def _shared_v2_parameters() -> dict[bytes, str]:
    return {crd.canonical(p): name for name, p in builtin()["v2"]["parameters"].items()}


def refs(node: Any, prefix: str) -> set[str]:
    """The names every ``$ref`` under ``node`` points to, with ``prefix`` (``#/definitions/``...)."""
    found: set[str] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, dict):
            for k, v in n.items():
                if k == "$ref" and isinstance(v, str):
                    if v.startswith(prefix):
                        found.add(v[len(prefix) :])
                else:
                    todo.append(v)
        elif isinstance(n, list):
            todo.extend(n)
    return found


def _closure(lookup: Callable[[str], Obj | None], roots: Iterable[str], prefix: str) -> Obj:
    """The schemas ``roots`` need, transitively."""
    out: Obj = {}
    todo = sorted(roots)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        schema = lookup(name)
        if schema is not None:
            out[name] = schema
            todo.extend(sorted(refs(schema, prefix) - out.keys()))
    return out


def _lookup(own: Obj, pool: Obj, name: str) -> Obj | None:
    found: Obj | None = own.get(name, pool.get(name))
    return found


@dataclass(frozen=True, slots=True)
class Served:
    body: bytes
    etag: str  # kube-openapi's: the SHA-512 of the body in upper-case hex (also the v3 ``hash``)


def _serve(doc: Obj | bytes) -> Served:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return Served(body, hashlib.sha512(body).hexdigest().upper())


class Documents:
    """The documents of one cluster. Nothing is loaded or built until a client asks; what is built is
    kept (serialised) until a CRD is created, changed or removed: the key, checked on every request, is
    each served CRD's name and resourceVersion."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._key: tuple[tuple[str, str], ...] | None = None
        self._versions: list[crd.CRDVersion] = []
        self._v2: Served | None = None
        self._v2_protobuf: Served | None = None
        self._v3: dict[str, Served] | None = None
        self._v3_index: Served | None = None

    def _current(self) -> None:
        crds = []
        stored = self.store.objects.get(CRD_KEY, {})
        for obj in (stored[key] for key in sorted(stored)):
            spec = obj.get("spec") or {}
            kind = self.store.kinds.get((spec.get("group", ""), (spec.get("names") or {}).get("plural", "")))
            if kind is not None and kind.custom:  # served (established), not only stored
                crds.append(obj)
        key = tuple((c["metadata"]["name"], c["metadata"].get("resourceVersion", "")) for c in crds)
        if key != self._key:
            self._key = key
            self._versions = [v for c in crds for v in crd.crd_versions(c)]
            self._v2 = self._v2_protobuf = self._v3 = self._v3_index = None

    def v2_document(self) -> Obj:
        data = builtin()["v2"]
        form = builtin()["crd"]["v2"]
        paths = dict(data["paths"])
        definitions = dict(data["definitions"])
        for c in self._versions:
            paths.update(crd.paths_v2(c, form, _shared_v2_parameters()))
            definitions.update(crd.schemas(c, form, v2=True))
        return {
            **data,
            "paths": dict(sorted(paths.items())),
            "definitions": dict(sorted(definitions.items())),
        }

    def v3_documents(self) -> dict[str, Obj]:
        """Each group version's document (and ``api``, ``apis``, ``version``...), by name."""
        data = builtin()["v3"]
        pool: Obj = data["schemas"]
        form = builtin()["crd"]["v3"]
        docs: dict[str, Obj] = {}
        own: dict[str, Obj] = {}  # per document: the schemas it defines itself, before the pool's
        for name, doc in data["documents"].items():
            docs[name] = {**doc, "paths": dict(doc["paths"])}
            own[name] = dict(doc.get("components", {}).get("schemas", {}))
        for c in self._versions:
            doc = docs.setdefault(c.gv, {"openapi": "3.0.0", "info": form["info"], "paths": {}})
            doc["paths"].update(crd.paths_v3(c, form))
            schemas = own.setdefault(c.gv, dict(form["schemas"]))
            schemas.update(crd.schemas(c, form, v2=False))
        for name, doc in docs.items():
            lookup = functools.partial(_lookup, own[name], pool)
            needed = _closure(lookup, refs(doc["paths"], crd.V3_REF), crd.V3_REF)
            components = {k: v for k, v in doc.get("components", {}).items() if k != "schemas"}
            if needed:
                components["schemas"] = dict(sorted(needed.items()))
            doc["paths"] = dict(sorted(doc["paths"].items()))
            if components:
                doc["components"] = components
        return docs

    def v2(self) -> Served:
        self._current()
        if self._v2 is None:
            self._v2 = _serve(self.v2_document())
        return self._v2

    def v2_protobuf(self) -> Served:
        self._current()
        if self._v2_protobuf is None:
            # one document, whatever its encoding: one ETag, the JSON's (as kube-openapi's)
            v2 = self.v2()
            self._v2_protobuf = Served(encode_document(orjson.loads(v2.body)), v2.etag)
        return self._v2_protobuf

    def _v3_served(self) -> dict[str, Served]:
        self._current()
        if self._v3 is None:
            self._v3 = {name: _serve(doc) for name, doc in self.v3_documents().items()}
        return self._v3

    def v3_index(self) -> Served:
        served = self._v3_served()
        if self._v3_index is None:
            paths = {
                name: {"serverRelativeURL": f"/openapi/v3/{name}?hash={doc.etag}"}
                for name, doc in sorted(served.items())
            }
            self._v3_index = _serve({"paths": paths})
        return self._v3_index

    def v3(self, name: str) -> Served | None:
        return self._v3_served().get(name)


# ------------------------------------------------------------------------------------------ HTTP
def negotiate(accept: str, offers: list[tuple[str, str]]) -> int | None:
    """Which of ``offers`` (type, subtype) to answer, as kube-openapi chooses: the first offer that the
    most preferred Accept clause (by q, then the more specific) matches; ``None``: 406."""
    clauses = []
    for i, part in enumerate((accept or "*/*").split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        kind, _, sub = media.partition("/")
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if media and q > 0:
            clauses.append((-q, sub in ("*", ""), kind == "*", i, kind, sub or "*"))
    for *_, kind, sub in sorted(clauses):
        for i, (offer_kind, offer_sub) in enumerate(offers):
            if kind in (offer_kind, "*") and sub in (offer_sub, "*"):
                return i
    return None


def _answer(
    request: web.Request, served: Served, content_type: str, extra: dict[str, str] | None = None
) -> web.Response:
    headers = {"ETag": f'"{served.etag}"', "Vary": "Accept", **(extra or {})}
    wanted = [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]
    if f'"{served.etag}"' in wanted or "*" in wanted:
        return web.Response(status=304, headers=headers)
    return web.Response(body=served.body, headers={**headers, "Content-Type": content_type})


def respond(docs: Documents, request: web.Request) -> web.Response:
    """Answer a request for ``/openapi/v2``, ``/openapi/v3`` or ``/openapi/v3/<document>``."""
    path = request.path
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, text="405 method not allowed\n")
    accept = request.headers.get("Accept", "")
    if path == "/openapi/v2":
        chosen = negotiate(accept, _V2_OFFERS)
        if chosen is None:
            return web.Response(status=406, headers={"Vary": "Accept"})
        if chosen == 0:
            return _answer(request, docs.v2(), JSON_TYPE)
        return _answer(request, docs.v2_protobuf(), V2_PROTOBUF_TYPE)
    if path == "/openapi/v3":
        index = docs.v3_index()
        return web.Response(body=index.body, content_type=JSON_TYPE, headers={"Cache-Control": _NO_CACHE})
    found = docs.v3(path.removeprefix("/openapi/v3/")) if path.startswith("/openapi/v3/") else None
    if found is None:
        return web.Response(status=404, text="404 page not found\n")  # kube-apiserver's mux says so
    # JSON only: the v3 protobuf form is not served (kubectl asks for JSON)
    if negotiate(accept, [("application", "json")]) is None:
        return web.Response(status=406, headers={"Vary": "Accept"})
    wanted = request.query.get("hash")
    if wanted and wanted != found.etag:
        # a hash from an older index (the CRDs changed since): where the document is now
        raise web.HTTPMovedPermanently(f"{path}?hash={found.etag}")
    if not wanted:
        return _answer(request, found, JSON_TYPE, {"Cache-Control": _NO_CACHE})
    # a hashed URL names one version of the document for good: clients may keep it
    expires = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime(time.time() + 365 * 86400))
    return _answer(request, found, JSON_TYPE, {"Cache-Control": "public, immutable", "Expires": expires})
