"""What a write must satisfy before it is stored, and the errors a refusal is answered with.

These are pure functions of the request and the stored object: they read no cluster state, so the write
verbs call them at the point kube-apiserver runs each check (the body's kind and apiVersion first,
metadata and the schema after mutating admission) and the order of refusals a client sees is the real
one. Each returns or raises what kube-apiserver would send: ``Invalid`` with every cause at once (422
with ``details.causes``), ``Conflict`` for a stale resourceVersion or uid, and StatusDetails in its
shape.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.kube import errors
from service.kube.names import (
    dns1123_label_errors,
    dns1123_subdomain_errors,
    label_value_errors,
    qualified_name_errors,
)
from simcluster import schema as schemas
from simcluster.kinds import Kind, Obj, built_in_kinds

ANNOTATIONS_LIMIT = 256 * 1024  # apimachinery's TotalAnnotationSizeLimitB


class UnclassifiedError(errors.ApiError):
    """A plain (non-Status) error from kube-apiserver's storage layer: 500, and a Status with no reason."""

    code, reason = 500, ""

    def status(self) -> dict[str, Any]:
        body = super().status()
        body.pop("reason", None)
        return body


def details(kind: Kind, name: str) -> Obj:
    """StatusDetails as kube-apiserver serialises them (empty fields omitted)."""
    out: Obj = {"name": name, "group": kind.group, "kind": kind.plural}
    if not kind.group:
        del out["group"]
    return out


def _by_kind(kind: Kind, name: str) -> tuple[str, Obj]:
    """How validation and the delete preconditions name an object: by its kind (``Widget.example.com``),
    where storage names it by its resource (``widgets.example.com``, as ``details``)."""
    out: Obj = {"name": name, "group": kind.group, "kind": kind.kind}
    if not kind.group:
        del out["group"]
    return (f"{kind.kind}.{kind.group}" if kind.group else kind.kind), out


def invalid(
    kind: Kind, name: str, causes: list[schemas.Cause], *, by_resource: bool = False
) -> errors.Invalid:
    rendered = [c.render() for c in causes]
    text = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    qualified, out = (kind.qualified, details(kind, name)) if by_resource else _by_kind(kind, name)
    out["causes"] = [c.as_dict() for c in causes]
    return errors.Invalid(f'{qualified} "{name}" is invalid: {text}', details=out)


def conflict(kind: Kind, name: str, why: str | None = None) -> errors.Conflict:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return errors.Conflict(
        f'Operation cannot be fulfilled on {kind.qualified} "{name}": {why}', details=details(kind, name)
    )


def precondition_failed(kind: Kind, name: str, field: str, wanted: str, actual: str) -> errors.Conflict:
    """A delete's precondition (``uid`` or ``resourceVersion``) that the stored object does not meet."""
    qualified, out = _by_kind(kind, name)
    label = "UID" if field == "uid" else "ResourceVersion"
    why = "deleted and then recreated" if field == "uid" else "modified"
    return errors.Conflict(
        f'Operation cannot be fulfilled on {qualified} "{name}": the {label} in the precondition '
        f"({wanted}) does not match the {label} in record ({actual}). The object might have been {why}",
        details=out,
    )


def storage_key(kind: Kind, namespace: str | None, name: str) -> str:
    """The object's etcd key, which storage errors quote (built-in kinds' prefixes have no group)."""
    parts = [
        "/registry",
        *([kind.group] if kind.custom else []),
        kind.plural,
        *([namespace] if namespace else []),
    ]
    return "/".join([*parts, name])


def parse_rv(value: Any) -> int:
    """A resourceVersion as storage reads it: 0 when absent or unparsable."""
    try:
        return int(str(value)) if value not in (None, "") else 0
    except ValueError:
        return 0


# What kube-apiserver's scheme knows (only the built-in kinds served here): another kind it knows fails to
# convert, one it does not know is not registered.
_REGISTERED = frozenset((k.api_version(k.storage_version), k.kind) for k in built_in_kinds())


def _undecodable(kind: Kind, api_version: str, kind_name: str) -> errors.BadRequest:
    """A built-in kind's decoder refusing a body of another kind or apiVersion."""
    version = api_version.rpartition("/")[2]
    if (api_version, kind_name) in _REGISTERED:
        internal = kind.group.split(".")[0] if kind.group else "core"
        why = f"converting ({version}.{kind_name}) to ({internal}.{kind.kind}): unknown conversion"
    else:
        why = (
            f'no kind "{kind_name}" is registered for version "{api_version}" in scheme '
            '"pkg/runtime/scheme.go:111"'
        )
    return errors.BadRequest(f'{kind_name} in version "{version}" cannot be handled as a {kind.kind}: {why}')


def check_body(kind: Kind, version: str, body: Any) -> Obj:
    """The request body as an object of ``kind`` (its kind and apiVersion filled in when a built-in kind
    leaves them out), with a metadata object."""
    if not isinstance(body, dict):
        raise errors.BadRequest(
            "the body of the request was in an unknown format - accepted media types "
            "include: application/json, application/yaml"
        )
    want = kind.api_version(version)
    if kind.custom:
        if not body.get("kind"):
            # apimachinery's decode error, with its summary of the body (the first 30 bytes)
            data = orjson.dumps(body).decode()
            summary = data if len(data) <= 30 else f"{data[:30]} ..."
            raise errors.BadRequest(
                f"the object provided is unrecognized (must be of type {kind.kind}): "
                f"Object 'Kind' is missing in '{data}' ({summary})"
            )
        body.setdefault("apiVersion", "")  # refused below, as a mismatch
    api_version, kind_name = body.setdefault("apiVersion", want), body.setdefault("kind", kind.kind)
    if (api_version, kind_name) != (want, kind.kind) and not kind.custom:
        raise _undecodable(kind, str(api_version), str(kind_name))
    if api_version != want:
        raise errors.BadRequest(
            f"the API version in the data ({api_version}) does not match the expected API version ({want})"
        )
    if kind_name != kind.kind:
        # The CRD handler decodes any kind, and its validation then refuses it, named as the data names it.
        group = str(api_version).rpartition("/")[0]
        cause = schemas.Cause(
            "FieldValueInvalid", "kind", f'Invalid value: "{kind_name}": must be {kind.kind}'
        )
        named = Kind(group, kind.plural, str(kind_name), kind.namespaced, {}, "")
        raise invalid(named, str((body.get("metadata") or {}).get("name", "")), [cause])
    meta = body.get("metadata")
    if meta is None:
        body["metadata"] = {}
    elif not isinstance(meta, dict):
        raise errors.BadRequest("metadata must be an object")
    return body


def validate_meta(kind: Kind, obj: Obj, old: Obj | None) -> list[schemas.Cause]:
    """What is wrong with ``obj``'s metadata (``old``: the stored object, on an update)."""
    meta = obj["metadata"]
    causes: list[schemas.Cause] = []

    def bad(field: str, value: Any, msg: str) -> None:
        causes.append(
            schemas.Cause("FieldValueInvalid", field, f"Invalid value: {orjson.dumps(value).decode()}: {msg}")
        )

    name = meta.get("name", "")
    if old is None:
        check = dns1123_label_errors if kind.key == ("", "namespaces") else dns1123_subdomain_errors
        for msg in check(name):
            bad("metadata.name", name, msg)
    # What the stored object holds was checked when it was written: on most writes (every status write)
    # the labels, annotations and finalizers are the stored ones, and their checks are most of this one.
    stored = old["metadata"] if old is not None else {}
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is None or value == stored.get(field):
            continue
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            causes.append(
                schemas.Cause(
                    "FieldValueTypeInvalid",
                    f"metadata.{field}",
                    "Invalid value: must be a map of strings to strings",
                )
            )
            continue
        for key, val in value.items():
            for msg in qualified_name_errors(key):
                bad(f"metadata.{field}", key, msg)
            if field == "labels":
                for msg in label_value_errors(val):
                    bad("metadata.labels", val, msg)
        size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
        if field == "annotations" and size > ANNOTATIONS_LIMIT:
            # apimachinery's ValidateAnnotationsSize: bytes of keys and values, all together
            causes.append(
                schemas.Cause(
                    "FieldValueTooLong",
                    "metadata.annotations",
                    f"Too long: may not be more than {ANNOTATIONS_LIMIT} bytes",
                )
            )
    finalizers = meta.get("finalizers") or []
    if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
        causes.append(
            schemas.Cause(
                "FieldValueTypeInvalid", "metadata.finalizers", "Invalid value: must be a list of strings"
            )
        )
        finalizers = []
    for i, fin in enumerate(finalizers if finalizers != stored.get("finalizers") else ()):
        for msg in qualified_name_errors(fin):
            bad(f"metadata.finalizers[{i}]", fin, msg)
    if old is not None and old["metadata"].get("deletionTimestamp"):
        added = [f for f in finalizers if f not in (old["metadata"].get("finalizers") or [])]
        if added:
            quoted = ", ".join(f'"{f}"' for f in added)
            causes.append(
                schemas.Cause(
                    "FieldValueForbidden",
                    "metadata.finalizers",
                    f"Forbidden: no new finalizers can be added if the object is being deleted, found new "
                    f"finalizers []string{{{quoted}}}",
                )
            )
    refs = meta.get("ownerReferences") or []
    controllers = 0
    for i, ref in enumerate(refs if isinstance(refs, list) else []):
        if not isinstance(ref, dict):
            bad(f"metadata.ownerReferences[{i}]", ref, "must be an object")
            continue
        for field in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(field):
                causes.append(
                    schemas.Cause(
                        "FieldValueInvalid",
                        f"metadata.ownerReferences[{i}].{field}",
                        f'Invalid value: "": {field} must not be empty',
                    )
                )
        controllers += bool(ref.get("controller"))
    if controllers > 1:
        causes.append(
            schemas.Cause(
                "FieldValueInvalid",
                "metadata.ownerReferences",
                "Invalid value: []: Only one reference can have Controller set to true",
            )
        )
    return causes
