"""merge_diff: the JSON merge patch between two versions of an object."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.kube.patches import merge_diff
from simcluster.cluster import merge_patch


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, {"a": {"y": None}}),
        ({"a": [1, 2]}, {"a": [2, 1]}, {"a": [2, 1]}),  # lists go whole
        ({"a": True}, {"a": 1}, {"a": 1}),  # Python's True == 1 must not hide the change
        ({"a": {"b": [True]}}, {"a": {"b": [1]}}, {"a": {"b": [1]}}),
        ({"a": "x"}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({}, {"a": {}}, {"a": {}}),
    ],
)
def test_merge_diff(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]) -> None:
    assert merge_diff(old, new) == patch


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=2), children, max_size=3)
    ),
    max_leaves=10,
)
objects = st.dictionaries(st.text(max_size=2), json_values, max_size=4)


def _without_nulls(value: Any) -> Any:
    """A merge patch cannot set a key to null; objects that have null values are not what it describes."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


@given(objects, objects)
def test_applying_the_diff_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    old, new = _without_nulls(old), _without_nulls(new)
    # Compared as JSON: Python's == has True == 1, which would hide exactly the changes this must send.
    as_json = orjson.OPT_SORT_KEYS
    assert orjson.dumps(merge_patch(old, merge_diff(old, new)), option=as_json) == orjson.dumps(
        new, option=as_json
    )
