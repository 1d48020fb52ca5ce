"""KubeClient over real HTTP: every verb and error mapping against the API emulator, and transport failures
(dropped connections, silence, garbage) against a raw socket server that misbehaves on purpose."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import ClusterConfig, explicit
from service.kube.resources import Resource
from simcluster.faults import FaultRule
from simcluster.server import RunningApiServer, running_apiserver
from tests import helpers
from tests.rawhttp import AnsweringServer, Request, raw_server, read_request, wait_for_eof

pytestmark = pytest.mark.anyio


# The closest to the transports: every test on both loops `run` offers (eventLoop).
anyio_backend = helpers.on_both_event_loops


WIDGET = Resource("example.com", "v1", "widgets", "Widget", True, True, "widget")
WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}
Obj = dict[str, Any]


def cm(name: str, labels: dict[str, str] | None = None, **extra: Any) -> Obj:
    meta: Obj = {"name": name, "namespace": "default"}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, **extra}


def fast_client(url: str, **kwargs: Any) -> KubeClient:
    """The shared test client, but with the client's own throttling: some of these tests check it."""
    return helpers.fast_client(url, throttled=True, **kwargs)


@pytest.fixture
def bookmark_interval() -> float:
    return 0.05


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def client(api: RunningApiServer, registry: CollectorRegistry) -> AsyncIterator[KubeClient]:
    """This suite's client counts its requests in ``registry``."""
    async with fast_client(api.url, registry=registry) as c:
        yield c


@pytest.fixture
async def widget(client: KubeClient) -> Obj:
    await client.create(r.CUSTOM_RESOURCE_DEFINITION, WIDGET_CRD)
    return await client.create(
        WIDGET,
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"a": 1}},
        "default",
    )


def requests_total(registry: CollectorRegistry, api: RunningApiServer, code: str, method: str) -> float:
    labels = {"code": code, "method": method, "host": f"127.0.0.1:{api.port}"}
    return registry.get_sample_value("rest_client_requests_total", labels) or 0.0


def names(items: list[Obj]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


# ---------------------------------------------------------------------- a deliberately bad HTTP server
WATCH_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def event(event_type: str, name: str) -> bytes:
    return orjson.dumps({"type": event_type, "object": cm(name)}) + b"\n"


# ---------------------------------------------------------------------- reads and writes
async def test_create_get_update_delete(client: KubeClient) -> None:
    created = await client.create(r.CONFIG_MAP, cm("a", data={"k": "v"}))
    assert created["metadata"]["namespace"] == "default"
    assert created["metadata"]["resourceVersion"]
    got = await client.get(r.CONFIG_MAP, "a", "default")
    assert got == created
    got["data"]["k"] = "w"
    updated = await client.update(r.CONFIG_MAP, got)
    assert updated["data"] == {"k": "w"}
    assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    with pytest.raises(errors.Conflict) as stale:
        await client.update(r.CONFIG_MAP, got)  # still carries the old resourceVersion
    assert (stale.value.code, stale.value.reason) == (409, "Conflict")
    status = await client.delete(r.CONFIG_MAP, "a", "default")
    assert status["kind"] == "Status" and status["status"] == "Success"
    with pytest.raises(errors.NotFound) as missing:
        await client.get(r.CONFIG_MAP, "a", "default")
    assert missing.value.code == 404 and '"a" not found' in missing.value.message


async def test_create_takes_the_namespace_argument(client: KubeClient) -> None:
    created = await client.create(r.CONFIG_MAP, {"metadata": {"name": "b"}}, "default")
    assert created["metadata"]["namespace"] == "default"


async def test_create_errors(client: KubeClient) -> None:
    await client.create(r.CONFIG_MAP, cm("dup"))
    with pytest.raises(errors.AlreadyExists) as dup:
        await client.create(r.CONFIG_MAP, cm("dup"))
    assert (dup.value.code, dup.value.reason) == (409, "AlreadyExists")
    with pytest.raises(errors.Invalid) as invalid:
        await client.create(r.CONFIG_MAP, cm("Not_A_Name"))
    assert invalid.value.code == 422 and "metadata.name" in invalid.value.message
    with pytest.raises(errors.NotFound):
        await client.create(r.CONFIG_MAP, {"metadata": {"name": "x", "namespace": "no-such-namespace"}})


async def test_cluster_scoped_kinds_ignore_the_namespace(client: KubeClient) -> None:
    await client.create(r.NAMESPACE, {"metadata": {"name": "team"}}, "ignored")
    assert (await client.get(r.NAMESPACE, "team", "ignored"))["metadata"]["name"] == "team"
    assert "team" in names((await client.list(r.NAMESPACE, "ignored"))["items"])


async def test_namespaced_kinds_require_a_namespace(
    client: KubeClient, api: RunningApiServer, registry: CollectorRegistry
) -> None:
    with pytest.raises(ValueError, match="namespaced"):
        await client.get(r.CONFIG_MAP, "a")
    with pytest.raises(ValueError, match="namespaced"):
        await client.create(r.CONFIG_MAP, {"metadata": {"name": "a"}})
    with pytest.raises(ValueError, match=r"metadata\.name"):
        await client.update(r.CONFIG_MAP, {"metadata": {"namespace": "default"}})
    assert requests_total(registry, api, "200", "GET") == 0


async def test_status_subresource(client: KubeClient, widget: Obj) -> None:
    patched = await client.patch_status(WIDGET, "w", {"status": {"phase": "Ready"}}, "default")
    assert patched["status"] == {"phase": "Ready"}
    assert (await client.get_status(WIDGET, "w", "default"))["status"] == {"phase": "Ready"}
    # PUT on /status changes only the status, PUT on the object only the rest: proof of the two paths.
    current = await client.get(WIDGET, "w", "default")
    current["status"] = {"phase": "Done"}
    current["spec"] = {"a": 99}
    after_status = await client.update_status(WIDGET, current)
    assert (after_status["spec"], after_status["status"]) == ({"a": 1}, {"phase": "Done"})
    after_status["status"] = {"phase": "Lost"}
    after_status["spec"] = {"a": 2}
    after_main = await client.update(WIDGET, after_status)
    assert (after_main["spec"], after_main["status"]) == ({"a": 2}, {"phase": "Done"})


async def test_merge_patch(client: KubeClient, widget: Obj) -> None:
    patched = await client.merge_patch(WIDGET, "w", {"spec": {"a": None, "b": [1, 2]}}, "default")
    assert patched["spec"] == {"b": [1, 2]}
    status = await client.merge_patch(WIDGET, "w", {"status": {"x": 1}}, "default", subresource="status")
    assert status["status"] == {"x": 1}
    stale = {"metadata": {"resourceVersion": widget["metadata"]["resourceVersion"]}, "spec": {"c": 3}}
    with pytest.raises(errors.Conflict):
        await client.merge_patch(WIDGET, "w", stale, "default")


async def test_json_patch(client: KubeClient, widget: Obj) -> None:
    ops = [{"op": "test", "path": "/spec/a", "value": 1}, {"op": "add", "path": "/spec/list", "value": ["x"]}]
    patched = await client.json_patch(WIDGET, "w", ops, "default")
    assert patched["spec"] == {"a": 1, "list": ["x"]}
    with pytest.raises(errors.Invalid):
        await client.json_patch(WIDGET, "w", [{"op": "test", "path": "/spec/a", "value": 2}], "default")
    status = await client.json_patch(
        WIDGET, "w", [{"op": "add", "path": "/status", "value": {"y": 2}}], "default", subresource="status"
    )
    assert status["status"] == {"y": 2}


async def test_writes_without_an_answer_land_and_still_raise(client: KubeClient, widget: Obj) -> None:
    assert await client.create(r.CONFIG_MAP, cm("quiet"), answer=False) == {}
    assert await client.merge_patch(WIDGET, "w", {"spec": {"b": 2}}, "default", answer=False) == {}
    ops = [{"op": "add", "path": "/spec/c", "value": 3}]
    assert await client.json_patch(WIDGET, "w", ops, "default", answer=False) == {}
    assert await client.patch_status(WIDGET, "w", {"status": {"x": 1}}, "default", answer=False) == {}
    written = await client.get(WIDGET, "w", "default")
    assert (written["spec"], written["status"]) == ({"a": 1, "b": 2, "c": 3}, {"x": 1})
    assert (await client.get(r.CONFIG_MAP, "quiet", "default"))["metadata"]["name"] == "quiet"
    with pytest.raises(errors.AlreadyExists):
        await client.create(r.CONFIG_MAP, cm("quiet"), answer=False)
    with pytest.raises(errors.Invalid):
        await client.json_patch(
            WIDGET, "w", [{"op": "test", "path": "/spec/a", "value": 2}], "default", answer=False
        )


async def test_delete_options(client: KubeClient) -> None:
    held = {"metadata": {"name": "f", "namespace": "default", "finalizers": ["example.com/hold"]}}
    created = await client.create(r.CONFIG_MAP, held)
    with pytest.raises(errors.Conflict, match="UID in the precondition"):
        await client.delete(r.CONFIG_MAP, "f", "default", preconditions={"uid": "not-the-uid"})
    with pytest.raises(errors.Conflict):
        await client.delete(r.CONFIG_MAP, "f", "default", preconditions={"resourceVersion": "1"})
    # kube-apiserver validates DeleteOptions from the body: proof that the options were sent there.
    with pytest.raises(errors.Invalid, match="propagationPolicy"):
        await client.delete(r.CONFIG_MAP, "f", "default", propagation_policy="Sideways")
    pending = await client.delete(
        r.CONFIG_MAP,
        "f",
        "default",
        preconditions={"uid": created["metadata"]["uid"]},
        propagation_policy="Foreground",
        grace_period_seconds=0,
    )
    # A finalizer keeps the object: the answer is the object, now marked for deletion.
    assert pending["metadata"]["deletionTimestamp"]
    with pytest.raises(errors.NotFound):
        await client.delete(r.CONFIG_MAP, "never-existed", "default")


async def test_delete_collection(client: KubeClient) -> None:
    for i in range(3):
        await client.create(r.CONFIG_MAP, cm(f"x{i}", {"app": "x"}))
    for i in range(2):
        await client.create(r.CONFIG_MAP, cm(f"y{i}", {"app": "y"}))
    with pytest.raises(errors.Invalid, match="propagationPolicy"):
        await client.delete_collection(
            r.CONFIG_MAP, "default", label_selector="app=x", propagation_policy="No"
        )
    result = await client.delete_collection(
        r.CONFIG_MAP, "default", label_selector="app=x", propagation_policy="Background"
    )
    assert result["kind"] in ("ConfigMapList", "Status")
    assert names((await client.list(r.CONFIG_MAP, "default"))["items"]) == ["y0", "y1"]


# ---------------------------------------------------------------------- lists
async def test_list_selectors_and_pages(client: KubeClient, api: RunningApiServer) -> None:
    for i in range(5):
        await client.create(r.CONFIG_MAP, cm(f"cm-{i}", {"tier": "a" if i % 2 else "b"}))
    everything = await client.list(r.CONFIG_MAP, "default")
    assert everything["kind"] == "ConfigMapList"
    assert everything["metadata"]["resourceVersion"] == str(api.cluster.rv)
    assert names((await client.list(r.CONFIG_MAP, "default", label_selector="tier in (a)"))["items"]) == [
        "cm-1",
        "cm-3",
    ]
    assert names((await client.list(r.CONFIG_MAP, field_selector="metadata.name=cm-4"))["items"]) == ["cm-4"]
    first = await client.list(r.CONFIG_MAP, "default", limit=2)
    assert names(first["items"]) == ["cm-0", "cm-1"]
    second = await client.list(r.CONFIG_MAP, "default", limit=2, continue_=first["metadata"]["continue"])
    assert names(second["items"]) == ["cm-2", "cm-3"]
    with pytest.raises(errors.BadRequest):
        await client.list(r.CONFIG_MAP, "default", label_selector="tier in (")


async def test_list_all_follows_continue(
    client: KubeClient, api: RunningApiServer, registry: CollectorRegistry
) -> None:
    for i in range(7):
        await client.create(r.CONFIG_MAP, cm(f"cm-{i}", {"n": str(i % 2)}))
    items, rv = await client.list_all(r.CONFIG_MAP, "default", page_size=2)
    assert names(items) == [f"cm-{i}" for i in range(7)]
    assert rv == str(api.cluster.rv)
    assert requests_total(registry, api, "200", "GET") == 4
    odd, _ = await client.list_all(r.CONFIG_MAP, "default", label_selector="n=1", page_size=2)
    assert names(odd) == ["cm-1", "cm-3", "cm-5"]


async def test_list_all_relists_in_full_when_the_continue_token_expires(
    client: KubeClient, api: RunningApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        await client.create(r.CONFIG_MAP, cm(f"cm-{i}"))
    calls: list[tuple[int | None, bool]] = []
    real_list = client.list

    async def list_then_compact(*args: Any, **kwargs: Any) -> Obj:
        calls.append((kwargs.get("limit"), bool(kwargs.get("continue_"))))
        page = await real_list(*args, **kwargs)
        if len(calls) == 1:
            # Between two pages the server compacts its history and someone creates an object.
            api.cluster.compact()
            await real_list.__self__.create(r.CONFIG_MAP, cm("late"))
        return page

    monkeypatch.setattr(client, "list", list_then_compact)
    items, rv = await client.list_all(r.CONFIG_MAP, "default", page_size=2)
    assert calls == [(2, False), (2, True), (None, False)]
    assert names(items) == ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4", "late"]
    assert rv == str(api.cluster.rv)


async def test_list_all_raises_expired_on_the_first_page(client: KubeClient, api: RunningApiServer) -> None:
    api.faults.add(FaultRule(method="GET", path="/configmaps$", status=410, count=1))
    with pytest.raises(errors.Expired):
        await client.list_all(r.CONFIG_MAP, "default")


# ---------------------------------------------------------------------- watches
async def collect(
    stream: AsyncIterator[tuple[str, Obj]], n: int, *, skip_bookmarks: bool = True
) -> list[Any]:
    out: list[Any] = []
    with anyio.fail_after(5):
        async for event_type, obj in stream:
            if skip_bookmarks and event_type == "BOOKMARK":
                continue
            out.append((event_type, obj["metadata"]["name"]))
            if len(out) == n:
                break
    return out


async def test_watch_events_from_a_resource_version(client: KubeClient) -> None:
    a = await client.create(r.CONFIG_MAP, cm("a"))
    async with client.watch(
        r.CONFIG_MAP, "default", resource_version=a["metadata"]["resourceVersion"]
    ) as stream:
        await client.create(r.CONFIG_MAP, cm("b"))
        await client.merge_patch(r.CONFIG_MAP, "a", {"data": {"k": "v"}}, "default")
        await client.delete(r.CONFIG_MAP, "b", "default")
        events = await collect(stream, 3)
    assert events == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]


async def test_watch_without_resource_version_starts_with_the_current_state(client: KubeClient) -> None:
    await client.create(r.CONFIG_MAP, cm("a", {"keep": "yes"}))
    await client.create(r.CONFIG_MAP, cm("b", {"keep": "no"}))
    async with client.watch(r.CONFIG_MAP, "default", label_selector="keep=yes") as stream:
        await client.create(r.CONFIG_MAP, cm("c", {"keep": "yes"}))
        events = await collect(stream, 2)
    assert events == [("ADDED", "a"), ("ADDED", "c")]


async def test_watch_bookmarks(client: KubeClient, api: RunningApiServer) -> None:
    created = await client.create(r.CONFIG_MAP, cm("a"))
    rv = created["metadata"]["resourceVersion"]
    async with client.watch(r.CONFIG_MAP, "default", resource_version=rv, allow_bookmarks=True) as stream:
        with anyio.fail_after(5):
            event_type, obj = await stream.__anext__()
    assert event_type == "BOOKMARK"
    assert obj["metadata"]["resourceVersion"] == str(api.cluster.rv)


async def test_watch_without_bookmarks_ends_at_the_server_timeout(client: KubeClient) -> None:
    created = await client.create(r.CONFIG_MAP, cm("a"))
    rv = created["metadata"]["resourceVersion"]
    with anyio.fail_after(10):
        async with client.watch(
            r.CONFIG_MAP, "default", resource_version=rv, allow_bookmarks=False, timeout_seconds=1
        ) as stream:
            events = [e async for e in stream]
    assert events == []


async def test_watch_ends_cleanly_when_the_server_closes_it(
    client: KubeClient, api: RunningApiServer
) -> None:
    async with client.watch(r.CONFIG_MAP, "default", allow_bookmarks=False) as stream:
        assert api.cluster.drop_watches() == 1
        with anyio.fail_after(5):
            events = [e async for e in stream]
    assert events == []


async def test_watch_from_a_compacted_resource_version_raises_expired(
    client: KubeClient, api: RunningApiServer
) -> None:
    old = (await client.create(r.CONFIG_MAP, cm("a")))["metadata"]["resourceVersion"]
    await client.create(r.CONFIG_MAP, cm("b"))
    api.cluster.compact()
    async with client.watch(r.CONFIG_MAP, "default", resource_version=old) as stream:
        with pytest.raises(errors.Expired) as expired, anyio.fail_after(5):
            await stream.__anext__()
    assert expired.value.code == 410 and "too old resource version" in expired.value.message


async def test_watch_open_errors(client: KubeClient, api: RunningApiServer) -> None:
    with pytest.raises(errors.NotFound):
        async with client.watch(WIDGET, "default"):
            pytest.fail("a watch on an unknown resource must not open")
    api.faults.add(FaultRule(method="GET", path="/configmaps$", status=403, count=1))
    with pytest.raises(errors.Forbidden):
        async with client.watch(r.CONFIG_MAP, "default"):
            pytest.fail("a forbidden watch must not open")


async def test_watch_throttled_open_is_retried(client: KubeClient, api: RunningApiServer) -> None:
    rule = api.faults.add(FaultRule(method="GET", path="/configmaps$", status=429, retry_after=1, count=2))
    async with client.watch(r.CONFIG_MAP, "default") as stream:
        await client.create(r.CONFIG_MAP, cm("a"))
        assert await collect(stream, 1) == [("ADDED", "a")]
    assert rule.hits == 2


async def test_watch_carries_events_larger_than_aiohttp_default_buffers(client: KubeClient) -> None:
    big = "x" * (1024 * 1024)
    async with client.watch(r.CONFIG_MAP, "default") as stream:
        await client.create(r.CONFIG_MAP, cm("big", data={"blob": big}))
        with anyio.fail_after(5):
            event_type, obj = await stream.__anext__()
            while event_type == "BOOKMARK":
                event_type, obj = await stream.__anext__()
    assert event_type == "ADDED" and obj["data"]["blob"] == big


async def test_watch_connection_drop_raises_connection_failed() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream, bytearray())
        await stream.send(WATCH_HEAD + chunk(event("ADDED", "a")))
        # Closing without the terminating zero-length chunk: the connection died mid-stream.

    async with (
        raw_server(handler) as url,
        fast_client(url) as client,
        client.watch(r.CONFIG_MAP, "default") as stream,
    ):
        with anyio.fail_after(5):
            assert await stream.__anext__() == ("ADDED", cm("a"))
            with pytest.raises(errors.ConnectionFailed):
                await stream.__anext__()


@pytest.mark.parametrize(
    "line",
    [b"this is not json\n", b'{"type": "ADDED"}\n', b'{"type": "ADDED", "object": "a string"}\n', b"[1]\n"],
)
async def test_watch_malformed_event_raises_connection_failed(line: bytes) -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream, bytearray())
        await stream.send(WATCH_HEAD + chunk(line) + chunk(event("ADDED", "after")))
        await wait_for_eof(stream)

    async with (
        raw_server(handler) as url,
        fast_client(url) as client,
        client.watch(r.CONFIG_MAP, "default") as stream,
    ):
        with pytest.raises(errors.ConnectionFailed, match="malformed"), anyio.fail_after(5):
            await stream.__anext__()


async def test_watch_error_event_of_another_code() -> None:
    status = errors.InternalError("etcd is sad").status()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream, bytearray())
        await stream.send(WATCH_HEAD + chunk(orjson.dumps({"type": "ERROR", "object": status}) + b"\n"))
        await wait_for_eof(stream)

    async with (
        raw_server(handler) as url,
        fast_client(url) as client,
        client.watch(r.CONFIG_MAP, "default") as stream,
    ):
        with pytest.raises(errors.InternalError, match="etcd is sad"), anyio.fail_after(5):
            await stream.__anext__()


async def test_silent_watch_times_out() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream, bytearray())
        await stream.send(WATCH_HEAD)
        await wait_for_eof(stream)

    async with raw_server(handler) as url, fast_client(url, watch_read_margin=0.2) as client:
        started = time.monotonic()
        async with client.watch(r.CONFIG_MAP, "default", timeout_seconds=0) as stream:
            with pytest.raises(errors.RequestTimeout), anyio.fail_after(5):
                await stream.__anext__()
        assert time.monotonic() - started >= 0.15


@pytest.mark.parametrize("how", ["cancel", "break"])
async def test_leaving_a_watch_closes_its_connection(how: str) -> None:
    client_gone = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream, bytearray())
        await stream.send(WATCH_HEAD + chunk(event("ADDED", "a")))
        await wait_for_eof(stream)
        client_gone.set()

    async with raw_server(handler) as url, fast_client(url) as client:
        got_one = anyio.Event()

        async def consume() -> None:
            async with client.watch(r.CONFIG_MAP, "default") as stream:
                async for _ in stream:
                    got_one.set()
                    if how == "break":
                        break

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await got_one.wait()
                if how == "cancel":
                    tg.cancel_scope.cancel()
            # The client session is still open: only closing (not pooling) the connection ends it.
            await client_gone.wait()


# ---------------------------------------------------------------------- the wire format
async def test_wire_format() -> None:
    seen: list[Request] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        buf = bytearray()
        while (request := await read_request(stream, buf)) is not None:
            seen.append(request)
            if "watch=true" in request[1]:
                await stream.send(WATCH_HEAD + b"0\r\n\r\n")
            else:
                await stream.send(OK_EMPTY)

    async with raw_server(handler) as url, fast_client(url, token="tok", user_agent="tests/1.0") as client:
        await client.merge_patch(WIDGET, "w", {"spec": {"a": None}}, "ns1", subresource="status")
        await client.json_patch(WIDGET, "w", [{"op": "remove", "path": "/spec/a"}], "ns1")
        await client.list(
            WIDGET,
            "ns1",
            label_selector="a in (b,c),!d",
            field_selector="metadata.name=w",
            limit=10,
            continue_="tok3n",
            resource_version="5",
            resource_version_match="NotOlderThan",
        )
        async with client.watch(WIDGET, resource_version="7", timeout_seconds=300, label_selector="x=y") as s:
            assert [e async for e in s] == []
        await client.delete(
            WIDGET,
            "w",
            "ns1",
            preconditions={"uid": "u1"},
            propagation_policy="Foreground",
            grace_period_seconds=5,
        )
        await client.delete_collection(WIDGET, "ns1", label_selector="a=b", propagation_policy="Orphan")
        await client.update_status(WIDGET, {"metadata": {"name": "w", "namespace": "ns1"}, "status": {}})

    def split(target: str) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(target)
        return parts.path, parse_qs(parts.query, keep_blank_values=True)

    base = "/apis/example.com/v1"
    for method, target, headers, body in seen:
        assert headers["accept"] == "application/json"
        assert headers["authorization"] == "Bearer tok"
        assert headers["user-agent"] == "tests/1.0"
        assert ("content-type" in headers) == bool(body), (method, target)
    (
        (m1, t1, h1, b1),
        (m2, t2, h2, b2),
        (m3, t3, _, _),
        (m4, t4, _, _),
        (m5, t5, h5, b5),
        (m6, t6, _, b6),
        (
            m7,
            t7,
            h7,
            b7,
        ),
    ) = seen
    assert (m1, t1, h1["content-type"]) == (
        "PATCH",
        f"{base}/namespaces/ns1/widgets/w/status",
        "application/merge-patch+json",
    )
    assert orjson.loads(b1) == {"spec": {"a": None}}
    assert (m2, t2, h2["content-type"]) == (
        "PATCH",
        f"{base}/namespaces/ns1/widgets/w",
        "application/json-patch+json",
    )
    assert orjson.loads(b2) == [{"op": "remove", "path": "/spec/a"}]
    assert m3 == "GET" and split(t3) == (
        f"{base}/namespaces/ns1/widgets",
        {
            "labelSelector": ["a in (b,c),!d"],
            "fieldSelector": ["metadata.name=w"],
            "limit": ["10"],
            "continue": ["tok3n"],
            "resourceVersion": ["5"],
            "resourceVersionMatch": ["NotOlderThan"],
        },
    )
    assert m4 == "GET" and split(t4) == (
        f"{base}/widgets",
        {
            "watch": ["true"],
            "resourceVersion": ["7"],
            "labelSelector": ["x=y"],
            "allowWatchBookmarks": ["true"],
            "timeoutSeconds": ["300"],
        },
    )
    assert (m5, t5, h5["content-type"]) == ("DELETE", f"{base}/namespaces/ns1/widgets/w", "application/json")
    assert orjson.loads(b5) == {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "preconditions": {"uid": "u1"},
        "propagationPolicy": "Foreground",
        "gracePeriodSeconds": 5,
    }
    assert (m6, b6) == ("DELETE", b"")
    assert split(t6) == (
        f"{base}/namespaces/ns1/widgets",
        {"labelSelector": ["a=b"], "propagationPolicy": ["Orphan"]},
    )
    assert (m7, t7, h7["content-type"]) == (
        "PUT",
        f"{base}/namespaces/ns1/widgets/w/status",
        "application/json",
    )
    assert orjson.loads(b7) == {"metadata": {"name": "w", "namespace": "ns1"}, "status": {}}


async def test_a_server_url_with_a_path_prefix_keeps_it() -> None:
    server = AnsweringServer(OK_EMPTY)
    # Rancher and other proxies serve a cluster's API under a path (kubeconfig ``server: https://h/k8s/c1``).
    async with raw_server(server) as url, fast_client(f"{url}/k8s/c1") as client:
        await client.get(r.CONFIG_MAP, "a", "ns1")
        await client.create(r.CONFIG_MAP, cm("b"))
    assert [(m, t) for m, t, _, _ in server.requests] == [
        ("GET", "/k8s/c1/api/v1/namespaces/ns1/configmaps/a"),
        ("POST", "/k8s/c1/api/v1/namespaces/default/configmaps"),
    ]


async def test_a_proxy_from_the_kubeconfig_carries_every_request() -> None:
    proxy = AnsweringServer(OK_EMPTY)
    async with raw_server(proxy) as proxy_url:
        # Nothing listens at the server's address: only the proxy can answer.
        config = ClusterConfig("http://api.invalid:6443", False, proxy=proxy_url)
        async with KubeClient(config, qps=0) as client:
            await client.get(r.CONFIG_MAP, "a", "ns1")
            await client.merge_patch(r.CONFIG_MAP, "a", {"data": {}}, "ns1")
    assert [(m, t, h["host"]) for m, t, h, _ in proxy.requests] == [
        ("GET", "http://api.invalid:6443/api/v1/namespaces/ns1/configmaps/a", "api.invalid:6443"),
        ("PATCH", "http://api.invalid:6443/api/v1/namespaces/ns1/configmaps/a", "api.invalid:6443"),
    ]


async def test_raw_request(client: KubeClient) -> None:
    status, headers, body = await client.request("GET", "/apis")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert orjson.loads(body)["kind"] == "APIGroupList"
    status, headers, body = await client.request("GET", "/api/v1/namespaces/default/configmaps/missing")
    assert status == 404 and orjson.loads(body)["reason"] == "NotFound"
    raw = orjson.dumps(cm("from-bytes"))
    status, _, body = await client.request("POST", "/api/v1/namespaces/default/configmaps", body=raw)
    assert status == 201 and orjson.loads(body)["metadata"]["name"] == "from-bytes"


# ---------------------------------------------------------------------- error mapping
@pytest.mark.parametrize(
    ("status", "reason", "cls"),
    [
        (400, "", errors.BadRequest),
        (401, "", errors.Unauthorized),
        (403, "", errors.Forbidden),
        (404, "", errors.NotFound),
        (405, "MethodNotAllowed", errors.MethodNotAllowed),
        (409, "", errors.Conflict),
        (409, "AlreadyExists", errors.AlreadyExists),
        (410, "", errors.Expired),
        (415, "UnsupportedMediaType", errors.UnsupportedMediaType),
        (422, "", errors.Invalid),
        (500, "", errors.InternalError),
        (503, "", errors.ServiceUnavailable),
        (504, "", errors.ServerTimeout),
    ],
)
async def test_error_mapping(
    client: KubeClient, api: RunningApiServer, status: int, reason: str, cls: type[errors.ApiError]
) -> None:
    rule = api.faults.add(
        FaultRule(method="GET", path="/configmaps/x$", status=status, reason=reason, count=1)
    )
    with pytest.raises(errors.ApiError) as info:
        await client.get(r.CONFIG_MAP, "x", "default")
    assert type(info.value) is cls
    assert info.value.code == status and info.value.message == "injected fault"
    assert rule.hits == 1  # none of these is retried


async def test_unauthorized_without_the_right_token() -> None:
    async with running_apiserver(token="right") as api:
        async with fast_client(api.url, token="wrong") as wrong:
            with pytest.raises(errors.Unauthorized):
                await wrong.list(r.NAMESPACE)
        async with fast_client(api.url, token="right") as right:
            assert (await right.list(r.NAMESPACE))["kind"] == "NamespaceList"


# ---------------------------------------------------------------------- retries
async def test_throttled_writes_are_retried(
    client: KubeClient, api: RunningApiServer, registry: CollectorRegistry
) -> None:
    rule = api.faults.add(FaultRule(method="POST", path="/configmaps$", status=429, retry_after=5, count=3))
    await client.create(r.CONFIG_MAP, cm("a"))
    assert rule.hits == 3
    assert requests_total(registry, api, "429", "POST") == 3
    assert requests_total(registry, api, "201", "POST") == 1


async def test_throttled_without_retry_after_is_retried(client: KubeClient, api: RunningApiServer) -> None:
    rule = api.faults.add(FaultRule(method="PATCH", status=429, count=1))
    await client.create(r.CONFIG_MAP, cm("a"))
    await client.merge_patch(r.CONFIG_MAP, "a", {"data": {"k": "v"}}, "default")
    assert rule.hits == 1


async def test_5xx_with_retry_after_is_retried(client: KubeClient, api: RunningApiServer) -> None:
    created = await client.create(r.CONFIG_MAP, cm("a"))
    rule = api.faults.add(FaultRule(method="PUT", status=503, retry_after=1, count=2))
    updated = await client.update(r.CONFIG_MAP, created | {"data": {"k": "v"}})
    assert updated["data"] == {"k": "v"} and rule.hits == 2


async def test_5xx_without_retry_after_is_not_retried(client: KubeClient, api: RunningApiServer) -> None:
    rule = api.faults.add(FaultRule(method="GET", status=503, count=1))
    with pytest.raises(errors.ServiceUnavailable):
        await client.list(r.CONFIG_MAP, "default")
    assert rule.hits == 1


async def test_throttle_retries_are_bounded(
    client: KubeClient, api: RunningApiServer, registry: CollectorRegistry
) -> None:
    rule = api.faults.add(FaultRule(method="GET", status=429, retry_after=2))
    with pytest.raises(errors.TooManyRequests) as info, anyio.fail_after(5):
        await client.get(r.CONFIG_MAP, "a", "default")
    assert info.value.retry_after == 2
    assert rule.hits == 11
    assert requests_total(registry, api, "429", "GET") == 11


async def test_retry_after_is_honoured(api: RunningApiServer) -> None:
    api.faults.add(FaultRule(method="GET", status=429, retry_after=0.3, count=1))
    async with KubeClient(explicit(api.url)) as client:
        started = time.monotonic()
        await client.list(r.CONFIG_MAP, "default")
    assert time.monotonic() - started >= 0.3


async def test_reads_are_retried_after_connection_failures(registry: CollectorRegistry) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there any more
    url = f"http://127.0.0.1:{port}"
    async with fast_client(url, registry=registry, connection_retries=3) as client:
        with pytest.raises(errors.ConnectionFailed), anyio.fail_after(5):
            await client.get(r.CONFIG_MAP, "a", "default")
        errors_seen = registry.get_sample_value(
            "rest_client_requests_total", {"code": "<error>", "method": "GET", "host": f"127.0.0.1:{port}"}
        )
        assert errors_seen == 4
        with pytest.raises(errors.ConnectionFailed), anyio.fail_after(5):
            await client.create(r.CONFIG_MAP, cm("a"))
        posts = registry.get_sample_value(
            "rest_client_requests_total", {"code": "<error>", "method": "POST", "host": f"127.0.0.1:{port}"}
        )
        assert posts == 1


async def test_a_host_name_that_does_not_resolve_is_a_connection_failure(registry: CollectorRegistry) -> None:
    """A DNS failure on the lean pool's path is retried as a refused connection is, then one line. RFC 6761
    keeps ``.invalid`` from ever resolving, and resolvers answer for it at once, without asking upstream."""
    host = "kpack-image-builder.invalid:6443"
    async with fast_client(f"http://{host}", registry=registry, connection_retries=2) as client:
        with pytest.raises(errors.ConnectionFailed) as info, anyio.fail_after(30):
            await client.get(r.CONFIG_MAP, "a", "default")
    message = str(info.value)
    assert host in message and "\n" not in message
    tries = registry.get_sample_value(
        "rest_client_requests_total", {"code": "<error>", "method": "GET", "host": host}
    )
    assert tries == 3


async def test_dropped_connections(registry: CollectorRegistry) -> None:
    hung_up: list[str] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        buf = bytearray()
        while (request := await read_request(stream, buf)) is not None:
            if len(hung_up) < 3 or request[0] == "POST":
                hung_up.append(request[0])
                return  # close without answering
            await stream.send(OK_EMPTY)

    async with (
        raw_server(handler) as url,
        fast_client(url, registry=registry, connection_retries=4) as client,
    ):
        with anyio.fail_after(5):
            assert await client.get(r.CONFIG_MAP, "a", "default") == {}
            assert hung_up == ["GET"] * 3
            with pytest.raises(errors.ConnectionFailed):
                await client.create(r.CONFIG_MAP, cm("a"))
    # A write that may have reached the server is never sent twice.
    assert hung_up == ["GET"] * 3 + ["POST"]


async def test_timeouts(api: RunningApiServer, registry: CollectorRegistry) -> None:
    slow_get = api.faults.add(FaultRule(method="GET", status=0, latency=30, count=1))
    async with fast_client(api.url, registry=registry, timeout=0.5, connection_retries=1) as client:
        with anyio.fail_after(10):
            assert (await client.list(r.CONFIG_MAP, "default"))["items"] == []
            assert slow_get.hits == 1
            assert requests_total(registry, api, "<error>", "GET") == 1
            slow_post = api.faults.add(FaultRule(method="POST", status=0, latency=30, count=2))
            with pytest.raises(errors.RequestTimeout):
                await client.create(r.CONFIG_MAP, cm("a"))
            assert slow_post.hits == 1


# ---------------------------------------------------------------------- throttling and metrics
async def test_client_side_rate_limit(api: RunningApiServer) -> None:
    async with fast_client(api.url, qps=10, burst=2) as client:
        started = time.monotonic()
        with anyio.fail_after(10):
            for _ in range(5):
                await client.list(r.CONFIG_MAP, "default")
        # Two from the burst, then three more at 10 per second.
        assert time.monotonic() - started >= 0.28
    async with fast_client(api.url) as default:
        assert (default.limiter.qps, default.limiter.burst) == (20.0, 30)
        for _ in range(3):
            await default.list(r.CONFIG_MAP, "default")
        # Refilling the three tokens would take 150 ms, far longer than three local requests.
        assert default.limiter.tokens() < 30
    async with fast_client(api.url, qps=0) as unlimited:
        assert not unlimited.limiter.enabled


async def test_metrics(client: KubeClient, api: RunningApiServer, registry: CollectorRegistry) -> None:
    await client.list(r.CONFIG_MAP, "default")
    with pytest.raises(errors.NotFound):
        await client.get(r.CONFIG_MAP, "nope", "default")
    async with client.watch(r.CONFIG_MAP, "default", timeout_seconds=0):
        pass
    host = f"127.0.0.1:{api.port}"
    assert requests_total(registry, api, "200", "GET") == 2
    assert requests_total(registry, api, "404", "GET") == 1
    # Watches count as requests but have no meaningful duration.
    assert (
        registry.get_sample_value("rest_client_request_duration_seconds_count", {"verb": "GET", "host": host})
        == 2
    )
    text = generate_latest(registry).decode()
    assert "_created" not in text
    buckets = [
        line.split('le="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("rest_client_request_duration_seconds_bucket")
    ]
    assert buckets == [
        "0.005",
        "0.025",
        "0.1",
        "0.25",
        "0.5",
        "1.0",
        "2.0",
        "4.0",
        "8.0",
        "15.0",
        "30.0",
        "60.0",
        "+Inf",
    ]


# ---------------------------------------------------------------------- lifecycle
async def test_lifecycle(api: RunningApiServer) -> None:
    client = KubeClient(explicit(api.url))
    assert (await client.list(r.NAMESPACE))["items"]  # the session is created on first use
    await client.close()
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.list(r.NAMESPACE)


async def test_a_write_guard_refuses_writes_but_not_reads_inside_it(client: KubeClient) -> None:
    from service.kube.fence import guarded_writes

    class Closed(Exception):
        pass

    await client.create(r.CONFIG_MAP, cm("kept"), "default")
    open_ = True

    def check() -> None:
        if not open_:
            raise Closed("closed")

    with guarded_writes(check):
        await client.create(r.CONFIG_MAP, cm("while-open"), "default")
        open_ = False
        assert (await client.get(r.CONFIG_MAP, "kept", "default"))["metadata"]["name"] == "kept"
        for write in (
            client.create(r.CONFIG_MAP, cm("while-closed"), "default"),
            client.merge_patch(r.CONFIG_MAP, "kept", {"data": {"a": "b"}}, "default"),
            client.delete(r.CONFIG_MAP, "kept", "default"),
        ):
            with pytest.raises(Closed):
                await write
    await client.create(r.CONFIG_MAP, cm("outside"), "default")  # the guard ended with its block
    assert sorted(names((await client.list(r.CONFIG_MAP, "default"))["items"])) == [
        "kept",
        "outside",
        "while-open",
    ]
    assert "data" not in await client.get(r.CONFIG_MAP, "kept", "default")
