"""The emulator's schema walk on an update skips what equals the stored object (``apply_schema``'s
``old``): for a stored object that went through the same schema, the result and the causes must be those
of a full walk, whatever the write changed. A status write to such an object shares what it skips with
the object it replaces, which must stay as it was."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from simcluster.cluster import Cluster
from simcluster.schema import apply_schema
from tests.sim.conftest import GROUP, widget, widget_crd, widget_schema


def ratchet_schema() -> dict[str, Any]:
    """The Widget schema of the emulator's tests, with defaults, limits, a pattern and conditions."""
    schema = widget_schema()
    spec = schema["properties"]["spec"]["properties"]
    spec["size"]["minimum"] = 0
    spec["color"]["default"] = "red"
    spec["tags"]["maxItems"] = 3
    spec["tags"]["items"]["properties"]["value"]["default"] = ""
    status = schema["properties"]["status"]["properties"]
    status["phase"]["pattern"] = "^[A-Z][a-z]+$"
    status["conditions"] = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string"},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
            },
        },
    }
    return schema


SCHEMA = ratchet_schema()

NOW = "2026-01-01T00:00:00Z"
# Values right and wrong for each place: wrong types, values out of an enum or a range, unknown fields.
scalars = st.one_of(
    st.integers(-2, 3), st.sampled_from(["red", "pink", "Ready", "ready", "", "2026-01-01T00:00:00Z"])
)
tag = st.dictionaries(st.sampled_from(["name", "value", "extra"]), scalars, max_size=3)
condition = st.dictionaries(
    st.sampled_from(["type", "lastTransitionTime", "extra"]),
    st.sampled_from(["Ready", "2026-02-30T00:00:00Z", "2026-01-01T00:00:00Z", 5]),
    max_size=3,
)
spec = st.fixed_dictionaries(
    {},
    optional={
        "size": scalars,
        "color": scalars,
        "tags": st.lists(tag, max_size=4),
        "free": st.dictionaries(st.text(max_size=2), scalars, max_size=2),
        "unknown": scalars,
    },
)
status = st.fixed_dictionaries({}, optional={"phase": scalars, "conditions": st.lists(condition, max_size=3)})
objects = st.fixed_dictionaries({"spec": spec}, optional={"status": status})
# Objects that validate, as every stored one did (unknown fields included: they are pruned).
words = st.sampled_from(["a", "b", ""])
valid = st.fixed_dictionaries(
    {
        "spec": st.fixed_dictionaries(
            {"size": st.integers(0, 3)},
            optional={
                "color": st.sampled_from(["red", "green"]),
                "tags": st.lists(
                    st.fixed_dictionaries({"name": words}, optional={"value": words}), max_size=3
                ),
                "free": st.dictionaries(words, words, max_size=2),
                "unknown": words,
            },
        )
    },
    optional={
        "status": st.fixed_dictionaries(
            {},
            optional={
                "phase": st.sampled_from(["Ready", "Pending"]),
                "conditions": st.lists(
                    st.fixed_dictionaries({"type": words}, optional={"lastTransitionTime": st.just(NOW)}),
                    max_size=3,
                ),
            },
        )
    },
)


def walked(obj: dict[str, Any], old: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    out = copy.deepcopy(obj)
    causes = apply_schema(out, SCHEMA, old)
    return out, sorted(c.render() for c in causes)


@settings(max_examples=300, deadline=None)
@given(valid, objects, st.data())
def test_skipping_what_equals_the_stored_object_changes_nothing(
    first: dict[str, Any], second: dict[str, Any], data: st.DataObject
) -> None:
    stored, causes = walked(first)
    assert not causes
    # The write: the stored object with some of its fields replaced (the rest equal, as most writes are).
    new = copy.deepcopy(stored)
    for part in ("spec", "status"):
        if part in second and data.draw(st.booleans()):
            for key, value in second[part].items():
                if data.draw(st.booleans()):
                    new.setdefault(part, {})[key] = value
    assert walked(new, stored) == walked(new)


def test_a_changed_value_under_an_unchanged_one_is_still_checked() -> None:
    stored, causes = walked({"spec": {"size": 1, "tags": [{"name": "a"}]}})
    assert not causes
    new = copy.deepcopy(stored)
    new["spec"]["tags"][0]["name"] = 7  # in place of a stored item
    new["spec"]["tags"].append({"name": 7})  # past the stored ones
    new["status"] = {"phase": "ready"}
    _, causes = walked(new, stored)
    assert causes == [
        'spec.tags[0].name: Invalid value: "integer": spec.tags[0].name in body must be of type string: "integer"',
        'spec.tags[1].name: Invalid value: "integer": spec.tags[1].name in body must be of type string: "integer"',
        "status.phase: Invalid value: \"ready\": status.phase in body should match '^[A-Z][a-z]+$'",
    ]


def test_a_status_write_shares_the_rest_without_changing_the_object_it_replaces() -> None:
    """A status write keeps the stored object's other fields by reference (they went through the schema
    already): the object it replaces, which lists and the watch history still hold, stays as it was."""
    cluster = Cluster()
    cluster.ensure_namespace("default")
    cluster.create(
        cluster.kind_for("apiextensions.k8s.io", "customresourcedefinitions"), "v1", None, widget_crd()
    )
    widgets = cluster.kind_for(GROUP, "widgets")
    meta = {"annotations": {"a": "1"}, "finalizers": ["example.com/keep"]}
    cluster.create(widgets, "v1", "default", widget("w", labels={"app": "x"}, tags=[{"name": "t"}]))
    cluster.patch(
        widgets, "v1", "default", "w", "application/merge-patch+json", orjson.dumps({"metadata": meta})
    )
    before = cluster.get(widgets, "default", "w")
    snapshot = orjson.dumps(before)
    for phase in ("Ready", "Done"):
        patch = {"status": {"phase": phase, "observedGeneration": 1}}
        raw = orjson.dumps(patch)
        cluster.patch(
            widgets, "v1", "default", "w", "application/merge-patch+json", raw, subresource="status"
        )
    after = cluster.get(widgets, "default", "w")
    assert orjson.dumps(before) == snapshot
    assert after["spec"] is before["spec"]  # shared, not copied
    assert after["status"] == {"phase": "Done", "observedGeneration": 1}
    assert int(after["metadata"]["resourceVersion"]) == int(before["metadata"]["resourceVersion"]) + 2
    assert after["metadata"]["managedFields"] != before["metadata"]["managedFields"]
    assert {k: v for k, v in after["metadata"].items() if k not in ("resourceVersion", "managedFields")} == {
        k: v for k, v in before["metadata"].items() if k not in ("resourceVersion", "managedFields")
    }
