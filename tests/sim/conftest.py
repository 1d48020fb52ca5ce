"""Shared helpers for the API emulator's conformance suite: every test talks raw HTTP to a live emulator."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
import orjson
import pytest

from simcluster.server import RunningApiServer
from tests.helpers import eventually  # noqa: F401

Obj = dict[str, Any]

BOOKMARK_INTERVAL = 0.2  # the root conftest's default; watch tests wait for multiples of it
DEADLINE = 5.0  # seconds any single awaited event may take before a test fails

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"

GROUP = "example.com"
WIDGETS = f"/apis/{GROUP}/v1/namespaces/{{ns}}/widgets"
BW = "/apis/korifi.cloudfoundry.org/v1alpha1/namespaces/{ns}/buildworkloads"
CM = "/api/v1/namespaces/{ns}/configmaps"


def path(template: str, ns: str = "default", name: str | None = None, sub: str | None = None) -> str:
    out = template.format(ns=ns)
    if name:
        out += f"/{name}"
        if sub:
            out += f"/{sub}"
    return out


@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def rv(self) -> str:
        return str(self.body["metadata"]["resourceVersion"])


class Kube:
    """A deliberately thin raw-HTTP client: each call is one request, answered as status and JSON body."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Reply:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        hdrs = {"Content-Type": content_type, **(headers or {})} if data is not None else dict(headers or {})
        with anyio.fail_after(DEADLINE):
            async with self.session.request(method, url, data=data, params=params, headers=hdrs) as resp:
                text = await resp.read()
                try:
                    parsed: Any = orjson.loads(text) if text else None
                except orjson.JSONDecodeError:
                    parsed = text.decode()
                return Reply(resp.status, parsed, dict(resp.headers))

    async def get(self, url: str, **params: str) -> Reply:
        return await self.request("GET", url, params=params or None)

    async def post(self, url: str, body: Any, **params: str) -> Reply:
        return await self.request("POST", url, body, params=params or None)

    async def put(self, url: str, body: Any) -> Reply:
        return await self.request("PUT", url, body)

    async def patch(self, url: str, body: Any, content_type: str = MERGE) -> Reply:
        return await self.request("PATCH", url, body, content_type=content_type)

    async def delete(self, url: str, body: Any = None, **params: str) -> Reply:
        return await self.request("DELETE", url, body, params=params or None)

    async def create(self, template: str, body: Obj, ns: str = "default") -> Obj:
        reply = await self.post(path(template, ns), body)
        assert reply.status == 201, reply.body
        out: Obj = reply.body
        return out

    async def must_get(self, template: str, name: str, ns: str = "default") -> Obj:
        reply = await self.get(path(template, ns, name))
        assert reply.status == 200, reply.body
        out: Obj = reply.body
        return out

    async def gone(self, template: str, name: str, ns: str = "default") -> bool:
        reply = await self.get(path(template, ns, name))
        assert reply.status in (200, 404), reply.body
        return reply.status == 404


def assert_status(reply: Reply, code: int, reason: str, message: str | None = None) -> Obj:
    """The reply is a failure ``Status`` with this code and reason (and, if given, exactly this message)."""
    assert reply.status == code, (reply.status, reply.body)
    body = reply.body
    assert isinstance(body, dict), body
    assert body["kind"] == "Status" and body["apiVersion"] == "v1", body
    assert body["status"] == "Failure", body
    assert body["code"] == code, body
    assert body.get("reason", "") == reason, body
    if message is not None:
        assert body["message"] == message, body
    return body


def configmap(name: str, labels: Mapping[str, str] | None = None, **extra: Any) -> Obj:
    meta: Obj = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    meta.update(extra.pop("metadata", {}))
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": extra.pop("data", {"k": "v"})}


def owner_ref(obj: Obj, **extra: Any) -> Obj:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        **extra,
    }


def dead_ref(name: str = "ghost") -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": str(uuid.uuid4())}


def widget(name: str, version: str = "v1", labels: Mapping[str, str] | None = None, **spec: Any) -> Obj:
    meta: Obj = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {
        "apiVersion": f"{GROUP}/{version}",
        "kind": "Widget",
        "metadata": meta,
        "spec": {"size": 1, "color": "red", **spec},
    }


def build_workload(name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": "korifi.cloudfoundry.org/v1alpha1",
        "kind": "BuildWorkload",
        "metadata": {"name": name},
        "spec": {"buildRef": {"name": f"{name}-build"}, "builderName": "kpack-image-builder", **spec},
    }


def widget_schema() -> Obj:
    return {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "integer"},
                    "color": {"type": "string", "enum": ["red", "green", "blue"]},
                    "tags": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
                        },
                    },
                    "limits": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {"max": {"type": "integer"}},
                        },
                    },
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "enabled": {"type": "boolean"},
                },
            },
            "status": {
                "type": "object",
                "properties": {
                    "phase": {"type": "string"},
                    "observedGeneration": {"type": "integer"},
                },
            },
        },
    }


def widget_crd(
    *,
    scope: str = "Namespaced",
    plural: str = "widgets",
    kind: str = "Widget",
    status: bool = True,
    extra_versions: tuple[str, ...] = ("v2",),
) -> Obj:
    def version(name: str, storage: bool) -> Obj:
        v: Obj = {
            "name": name,
            "served": True,
            "storage": storage,
            "schema": {"openAPIV3Schema": widget_schema()},
        }
        if status:
            v["subresources"] = {"status": {}}
        return v

    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
                "shortNames": [kind.lower()[:3]],
            },
            "versions": [version("v1", True), *(version(v, False) for v in extra_versions)],
        },
    }


CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


async def install_crd(kube: Kube, crd: Obj) -> Obj:
    reply = await kube.post(CRDS, crd)
    assert reply.status == 201, reply.body
    out: Obj = reply.body
    return out


class WatchReader:
    """Reads a watch stream line by line; every read has a deadline."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.seen: list[Obj] = []

    async def next(self, within: float = DEADLINE) -> Obj | None:
        """The next event, or None once the server ended the stream."""
        with anyio.fail_after(within):
            line = await self.resp.content.readline()
        if not line:
            return None
        event: Obj = orjson.loads(line)
        self.seen.append(event)
        return event

    async def event(self, within: float = DEADLINE, *, skip_bookmarks: bool = True) -> Obj:
        while True:
            ev = await self.next(within)
            assert ev is not None, f"watch ended; events so far: {self.seen}"
            if skip_bookmarks and ev["type"] == "BOOKMARK":
                continue
            return ev

    async def expect(self, event_type: str, name: str, within: float = DEADLINE) -> Obj:
        ev = await self.event(within)
        assert (ev["type"], ev["object"]["metadata"].get("name")) == (event_type, name), ev
        obj: Obj = ev["object"]
        return obj

    async def until(
        self, predicate: Callable[[Obj], bool], within: float = DEADLINE, *, skip_bookmarks: bool = True
    ) -> list[Obj]:
        """Every event up to and including the first that satisfies ``predicate``."""
        out = []
        with anyio.fail_after(within):
            while True:
                ev = await self.event(within, skip_bookmarks=skip_bookmarks)
                out.append(ev)
                if predicate(ev):
                    return out

    async def expect_end(self, within: float = DEADLINE) -> list[Obj]:
        """Read until the server closes the stream; return what arrived on the way."""
        out = []
        with anyio.fail_after(within):
            while (ev := await self.next(within)) is not None:
                out.append(ev)
        return out


@asynccontextmanager
async def watching(session: aiohttp.ClientSession, url: str, **params: str) -> AsyncIterator[WatchReader]:
    query = {"watch": "true", **params}
    with anyio.fail_after(DEADLINE):
        resp = await session.get(url, params=query, timeout=aiohttp.ClientTimeout(total=None))
    try:
        assert resp.status == 200, await resp.text()
        yield WatchReader(resp)
    finally:
        resp.close()


@pytest.fixture
async def session(api: RunningApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=api.url) as s:
        yield s


@pytest.fixture
def kube(session: aiohttp.ClientSession) -> Kube:
    return Kube(session)


@pytest.fixture
async def widgets(kube: Kube) -> Obj:
    """The example.com Widget CRD (namespaced; v1 storage, v2 served; status subresource), installed."""
    return await install_crd(kube, widget_crd())
