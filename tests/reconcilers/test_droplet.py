"""Pure parts of the domain: build resources (korifi.md §4.3 A, behaviours 1-3), Go's %q quoting, process
types from the build metadata, ports, conditions and names."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.kube.conditions import set_condition
from service.reconcilers import korifi as k
from service.reconcilers.droplet import DropletError, droplet, go_quote, process_types, stable_ports
from service.reconcilers.kpack_objects import build_resources
from service.reconcilers.settings import BuilderSettings


@pytest.mark.parametrize(
    ("disk", "memory", "expected"),
    [
        (0, 0, {}),
        (1234, 0, {"requests": {"ephemeral-storage": "1234M"}}),
        (0, 4321, {"requests": {"memory": "4321M"}}),
        (2048, 1234, {"requests": {"ephemeral-storage": "2048M", "memory": "1234M"}}),
    ],
)
def test_build_resources_are_requests_in_decimal_megabytes(
    disk: int, memory: int, expected: dict[str, object]
) -> None:
    """Behaviours 1-3: requests only, never limits."""
    assert build_resources(BuilderSettings(disk_mb=disk, memory_mb=memory)) == expected


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("foo", '"foo"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("tab\there", '"tab\\there"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("bell\a", '"bell\\a"'),
        ("\x00", '"\\x00"'),
        ("\x7f", '"\\x7f"'),
        ("$HOME", '"$HOME"'),  # Go quoting, not shell quoting
        ("héllo wörld", '"héllo wörld"'),
        ("\u00a0", '"\\u00a0"'),  # a no-break space is not printable for Go
        ("\u200b", '"\\u200b"'),
        ("日本", '"日本"'),
        ("\U0001f600", '"\U0001f600"'),  # printable emoji stays
        ("\U000e0001", '"\\U000e0001"'),
    ],
)
def test_go_quote_matches_strconv_quote(text: str, quoted: str) -> None:
    assert go_quote(text) == quoted


@given(st.text())
def test_go_quote_round_trips_through_a_json_string_decoder_for_ascii_escapes(text: str) -> None:
    quoted = go_quote(text)
    assert quoted.startswith('"') and quoted.endswith('"')
    assert "\n" not in quoted and "\t" not in quoted


def metadata(*processes: dict[str, object]) -> str:
    return orjson.dumps({"processes": list(processes)}).decode()


def test_process_types_follow_korifis_format() -> None:
    label = metadata(
        {"type": "web", "command": "my-command", "args": ["foo", "bar"], "direct": True},
        {"type": "db", "command": "my-command2"},
    )
    assert process_types(label) == [
        {"type": "web", "command": 'my-command "foo" "bar"'},
        {"type": "db", "command": "my-command2"},
    ]


def test_a_command_list_from_platform_api_0_10_is_accepted() -> None:
    label = metadata({"type": "web", "command": ["bundle", "exec", "rackup"], "args": ["-p", "8080"]})
    assert process_types(label) == [{"type": "web", "command": 'bundle "exec" "rackup" "-p" "8080"'}]


def test_no_processes_is_an_empty_list() -> None:
    assert process_types(orjson.dumps({"buildpacks": []}).decode()) == []


@pytest.mark.parametrize(
    ("label", "error"),
    [
        (None, "no io.buildpacks.build.metadata label"),
        ("", "failed to unmarshal build metadata"),
        ("{", "failed to unmarshal build metadata"),
        ("[]", "not a JSON object"),
        (metadata({"command": "x"}), "a process has no type"),
        (metadata({"type": "web", "command": 3}), "not a list of strings"),
        (metadata({"type": "web", "command": "x", "args": "y"}), "not a list of strings"),
    ],
)
def test_unusable_metadata_is_a_droplet_error(label: str | None, error: str) -> None:
    with pytest.raises(DropletError, match=error):
        process_types(label)


def test_ports_are_stable_and_unique() -> None:
    assert stable_ports([8443, 8080, 8080]) == [8080, 8443]


def test_droplet() -> None:
    label = metadata({"type": "web", "command": "run"})
    assert droplet("reg/app@sha256:1", "jammy", {k.BUILD_METADATA_LABEL: label}, [9090], [{"name": "s"}]) == {
        "registry": {"image": "reg/app@sha256:1", "imagePullSecrets": [{"name": "s"}]},
        "stack": "jammy",
        "processTypes": [{"type": "web", "command": "run"}],
        "ports": [9090],
    }


def test_builder_names_are_korifis() -> None:
    assert k.builder_name(["repo/my-buildpack"]) == "6ca56fe9-868d-5cb9-9d4f-6c99cf1d1329"
    assert (
        k.builder_name(["paketo-buildpacks/java", "paketo-buildpacks/go"])
        == "d737f9b0-e4cd-567b-9bcf-044393103cf1"
    )


def test_set_condition_moves_the_transition_time_only_when_the_status_flips() -> None:
    conditions: list[dict[str, object]] = []
    assert set_condition(conditions, "Ready", "False", "A", "a", 1, now="t1")
    assert not set_condition(conditions, "Ready", "False", "A", "a", 1, now="t2")
    assert set_condition(conditions, "Ready", "False", "B", "b", 2, now="t3")
    assert conditions[0]["lastTransitionTime"] == "t1"
    assert set_condition(conditions, "Ready", "True", "C", "c", 2, now="t4")
    assert conditions == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "C",
            "message": "c",
            "lastTransitionTime": "t4",
            "observedGeneration": 2,
        }
    ]


def test_only_permanent_refusals_fail_a_workload() -> None:
    from service.kube import errors
    from service.reconcilers.kpack_objects import permanent_refusal

    prefix = 'admission webhook "validation.webhook.kpack.io" denied the request: validation failed: '
    immutable = errors.BadRequest(prefix + "Immutable field changed: spec.tag\ngot: a, want: b")
    assert permanent_refusal(immutable) == immutable.message
    assert permanent_refusal(errors.BadRequest(prefix + "Field cannot be decreased: spec.cache.volume.size"))
    malformed = errors.BadRequest(prefix + "invalid value: not a reference!: spec.source.registry.image")
    assert permanent_refusal(malformed) == malformed.message
    # The API server refuses a new object it finds invalid, or one too large, every time.
    assert permanent_refusal(errors.Invalid('Image.kpack.io "A_B" is invalid'), creating=True)
    too_large = errors.ApiError("the request is too large", code=413)
    assert permanent_refusal(too_large) == too_large.message
    # The one kpack rule about the cluster's state, another vendor's webhook, a 422 on a patch (it may be
    # about the stored object's state), other errors: retried.
    no_default = prefix + (
        "spec.cache.volume.size cannot be set without spec.cache.volume.storageClassName or a default "
        "StorageClass: "
    )
    assert permanent_refusal(errors.BadRequest(no_default)) is None
    assert (
        permanent_refusal(
            errors.BadRequest(
                'admission webhook "policy.example.com" denied the request: Immutable field changed'
            )
        )
        is None
    )
    assert permanent_refusal(errors.Invalid("Immutable field changed")) is None
    assert permanent_refusal(errors.InternalError("failed calling webhook"), creating=True) is None


def test_owner_references_are_kept_per_owner_name_and_follow_a_new_uid() -> None:
    from service.reconcilers.kpack_objects import add_owner

    def workload(name: str, uid: str) -> dict[str, object]:
        return {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {"name": name, "uid": uid},
        }

    image: dict[str, object] = {"metadata": {}}
    add_owner(image, workload("a", "1"))
    add_owner(image, workload("b", "2"))
    add_owner(image, workload("a", "1"))
    add_owner(image, workload("a", "3"))  # deleted and created again under its name
    refs = image["metadata"]["ownerReferences"]  # type: ignore[index]
    assert [(r["name"], r["uid"]) for r in refs] == [("a", "3"), ("b", "2")]
    assert all("controller" not in r for r in refs)


def test_a_failure_is_ordinary_weather_unless_it_wraps_a_bug() -> None:
    from service.kube import errors
    from service.reconcilers.buildworkload.attempt import Failure
    from service.registry.errors import Unreachable
    from service.runtime.reconcile import judge

    def made_of(cause: BaseException | None) -> Failure:
        failure = Failure("failed getting image config")
        failure.__cause__ = cause
        return failure

    for plain in (made_of(None), made_of(Unreachable("registry down")), made_of(errors.InternalError("x"))):
        assert not judge(plain).traceback
    assert judge(made_of(KeyError("status"))).traceback
