"""Lists: resourceVersion, pagination with consistent snapshots, label and field selectors."""

from __future__ import annotations

import pytest

from service.kube.selectors import FieldSelector
from simcluster.kinds import KindFieldSelector, built_in_kinds
from tests.sim.conftest import (
    CM,
    NOISE,
    WIDGETS,
    Kube,
    Obj,
    assert_status,
    configmap,
    widget,
)

pytestmark = pytest.mark.anyio


async def test_list_shape_and_resource_version(kube: Kube, widgets: Obj) -> None:
    made = [await kube.create(CM, configmap(f"c{i}")) for i in range(3)]
    listed = await kube.get(kube.path(CM))
    assert listed.status == 200
    assert listed.body["kind"] == "ConfigMapList"
    assert listed.body["apiVersion"] == "v1"
    rv = listed.body["metadata"]["resourceVersion"]
    assert isinstance(rv, str)
    assert int(rv) >= max(int(m["metadata"]["resourceVersion"]) for m in made)
    assert "continue" not in listed.body["metadata"]
    assert kube.names(listed.body) == ["c0", "c1", "c2"]
    # A write anywhere moves the list's resourceVersion on.
    await kube.create(WIDGETS, widget("w1"))
    again = await kube.get(kube.path(CM))
    assert int(again.body["metadata"]["resourceVersion"]) > int(rv)
    empty = await kube.get(kube.path(WIDGETS, "kube-system"))
    assert empty.body["items"] == []
    assert empty.body["kind"] == "WidgetList"


async def test_pagination_is_a_consistent_snapshot(kube: Kube) -> None:
    for i in range(5):
        await kube.create(CM, configmap(f"c{i}"))
    first = await kube.get(kube.path(CM), limit="2")
    assert kube.names(first.body) == ["c0", "c1"]
    token = first.body["metadata"]["continue"]
    assert token
    # The real server's remaining items include its kube-root-ca.crt (after c4 in name order).
    assert first.body["metadata"]["remainingItemCount"] == 3 + (len(NOISE) if kube.real else 0)
    snapshot_rv = first.body["metadata"]["resourceVersion"]

    # Changes after the first page do not show up in later pages.
    await kube.create(CM, configmap("c2a"))
    await kube.create(CM, configmap("c9"))
    await kube.delete(kube.path(CM, name="c3"))
    second = await kube.get(kube.path(CM), limit="2", **{"continue": token})
    assert second.status == 200
    assert kube.names(second.body) == ["c2", "c3"]
    assert second.body["metadata"]["resourceVersion"] == snapshot_rv
    third = await kube.get(kube.path(CM), limit="2", **{"continue": second.body["metadata"]["continue"]})
    assert kube.names(third.body) == ["c4"]
    assert not third.body["metadata"].get("continue")
    # A fresh list sees the present.
    fresh = await kube.get(kube.path(CM))
    assert kube.names(fresh.body) == ["c0", "c1", "c2", "c2a", "c4", "c9"]


async def test_limit_larger_than_the_list(kube: Kube) -> None:
    for i in range(2):
        await kube.create(CM, configmap(f"c{i}"))
    page = await kube.get(kube.path(CM), limit="10")
    assert kube.names(page.body) == ["c0", "c1"]
    assert not page.body["metadata"].get("continue")


async def test_paginated_selector_lists(kube: Kube) -> None:
    for i in range(6):
        await kube.create(CM, configmap(f"c{i}", {"even": str(i % 2 == 0).lower()}))
    seen: list[str] = []
    token = ""
    while True:
        params = {"limit": "2", "labelSelector": "even=true"}
        if token:
            params["continue"] = token
        page = await kube.get(kube.path(CM), **params)
        seen += kube.names(page.body)
        token = page.body["metadata"].get("continue", "")
        if not token:
            break
    assert seen == ["c0", "c2", "c4"]


@pytest.mark.emulator  # compaction on demand
async def test_expired_continue_token(kube: Kube) -> None:
    for i in range(3):
        await kube.create(CM, configmap(f"c{i}"))
    first = await kube.get(kube.path(CM), limit="1")
    token = first.body["metadata"]["continue"]
    compacted = await kube.post("/__sim__/compact", {})
    assert compacted.status == 200
    status = assert_status(await kube.get(kube.path(CM), limit="1", **{"continue": token}), 410, "Expired")
    assert "continue" in status["message"]


async def test_garbage_continue_token_is_a_bad_request(kube: Kube) -> None:
    assert_status(await kube.get(kube.path(CM), limit="1", **{"continue": "not-a-token"}), 400, "BadRequest")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", ["web1", "web2"]),
        ("app==web", ["web1", "web2"]),
        ("app!=web", ["db", "plain"]),
        ("app in (web,db)", ["db", "web1", "web2"]),
        ("app notin (web)", ["db", "plain"]),
        ("app", ["db", "web1", "web2"]),
        ("!app", ["plain"]),
        ("app=web,tier=front", ["web1"]),
        ("app in (web), !tier", ["web2"]),
        ("app=nothing", []),
    ],
)
async def test_label_selectors(kube: Kube, selector: str, expected: list[str]) -> None:
    await kube.create(CM, configmap("web1", {"app": "web", "tier": "front"}))
    await kube.create(CM, configmap("web2", {"app": "web"}))
    await kube.create(CM, configmap("db", {"app": "db", "tier": "back"}))
    await kube.create(CM, configmap("plain"))
    reply = await kube.get(kube.path(CM), labelSelector=selector)
    assert reply.status == 200, reply.body
    assert sorted(kube.names(reply.body)) == expected


async def test_field_selectors(kube: Kube) -> None:
    other = await kube.namespace("other")
    await kube.create(CM, configmap("a"))
    await kube.create(CM, configmap("b"))
    await kube.create(CM, configmap("a"), ns=other)
    by_name = await kube.get("/api/v1/configmaps", fieldSelector="metadata.name=a")
    assert sorted(o["metadata"]["namespace"] for o in kube.mine(by_name.body["items"])) == sorted(
        [kube.ns, other]
    )
    by_ns = await kube.get("/api/v1/configmaps", fieldSelector=f"metadata.namespace={other}")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in kube.mine(by_ns.body["items"])] == [
        (other, "a")
    ]
    both = await kube.get("/api/v1/configmaps", fieldSelector=f"metadata.namespace={kube.ns},metadata.name=b")
    assert kube.names(both.body) == ["b"]
    negated = await kube.get(kube.path(CM), fieldSelector="metadata.name!=a")
    assert "a" not in kube.names(negated.body) and "b" in kube.names(negated.body)
    in_ns = await kube.get(kube.path(CM), fieldSelector="metadata.name=a")
    assert [o["metadata"]["namespace"] for o in in_ns.body["items"]] == [kube.ns]


async def test_field_selectors_on_custom_resources(kube: Kube, widgets: Obj) -> None:
    await kube.create(WIDGETS, widget("w1"))
    await kube.create(WIDGETS, widget("w2"))
    reply = await kube.get(kube.path(WIDGETS), fieldSelector="metadata.name=w2")
    assert kube.names(reply.body) == ["w2"]


@pytest.mark.parametrize("selector", ["app in (web", "app=(", "=web", "app=web,", "Bad Key=1", "a=b c"])
async def test_bad_label_selector(kube: Kube, selector: str) -> None:
    assert_status(await kube.get(kube.path(CM), labelSelector=selector), 400, "BadRequest")


@pytest.mark.parametrize("selector", ["spec.foo=bar", "metadata.name", "nonsense"])
async def test_bad_field_selector(kube: Kube, selector: str) -> None:
    assert_status(await kube.get(kube.path(CM), fieldSelector=selector), 400, "BadRequest")


def event(name: str, involved: Obj, reason: str, **extra: object) -> Obj:
    ref = {k: involved["metadata"][k] for k in ("name", "namespace", "uid")}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name},
        "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], **ref},
        "reason": reason,
        "message": f"{reason} happened",
        "type": "Normal",
        **extra,
    }


EVENTS = "/api/v1/namespaces/{ns}/events"


async def test_field_selectors_on_events(kube: Kube) -> None:
    # kube-apiserver's Event field labels: what `kubectl describe` lists an object's events with.
    a = await kube.create(CM, configmap("a"))
    b = await kube.create(CM, configmap("b"))
    await kube.create(EVENTS, event("a.1", a, "Created", source={"component": "builder"}))
    await kube.create(EVENTS, event("a.2", a, "Failed", type="Warning", reportingComponent="kpack"))
    await kube.create(EVENTS, event("b.1", b, "Created"))
    describe = (
        f"involvedObject.name=a,involvedObject.namespace={kube.ns},involvedObject.kind=ConfigMap,"
        f"involvedObject.uid={a['metadata']['uid']}"
    )
    for selector, expected in (
        (describe, ["a.1", "a.2"]),
        ("involvedObject.name=b", ["b.1"]),
        ("involvedObject.apiVersion=v1,reason=Created", ["a.1", "b.1"]),
        ("type=Warning", ["a.2"]),
        ("type!=Warning", ["a.1", "b.1"]),
        ("source=builder", ["a.1"]),
        ("source=kpack", ["a.2"]),  # source falls back to reportingComponent
        ("reportingComponent=kpack", ["a.2"]),
        ("involvedObject.fieldPath=", ["a.1", "a.2", "b.1"]),  # absent fields select as ""
        (f"involvedObject.uid={b['metadata']['uid']}", ["b.1"]),
        ("metadata.name=a.2", ["a.2"]),
    ):
        reply = await kube.get(kube.path(EVENTS), fieldSelector=selector)
        assert reply.status == 200, (selector, reply.body)
        assert kube.names(reply.body) == expected, selector
    # Watches honour them too.
    async with kube.watching(kube.path(EVENTS), fieldSelector="involvedObject.name=b") as w:
        await w.expect("ADDED", "b.1")
        await kube.create(EVENTS, event("a.3", a, "Updated"))
        await kube.create(EVENTS, event("b.2", b, "Updated"))
        await w.expect("ADDED", "b.2")
    assert_status(
        await kube.get(kube.path(EVENTS), fieldSelector="involvedObject.color=red"),
        400,
        "BadRequest",
        "field label not supported: involvedObject.color",
    )


async def test_field_selectors_on_secrets_and_namespaces(kube: Kube) -> None:
    secrets = "/api/v1/namespaces/{ns}/secrets"
    await kube.create(secrets, {"metadata": {"name": "plain"}, "stringData": {"k": "v"}})
    await kube.create(
        secrets, {"metadata": {"name": "special"}, "type": "example.com/special", "stringData": {"k": "v"}}
    )
    opaque = await kube.get(kube.path(secrets), fieldSelector="type=Opaque")  # the defaulted type
    assert kube.names(opaque.body) == ["plain"]
    special = await kube.get("/api/v1/secrets", fieldSelector="type=example.com/special")
    assert kube.names(special.body) == ["special"]
    doomed = await kube.namespace("doomed")
    held = await kube.namespace("held")
    hold = {"metadata": {"name": "c", "finalizers": ["example.com/hold"]}, "data": {}}
    await kube.create(CM, hold, ns=held)
    assert (await kube.delete(f"/api/v1/namespaces/{held}")).status == 200
    try:
        terminating = await kube.get("/api/v1/namespaces", fieldSelector="status.phase=Terminating")
        assert kube.names(terminating.body) == [held]
        active = await kube.get("/api/v1/namespaces", fieldSelector="status.phase!=Terminating")
        assert held not in kube.names(active.body) and doomed in kube.names(active.body)
    finally:
        await kube.patch(kube.path(CM, held, "c"), {"metadata": {"finalizers": None}})
    # A Namespace has no metadata.namespace field label; a ConfigMap has no type (and no field label
    # conversion of its own: apimachinery's default words the refusal differently).
    assert_status(
        await kube.get("/api/v1/namespaces", fieldSelector="metadata.namespace=default"),
        400,
        "BadRequest",
        "field label not supported: metadata.namespace",
    )
    assert_status(
        await kube.get(kube.path(CM), fieldSelector="type=Opaque"),
        400,
        "BadRequest",
        '"type" is not a known field selector: only "metadata.name", "metadata.namespace"',
    )


def test_field_selectors_resolve_their_paths_once() -> None:
    kinds = {k.plural: k for k in built_in_kinds()}
    # Only metadata.name / metadata.namespace: the plain selector, which reads metadata directly.
    for kind, text in (
        ("configmaps", "metadata.name=a,metadata.namespace!=b"),
        ("namespaces", "metadata.name=a"),
    ):
        selector = kinds[kind].field_selector(text)
        assert type(selector) is FieldSelector, kind
        assert selector.matches({"metadata": {"name": "a", "namespace": "c"}})
    # Other fields: each term carries its label's paths, resolved when the selector is made.
    selector = kinds["events"].field_selector("source=kpack,metadata.name!=x")
    assert isinstance(selector, KindFieldSelector)
    assert selector == kinds["events"].field_selector("source=kpack,metadata.name!=x")
    assert selector.matches({"metadata": {"name": "e"}, "reportingComponent": "kpack"})
    assert not selector.matches({"metadata": {"name": "x"}, "source": {"component": "kpack"}})
    assert not selector.matches({"metadata": {"name": "e"}, "source": {"component": "other"}})
    phase = kinds["namespaces"].field_selector("status.phase=Active")
    assert isinstance(phase, KindFieldSelector) and phase.matches(
        {"metadata": {}, "status": {"phase": "Active"}}
    )
