"""The Go JSON model under the webhook round trip: quantities as apimachinery prints them, decode errors
with Go's text, what the round trip adds and drops; knative's FieldError formatting; kmeta.ChildName."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from service.kube import quantity
from service.kube.timestamps import micro_time, rfc3339
from simcluster.kpack import apis, fielderror, gotypes
from simcluster.kpack.refs import build_tags, child_name


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("2G", "2G"),
        ("2Gi", "2Gi"),
        ("2048Mi", "2Gi"),
        ("1.5Gi", "1536Mi"),
        ("0.5Gi", "512Mi"),
        ("1024000000", "1024M"),
        ("2000000000", "2G"),
        ("1000k", "1M"),
        ("0.5", "500m"),
        ("1500m", "1500m"),
        ("100Ki", "100Ki"),
        ("0.1Ki", "102400m"),  # under 1024 a binary quantity prints as decimal
        ("1e3", "1e3"),
        ("0.0000000001", "1n"),  # rounded up to the smallest unit
        ("0", "0"),
        ("-1Gi", "-1Gi"),
    ],
)
def test_quantities_print_canonically(given: str, canonical: str) -> None:
    assert str(quantity.parse(given)) == canonical


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", quantity.FORMAT_WRONG),
        ("{}", quantity.FORMAT_WRONG),
        ("1X", quantity.FORMAT_WRONG),
        ("1Gii", quantity.ERR_SUFFIX),
    ],
)
def test_bad_quantities_fail_with_apimachinery_messages(given: str, message: str) -> None:
    with pytest.raises(quantity.QuantityError, match="^" + re.escape(message) + "$"):
        quantity.parse(given)


def test_quantities_compare_by_value() -> None:
    assert quantity.parse("2Gi").cmp(quantity.parse("2147483648")) == 0
    assert quantity.parse("5G").cmp(quantity.parse("4G")) == 1


def roundtrip(spec: Any) -> Any:
    return gotypes.roundtrip(
        apis.IMAGE, {"apiVersion": "kpack.io/v1alpha2", "kind": "Image", "metadata": {}, "spec": spec}
    )


def test_the_round_trip_drops_unknown_fields_and_adds_go_zero_values() -> None:
    out = roundtrip({"tag": "a", "unknown": 1, "build": {"env": [{"name": "A", "value": "1", "x": 2}]}})
    assert out["spec"] == {
        "tag": "a",
        "builder": {},
        "source": {},
        "build": {"env": [{"name": "A", "value": "1"}], "resources": {}},
    }
    assert out["status"] == {}


def test_the_round_trip_matches_keys_case_insensitively_as_go_does() -> None:
    assert roundtrip({"TAG": "a"})["spec"]["tag"] == "a"


def test_a_build_status_round_trip_shows_the_fields_without_omitempty() -> None:
    out = gotypes.roundtrip(apis.BUILD.field_type("status"), {"podName": "p"})
    assert out == {"stack": {}, "lifecycleVersion": "", "podName": "p"}


def test_condition_times_are_rfc3339_utc_or_null() -> None:
    status = gotypes.roundtrip(
        apis.IMAGE.field_type("status"),
        {
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-03-01T12:00:05+02:00"}
            ]
        },
    )
    assert status["conditions"][0]["lastTransitionTime"] == "2026-03-01T10:00:05Z"
    status = gotypes.roundtrip(
        apis.IMAGE.field_type("status"), {"conditions": [{"type": "Ready", "status": "True"}]}
    )
    assert status["conditions"][0]["lastTransitionTime"] is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"failedBuildHistoryLimit": "5"},
            "json: cannot unmarshal string into Go struct field ImageSpec.spec.failedBuildHistoryLimit of type int64",
        ),
        (
            {"failedBuildHistoryLimit": 1.5},
            "json: cannot unmarshal number 1.5 into Go struct field ImageSpec.spec.failedBuildHistoryLimit of type int64",
        ),
        ({"tag": 5}, "json: cannot unmarshal number into Go struct field ImageSpec.spec.tag of type string"),
        (
            {"cache": "x"},
            "json: cannot unmarshal string into Go struct field ImageSpec.spec.cache of type v1alpha2.ImageCacheConfig",
        ),
        (
            {"build": {"env": [{"name": 1}]}},
            "json: cannot unmarshal number into Go struct field EnvVar.spec.build.env.name of type string",
        ),
        ({"cache": {"volume": {"size": {}}}}, quantity.FORMAT_WRONG),
    ],
)
def test_wrong_json_types_fail_with_go_messages(spec: Any, message: str) -> None:
    with pytest.raises(gotypes.DecodeError) as info:
        roundtrip(spec)
    assert str(info.value) == message


def test_strict_decoding_refuses_unknown_fields() -> None:
    with pytest.raises(gotypes.DecodeError, match=r'^json: unknown field "x"$'):
        gotypes.decode(apis.IMAGE, {"spec": {"x": 1}}, disallow_unknown_fields=True)


def test_field_errors_merge_sort_and_flatten_paths_as_knative_does() -> None:
    err = fielderror.also(
        fielderror.missing("tag"),
        fielderror.invalid("x", "").via_index(2).via_field("tags"),
        fielderror.missing("name").via_field("builder"),
        fielderror.FieldError("Immutable field changed", ["tag"], "got: a, want: b"),
    )
    assert err is not None
    assert err.via_field("spec").error() == (
        "Immutable field changed: spec.tag\ngot: a, want: b\n"
        "invalid value: x: spec.tags[2]\n"
        "missing field(s): spec.builder.name, spec.tag"
    )
    assert fielderror.generic("no path").error() == "no path: "


def test_child_names_are_knatives() -> None:
    assert child_name("app", "-build-1") == "app-build-1"
    long = "a" * 60  # 60 + 9 > 63: the head of the name, the md5 of the whole, the suffix
    assert child_name(long, "-build-12") == "a" * 22 + hashlib.md5(long.encode()).hexdigest() + "-build-12"
    suffix = "-" + "s" * 40  # a suffix too long for that: parent head, md5 of both, padding from the suffix
    expected = "x" * 31 + hashlib.md5(("x" * 70 + suffix).encode()).hexdigest()
    assert child_name("x" * 70, suffix) == expected


def test_build_number_tags() -> None:
    moment = datetime(2026, 3, 2, 9, 15, 0)
    assert build_tags("registry.example.com/cf/app", [], 2, "BuildNumber", moment) == [
        "registry.example.com/cf/app",
        "registry.example.com/cf/app:b2.20260302.091500",
    ]
    assert build_tags("foo/app:v2", ["foo/app:extra"], 3, "BuildNumber", moment) == [
        "foo/app:v2",
        "index.docker.io/foo/app:v2-b3.20260302.091500",
        "foo/app:extra",
    ]
    assert build_tags("app:latest", [], 1, "None", moment) == ["app:latest"]


def test_times_are_written_in_utc_whatever_the_zone_given() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 3, 1, 12, 0, 5, tzinfo=plus_two)) == "2026-03-01T10:00:05Z"
    assert rfc3339(datetime(2026, 3, 1, 12, 0, 5)) == "2026-03-01T12:00:05Z"  # naive: taken as UTC
    assert micro_time(datetime(2026, 3, 1, 0, 30, 0, 1, tzinfo=plus_two)) == "2026-02-28T22:30:00.000001Z"
    time_type = apis.IMAGE.field_type("status").field_type("conditions")
    conditions = gotypes.roundtrip(
        time_type, [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-03-01T00:00:05.9-01:30"}]
    )
    assert conditions[0]["lastTransitionTime"] == "2026-03-01T01:30:05Z"
