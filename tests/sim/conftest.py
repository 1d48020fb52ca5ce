"""The conformance suite's harness: each test talks raw HTTP to a live API server and, unless it needs the
emulator itself, runs twice — against the emulator and against the real kube-apiserver — so that the
emulator's semantics (docs/emulator.md) are checked against the real thing, not against our reading of it.

- ``server`` is parametrized: ``emulator`` (a fresh emulator per test, the root conftest's ``api``) and
  ``kube-apiserver`` (the session's ``real_control_plane``, with kpack's and the project's CRDs). Tests
  marked ``emulator`` (fault injection, compaction, the emulator's own state) get only the first.
- The real server is shared by the whole session, so every test works in a namespace of its own
  (``kube.ns``, fresh on both servers; ``kube.namespace()`` makes more), installs its own CRDs in a group of
  its own (``kube.group``), and what it creates at cluster scope is deleted after it (``Kube.cleanup``).
  Namespaces go asynchronously (kube-controller-manager empties them), so cluster-wide lists and watches
  keep to the test's own namespaces (``kube.mine``, ``WatchReader``).
- The Widget CRD (``widgets``, group ``example.com``) is installed per test on the emulator and once per
  session on the real server (a CRD costs kube-apiserver a discovery and OpenAPI rebuild).
- kube-controller-manager puts a ``kube-root-ca.crt`` ConfigMap in every new namespace (the emulator does
  not: docs/emulator.md); the namespace fixture waits for it, so it is there before the test begins, and
  lists and watches leave it out (``NOISE``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
import orjson
import pytest

from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from simcluster.crds import bundled_crd_dirs, read_documents
from simcluster.server import RunningApiServer
from tests.controlplane.build import binaries
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.helpers import eventually

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
NAMESPACES = "/api/v1/namespaces"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"

EMULATOR, REAL = "emulator", "kube-apiserver"
# What kube-controller-manager puts in every namespace (its root CA publisher); the emulator does not.
NOISE = frozenset({"kube-root-ca.crt"})


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
    """A deliberately thin raw-HTTP client: each call is one request, answered as status and JSON body.

    It knows the test's namespace (``ns``, the default of every helper), the namespaces it made, and the
    cluster-scoped objects it created, which ``cleanup`` deletes."""

    def __init__(self, session: aiohttp.ClientSession, server: str = EMULATOR, ns: str = "default") -> None:
        self.session = session
        self.server = server
        self.ns = ns
        self.group = f"{ns}.{GROUP}"  # for the test's own CRDs: cluster-scoped names no other test uses
        self.namespaces = {ns}
        self._created: list[str] = []  # cluster-scoped objects this test created, by URL

    @property
    def real(self) -> bool:
        return self.server == REAL

    def path(
        self, template: str, ns: str | None = None, name: str | None = None, sub: str | None = None
    ) -> str:
        return path(template, ns or self.ns, name, sub)

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
                reply = Reply(resp.status, parsed, dict(resp.headers))
        if method == "POST" and reply.status == 201 and isinstance(parsed, dict):
            meta = parsed.get("metadata") or {}
            if "namespace" not in meta and meta.get("resourceVersion") and meta.get("name"):
                self._created.append(f"{url}/{meta['name']}")
        return reply

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

    async def create(self, template: str, body: Obj, ns: str | None = None) -> Obj:
        reply = await self.post(self.path(template, ns), body)
        assert reply.status == 201, reply.body
        out: Obj = reply.body
        return out

    async def must_get(self, template: str, name: str, ns: str | None = None) -> Obj:
        reply = await self.get(self.path(template, ns, name))
        assert reply.status == 200, reply.body
        out: Obj = reply.body
        return out

    async def gone(self, template: str, name: str, ns: str | None = None) -> bool:
        reply = await self.get(self.path(template, ns, name))
        assert reply.status in (200, 404), reply.body
        return reply.status == 404

    async def namespace(self, suffix: str) -> str:
        """A new namespace of this test's (``<ns>-<suffix>``), ready: on the real server, once
        kube-controller-manager has put its ``kube-root-ca.crt`` in it."""
        name = f"{self.ns}-{suffix}" if suffix else self.ns
        reply = await self.post(NAMESPACES, {"metadata": {"name": name}})
        assert reply.status == 201, reply.body
        self.namespaces.add(name)
        if self.real:
            await eventually(
                lambda: self.get(path(CM, name, "kube-root-ca.crt")),
                DEADLINE,
                f"kube-root-ca.crt in {name}",
                until=lambda r: r.status == 200,
            )
        return name

    def mine(self, items: Iterable[Obj]) -> list[Obj]:
        """The items of a list that are this test's (in its namespaces; cluster-scoped, named after its
        namespace), without ``NOISE``."""

        def ours(meta: Obj) -> bool:
            if "namespace" in meta:
                return meta["namespace"] in self.namespaces
            return self.ns in meta["name"]  # every cluster-scoped name a test makes has its namespace in it

        return [o for o in items if o["metadata"]["name"] not in NOISE and ours(o["metadata"])]

    def names(self, listing: Obj) -> list[str]:
        return [o["metadata"]["name"] for o in self.mine(listing["items"])]

    @asynccontextmanager
    async def watching(self, url: str, **params: str) -> AsyncIterator[WatchReader]:
        """A watch of ``url``; its reader skips events of other tests' namespaces and of ``NOISE``."""
        async with watching(self.session, url, **params) as w:
            w.keep = self._mine_event
            yield w

    def _mine_event(self, event: Obj) -> bool:
        obj = event.get("object") or {}
        if event.get("type") in ("BOOKMARK", "ERROR") or obj.get("kind") in ("Status", "Table"):
            return True
        return bool(self.mine([obj]))

    async def cleanup(self) -> None:
        """Delete what the test created at cluster scope (its namespaces too), newest first; deletion is
        asynchronous where finalizers or kube-controller-manager have work to do."""
        for url in reversed(self._created):
            with anyio.fail_after(DEADLINE):
                async with self.session.delete(url) as resp:
                    assert resp.status in (200, 202, 404), (url, resp.status, await resp.text())


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


def assert_page_not_found(reply: Reply) -> None:
    """The reply is kube-apiserver's last resort: a plain-text 404, for paths no API handler serves."""
    assert (reply.status, reply.body) == (404, "404 page not found\n"), (reply.status, reply.body)
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8", reply.headers


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


def widget(
    name: str,
    version: str = "v1",
    labels: Mapping[str, str] | None = None,
    *,
    group: str = GROUP,
    **spec: Any,
) -> Obj:
    meta: Obj = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {
        "apiVersion": f"{group}/{version}",
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
    group: str = GROUP,
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
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
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


def established(crd: Obj) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or ()
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


async def install_crd(kube: Kube, crd: Obj) -> Obj:
    """Create a CRD and wait, as a client must, until it is Established and its kind is served; returns
    the CRD as it is then."""
    reply = await kube.post(CRDS, crd)
    assert reply.status == 201, reply.body
    name = crd["metadata"]["name"]
    spec = crd["spec"]
    storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
    collection = f"/apis/{spec['group']}/{storage}/{spec['names']['plural']}"
    out: Obj = (
        await eventually(
            lambda: kube.get(f"{CRDS}/{name}"),
            DEADLINE,
            f"CRD {name} Established",
            until=lambda r: established(r.body),
        )
    ).body
    await eventually(
        lambda: kube.get(collection), DEADLINE, f"{collection} served", until=lambda r: r.status == 200
    )
    return out


class WatchReader:
    """Reads a watch stream line by line; every read has a deadline. Events ``keep`` refuses (other
    tests' objects on the shared real server) are read and dropped."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.seen: list[Obj] = []
        self.keep: Callable[[Obj], bool] = lambda _: True

    async def next(self, within: float = DEADLINE) -> Obj | None:
        """The next event, or None once the server ended the stream."""
        with anyio.fail_after(within):
            while True:
                line = await self.resp.content.readline()
                if not line:
                    return None
                event: Obj = orjson.loads(line)
                if self.keep(event):
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

    async def expect_end(self, within: float = DEADLINE, *, skip_bookmarks: bool = False) -> list[Obj]:
        """Read until the server closes the stream; return what arrived on the way."""
        out = []
        with anyio.fail_after(within):
            while (ev := await self.next(within)) is not None:
                if not (skip_bookmarks and ev["type"] == "BOOKMARK"):
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


# ---------------------------------------------------------------------------------------------- fixtures
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" not in metafunc.fixturenames:
        return
    real = pytest.param(
        REAL,
        # The first test to ask pays for the session's control plane: a build when nothing is cached (8
        # minutes measured on two cores), else a start of seconds.
        marks=pytest.mark.timeout(3600 if binaries().missing() else 120),
    )
    servers = [EMULATOR] if metafunc.definition.get_closest_marker("emulator") else [EMULATOR, real]
    metafunc.parametrize("server", servers, indirect=True)


@dataclass
class RealServer:
    """The session's kube-apiserver, as this suite uses it: one HTTP session (TLS, the admin's
    certificate) for every test, kpack's and the project's CRDs and the Widget CRD installed."""

    session: aiohttp.ClientSession
    widgets: Obj


@pytest.fixture(scope="session")
async def real_server(real_control_plane: ControlPlane) -> AsyncIterator[RealServer]:
    config = await load_kubeconfig(str(real_control_plane.kubeconfig))
    async with KubeClient(config) as client:
        await apply_crds(client, [*read_documents(bundled_crd_dirs()), widget_crd()])
    connector = aiohttp.TCPConnector(ssl=config.ssl)
    async with aiohttp.ClientSession(base_url=config.host, connector=connector, trust_env=False) as session:
        kube = Kube(session, REAL)
        yield RealServer(session, await kube.must_get(CRDS, f"widgets.{GROUP}"))
        await kube.delete(f"{CRDS}/widgets.{GROUP}")
    await anyio.sleep(0.25)  # TLS connections finish closing (aiohttp#1925, as in KubeClient)


@dataclass
class Server:
    """The server one run of a test talks to: the emulator (``api``) or the real one (``real``)."""

    name: str
    api: RunningApiServer | None = None
    real: RealServer | None = None


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Server:
    # Synchronous, so that it may ask for the (async) server fixtures by name: only the one it needs.
    if request.param == REAL:
        return Server(REAL, real=request.getfixturevalue("real_server"))
    return Server(EMULATOR, api=request.getfixturevalue("api"))


@pytest.fixture
async def session(server: Server) -> AsyncIterator[aiohttp.ClientSession]:
    if server.real is not None:
        yield server.real.session  # the session's own, closed at its end
        return
    assert server.api is not None
    async with aiohttp.ClientSession(base_url=server.api.url) as s:
        yield s


@pytest.fixture
async def kube(server: Server, session: aiohttp.ClientSession) -> AsyncIterator[Kube]:
    """A client in a fresh namespace of the test's own; what it created at cluster scope goes after."""
    kube = Kube(session, server.name, f"sim-{uuid.uuid4().hex[:8]}")
    await kube.namespace("")
    try:
        yield kube
    finally:
        await kube.cleanup()


@pytest.fixture
async def widgets(server: Server, kube: Kube) -> Obj:
    """The example.com Widget CRD (namespaced; v1 storage, v2 served; status subresource), installed."""
    if server.real is not None:
        return server.real.widgets
    return await install_crd(kube, widget_crd())
