"""Object helpers in the manner of controllerutil: finalizers and owner references on plain dicts."""

from __future__ import annotations

from service.kube.objects import (
    add_finalizer,
    generation,
    has_finalizer,
    is_deleting,
    labels,
    remove_finalizer,
    set_owner_reference,
)


def test_finalizers_are_added_once_and_removed_keeping_the_others() -> None:
    obj: dict[str, object] = {}
    assert add_finalizer(obj, "a/b") and not add_finalizer(obj, "a/b")
    assert add_finalizer(obj, "c/d")
    assert has_finalizer(obj, "a/b") and obj["metadata"] == {"finalizers": ["a/b", "c/d"]}
    assert remove_finalizer(obj, "a/b") and not remove_finalizer(obj, "a/b")
    assert obj["metadata"] == {"finalizers": ["c/d"]} and not has_finalizer(obj, "a/b")


def test_owner_references_follow_group_kind_and_name() -> None:
    owner = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t", "uid": "1"}}
    obj: dict[str, object] = {}
    set_owner_reference(obj, owner)
    set_owner_reference(obj, {**owner, "apiVersion": "example.com/v2"})  # another version: the same owner
    set_owner_reference(obj, {**owner, "metadata": {"name": "t", "uid": "2"}})  # recreated: its new uid
    set_owner_reference(obj, {**owner, "kind": "Other"})
    refs = obj["metadata"]["ownerReferences"]  # type: ignore[index]
    assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [("Thing", "t", "2"), ("Other", "t", "1")]


def test_readers_tolerate_missing_metadata() -> None:
    assert labels({}) == {} and generation({}) == 0 and not is_deleting({})
    obj = {"metadata": {"labels": {"a": "b"}, "generation": 3, "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    copied = labels(obj)
    copied["x"] = "y"
    assert labels(obj) == {"a": "b"} and generation(obj) == 3 and is_deleting(obj)
