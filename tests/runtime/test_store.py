"""The informer cache: keys, indexes kept in step with every write, and the managedFields transform."""

from __future__ import annotations

import sys
import tracemalloc
from typing import Any

import orjson
import pytest

from service.runtime.store import (
    NAMESPACE_INDEX,
    OWNER_UID_INDEX,
    Obj,
    Store,
    by_label,
    by_labels,
    encode,
    object_key,
    strip_managed_fields,
)


def obj(
    name: str,
    namespace: str | None = "default",
    *,
    labels: dict[str, str] | None = None,
    owners: tuple[str, ...] = (),
    rv: str = "1",
    **extra: Any,
) -> Obj:
    meta: Obj = {"name": name, "resourceVersion": rv}
    if namespace:
        meta["namespace"] = namespace
    if labels is not None:
        meta["labels"] = labels
    if owners:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": f"owner-{uid}", "uid": uid} for uid in owners
        ]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, **extra}


def names(objs: list[Obj]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


def test_object_key_is_namespace_slash_name_or_name() -> None:
    assert object_key(obj("a", "ns1")) == "ns1/a"
    assert object_key(obj("node-1", None)) == "node-1"
    assert object_key({"metadata": {"name": "x", "namespace": ""}}) == "x"


def test_put_get_and_remove() -> None:
    store = Store()
    first = obj("a", rv="1")
    assert store.put(first) is None
    second = obj("a", rv="2")
    assert store.put(second) == first  # the previous object comes back
    assert store.get("default/a") == second
    assert store.get_by("default", "a") == second
    assert store.get_by("other", "a") is None
    store.put(obj("cluster-wide", None))
    assert store.get_by(None, "cluster-wide") is not None
    assert "default/a" in store and len(store) == 2
    assert sorted(store.list_keys()) == ["cluster-wide", "default/a"]
    assert store.remove("default/a") == second
    assert store.remove("default/a") is None
    assert "default/a" not in store and len(store) == 1


def test_values_is_a_snapshot() -> None:
    store = Store()
    store.put(obj("a"))
    values = store.values()
    store.put(obj("b"))  # mutating the store while iterating an earlier snapshot is safe
    assert names(list(values)) == ["a"]


def test_namespace_index_follows_every_write() -> None:
    store = Store()
    store.put(obj("a", "ns1"))
    store.put(obj("b", "ns1"))
    store.put(obj("a", "ns2"))
    store.put(obj("node", None))
    assert store.index_keys(NAMESPACE_INDEX, "ns1") == ["ns1/a", "ns1/b"]
    assert names(store.by_index(NAMESPACE_INDEX, "ns2")) == ["a"]
    assert store.index_keys(NAMESPACE_INDEX, "") == ["node"]  # cluster-scoped objects
    store.remove("ns1/a")
    assert store.index_keys(NAMESPACE_INDEX, "ns1") == ["ns1/b"]
    store.remove("ns1/b")
    assert store.index_keys(NAMESPACE_INDEX, "ns1") == []
    assert "ns1" not in store._indices[NAMESPACE_INDEX]  # empty buckets do not pile up


def test_owner_uid_index_is_updated_when_owners_change() -> None:
    store = Store()
    store.put(obj("child", owners=("u1", "u2")))
    store.put(obj("other", owners=("u1",)))
    store.put(obj("orphan"))
    assert store.index_keys(OWNER_UID_INDEX, "u1") == ["default/child", "default/other"]
    assert store.index_keys(OWNER_UID_INDEX, "u2") == ["default/child"]
    store.put(obj("child", owners=("u3",), rv="2"))  # replaced: old owners unindexed, new indexed
    assert store.index_keys(OWNER_UID_INDEX, "u1") == ["default/other"]
    assert store.index_keys(OWNER_UID_INDEX, "u2") == []
    assert [o["metadata"]["resourceVersion"] for o in store.by_index(OWNER_UID_INDEX, "u3")] == ["2"]
    store.remove("default/child")
    assert store.index_keys(OWNER_UID_INDEX, "u3") == []


def test_owner_uid_index_ignores_references_without_uid_and_duplicates() -> None:
    store = Store()
    child = obj("child", owners=("u1", "u1"))
    child["metadata"]["ownerReferences"].append({"apiVersion": "v1", "kind": "X", "name": "no-uid"})
    store.put(child)
    assert store.index_keys(OWNER_UID_INDEX, "u1") == ["default/child"]
    store.remove("default/child")
    assert store.index_keys(OWNER_UID_INDEX, "u1") == []


def test_label_indexes_follow_label_changes() -> None:
    store = Store({"app": by_label("app"), "app-stage": by_labels("app", "stage")})
    store.put(obj("a", labels={"app": "x", "stage": "build"}))
    store.put(obj("b", labels={"app": "x"}))
    store.put(obj("c"))  # no labels at all
    assert store.index_keys("app", "x") == ["default/a", "default/b"]
    assert store.index_keys("app-stage", "x/build") == ["default/a"]
    store.put(obj("a", labels={"app": "y", "stage": "build"}, rv="2"))
    assert store.index_keys("app", "x") == ["default/b"]
    assert store.index_keys("app", "y") == ["default/a"]
    assert store.index_keys("app-stage", "x/build") == []
    assert store.index_keys("app-stage", "y/build") == ["default/a"]
    store.put(obj("b", labels={}, rv="2"))  # label removed: unindexed
    assert store.index_keys("app", "x") == []
    assert store.has_index("app") and not store.has_index("nope")
    with pytest.raises(KeyError):
        store.by_index("nope", "x")


def test_an_update_that_keeps_its_index_values_stays_indexed_whatever_the_index_function_returns() -> None:
    # ``put`` leaves an index alone when the old and new values compare equal; a function returning a
    # list or a generator (never equal to another) takes the slow path and must come out the same.
    def as_list(o: Obj) -> list[str]:
        return [o["metadata"].get("labels", {}).get("app", "")]

    def as_generator(o: Obj) -> Any:
        return (v for v in (o["metadata"].get("labels", {}).get("app", ""),))

    store = Store({"app": by_label("app"), "list": as_list, "gen": as_generator})
    store.put(obj("a", labels={"app": "x"}))
    store.put(obj("a", labels={"app": "x"}, rv="2", status={"phase": "done"}))  # a status write
    store.put(obj("b", labels={"app": "x"}))
    for index in ("app", "list", "gen"):
        assert store.index_keys(index, "x") == ["default/a", "default/b"], index
        assert store.by_index(index, "x")[0]["status"] == {"phase": "done"}
    store.put(obj("a", labels={"app": "y"}, rv="3"))
    for index in ("app", "list", "gen"):
        assert store.index_keys(index, "x") == ["default/b"], index
        assert store.index_keys(index, "y") == ["default/a"], index
    assert store.index_keys(NAMESPACE_INDEX, "default") == ["default/a", "default/b"]


def test_add_indexer_on_a_populated_store_indexes_what_is_there() -> None:
    store = Store()
    store.put(obj("a", labels={"team": "red"}))
    store.put(obj("b", labels={"team": "blue"}))
    store.put(obj("c", labels={"team": "red"}, namespace="other"))
    store.add_indexer("team", by_label("team"))
    assert store.index_keys("team", "red") == ["default/a", "other/c"]
    store.put(obj("d", labels={"team": "red"}))  # and keeps it up to date afterwards
    store.remove("default/a")
    assert store.index_keys("team", "red") == ["default/d", "other/c"]
    with pytest.raises(ValueError, match="already exists"):
        store.add_indexer("team", by_label("team"))
    with pytest.raises(ValueError, match="already exists"):
        store.add_indexer(NAMESPACE_INDEX, by_label("x"))


def test_strip_managed_fields() -> None:
    o = obj("a")
    o["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Update"}]
    out = strip_managed_fields(o)
    assert out is o and "managedFields" not in o["metadata"]
    assert o["metadata"]["name"] == "a"
    assert strip_managed_fields(obj("b"))["metadata"]["name"] == "b"  # nothing to strip: fine
    assert strip_managed_fields({"kind": "Status"}) == {"kind": "Status"}  # no metadata: fine


def test_a_namespaced_label_index_keeps_namespaces_apart() -> None:
    from service.runtime.store import index_value

    store = Store({"app": by_labels("app", "gen", namespaced=True)})
    for ns in ("a", "b"):
        store.put({"metadata": {"name": "w", "namespace": ns, "labels": {"app": "x", "gen": "1"}}})
    assert [o["metadata"]["namespace"] for o in store.by_index("app", index_value("a", "x", "1"))] == ["a"]
    assert store.by_index("app", "x/1") == []


def test_reads_are_copies_the_caller_owns() -> None:
    """The cache holds encoded objects: what a read returns may be changed without changing the cache,
    and changing what was put afterwards does not reach it either."""
    store = Store({"app": by_label("app")})
    given = obj("a", labels={"app": "x"}, data={"k": "v"})
    store.put(given)
    given["data"]["k"] = "changed by the writer"
    got = store.get("default/a")
    assert got is not None and got["data"] == {"k": "v"}
    got["data"]["k"] = "changed by a reader"
    got["metadata"]["labels"]["app"] = "y"
    for read in (store.get("default/a"), *store.by_index("app", "x"), *store.values()):
        assert read is not None and read["data"] == {"k": "v"} and read["metadata"]["labels"] == {"app": "x"}
    assert store.get("default/a") is not store.get("default/a")
    assert store.index_keys("app", "x") == ["default/a"]  # indexed as put, not as a reader changed it


def test_the_cache_holds_compact_json_of_its_own_size() -> None:
    store = Store()
    o = obj("a", data={f"key-{i}": "v" * i for i in range(200)})
    store.put(o)
    raw = store.encoded("default/a")
    assert raw == orjson.dumps(o)
    assert raw is not None and orjson.loads(raw) == o
    # orjson's own result keeps the capacity it grew to; the cache keeps a buffer of the JSON's size.
    assert sys.getsizeof(raw) - len(raw) < 64
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [encode(o) for _ in range(100)]
        per_object = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_object < len(raw) * 1.1
