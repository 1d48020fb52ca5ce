"""CustomResourceDefinition ``openAPIV3Schema`` semantics: pruning, defaulting and validation.

Mirrors apiextensions-apiserver for structural schemas: unknown fields vanish unless a node has
``x-kubernetes-preserve-unknown-fields``; ``null`` in a non-nullable field without a default is dropped;
defaults fill absent fields; then types, ``required``, ``enum`` and the value limits are checked.
"""

from __future__ import annotations

import calendar
import copy
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

Schema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Cause:
    reason: str  # FieldValueRequired, FieldValueInvalid, FieldValueTypeInvalid, FieldValueNotSupported, ...
    field: str
    message: str

    def render(self) -> str:
        return f"{self.field}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


_ROOT_KEEP = ("apiVersion", "kind", "metadata")
_ABSENT = object()  # not in the stored object (``None`` is a value there)


def apply_schema(
    obj: dict[str, Any], schema: Schema | None, old: dict[str, Any] | None = None
) -> list[Cause]:
    """Prune, default and validate ``obj`` (a fresh copy the caller owns) in place; return what is wrong.

    ``old``, on an update, is the stored object when it went through this same schema: a value equal to
    its at the same place (``spec`` on a status write, a condition that did not change) is not walked
    again, as pruning and defaulting it again would change nothing, and kube-apiserver's validation
    ratcheting does not report on unchanged values. The walk is the largest part of a write in the
    emulator's own code (``benchmarks/emulator.py``'s core lifecycle writes), not of a request served."""
    if not schema:
        return []
    causes: list[Cause] = []
    props = schema.get("properties") or {}
    keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    for key in list(obj):
        if key in _ROOT_KEEP:
            continue
        before = old.get(key, _ABSENT) if old is not None else _ABSENT
        if before is not _ABSENT and obj[key] == before:
            continue
        sub = props.get(key)
        if sub is None:
            if not keep_unknown:
                del obj[key]
            continue
        if obj[key] is None and not sub.get("nullable"):
            del obj[key]
            continue
        obj[key] = _walk(obj[key], sub, key, causes, before)
    _fill_defaults(obj, props)
    for key in schema.get("required") or ():
        if key not in obj:
            causes.append(Cause("FieldValueRequired", key, "Required value"))
    return causes


def _fill_defaults(obj: dict[str, Any], props: Schema) -> None:
    for key, sub in props.items():
        if key not in obj and "default" in sub:
            obj[key] = copy.deepcopy(sub["default"])


_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _type_ok(value: Any, want: str) -> bool:
    if want == "string":
        return isinstance(value, str)
    if want == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if want == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if want == "boolean":
        return isinstance(value, bool)
    if want == "object":
        return isinstance(value, dict)
    if want == "array":
        return isinstance(value, list)
    return True


def _render_value(value: Any) -> str:
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, dict | list):
        return '"' + _TYPE_NAMES[type(value)] + '"'
    return orjson.dumps(value).decode()


@lru_cache(maxsize=512)
def _pattern(expr: str) -> re.Pattern[str]:
    r"""``expr`` with Go's (RE2's) meaning of ``$``: the end of the text. Python's ``$`` also matches before
    a final newline, which would let ``"Ready\n"`` pass ``^[A-Za-z]+$``; so an unescaped ``$`` outside a
    character class becomes ``\Z``."""
    out, i, in_class = [], 0, False
    while i < len(expr):
        c = expr[i]
        if c == "\\":
            out.append(expr[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            # A ']' first in the class (after an optional '^') is a literal, not its end.
            start = i + 1 + (expr[i + 1 : i + 2] == "^")
            if expr[start : start + 1] == "]":
                out.append(expr[i : start + 1])
                i = start + 1
                continue
        elif c == "]" and in_class:
            in_class = False
        out.append("\\Z" if c == "$" and not in_class else c)
        i += 1
    return re.compile("".join(out))


_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_TIME_OF_DAY = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))\Z")


@lru_cache(maxsize=4096)  # the same few timestamps (this second's, a condition's) over and over
def _is_date_time(value: str) -> bool:
    """kube-openapi's ``strfmt.IsDateTime``: a calendar date (Go's ``2006-01-02``), ``T`` (either case), a
    time of day and a zone (``Z`` or ``±hh:mm``)."""
    parts = value.lower().split("t")
    date = _DATE.fullmatch(parts[0])
    if len(value) < 4 or len(parts) < 2 or date is None:
        return False
    year, month, day = (int(g) for g in date.groups())
    if not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month] + (month == 2 and calendar.isleap(year)):
        return False
    time = _TIME_OF_DAY.match(parts[1])
    return time is not None and time[1] <= "23" and time[2] <= "59" and time[3] <= "59"


# The string formats kube-apiserver checks that this project's and kpack's CRDs use (int32 and int64 are
# not checked on a number).
_FORMATS = {"date-time": _is_date_time}


def _walk(value: Any, schema: Schema, path: str, causes: list[Cause], old: Any = None) -> Any:
    """``value`` pruned and defaulted, its problems added to ``causes``; ``old``: what was stored at the same
    place through the same schema (``apply_schema``), whose equal parts are not walked again."""
    if value is None:
        if not schema.get("nullable"):
            causes.append(
                Cause(
                    "FieldValueTypeInvalid",
                    path,
                    f'Invalid value: "null": {path} in body must be of type {schema.get("type", "object")}: "null"',
                )
            )
        return value
    want = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok(value, "integer")):
            causes.append(
                Cause(
                    "FieldValueTypeInvalid",
                    path,
                    f"Invalid value: {_render_value(value)}: {path} in body must be of type integer or string",
                )
            )
        return value
    if want and not _type_ok(value, want):
        actual = _TYPE_NAMES.get(type(value), "unknown")
        causes.append(
            Cause(
                "FieldValueTypeInvalid",
                path,
                f'Invalid value: "{actual}": {path} in body must be of type {want}: "{actual}"',
            )
        )
        return value
    if isinstance(value, dict):
        value = _walk_object(value, schema, path, causes, old if isinstance(old, dict) else None)
    elif isinstance(value, list):
        items = schema.get("items")
        if items:
            stored = old if isinstance(old, list) else ()
            value = [
                v
                if i < len(stored) and v == stored[i]
                else _walk(v, items, f"{path}[{i}]", causes, stored[i] if i < len(stored) else None)
                for i, v in enumerate(value)
            ]
        _check_array(value, schema, path, causes)
    else:
        _check_scalar(value, schema, path, causes)
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_render_value(v) for v in schema["enum"])
        causes.append(
            Cause(
                "FieldValueNotSupported",
                path,
                f"Unsupported value: {_render_value(value)}: supported values: {supported}",
            )
        )
    return value


def _walk_object(
    value: dict[str, Any], schema: Schema, path: str, causes: list[Cause], old: dict[str, Any] | None
) -> dict[str, Any]:
    props = schema.get("properties")
    additional = schema.get("additionalProperties")
    keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(schema.get("x-kubernetes-embedded-resource"))
    for key in list(value):
        before = old.get(key, _ABSENT) if old is not None else _ABSENT
        if before is not _ABSENT and value[key] == before:
            continue
        sub = props.get(key) if props else None
        if sub is None and isinstance(additional, dict):
            sub = additional
        if sub is None:
            if not (keep_unknown or additional is True or (embedded and key in _ROOT_KEEP)):
                del value[key]
            continue
        if value[key] is None and not sub.get("nullable") and "default" not in sub:
            del value[key]
            continue
        value[key] = _walk(value[key], sub, f"{path}.{key}", causes, before)
    if props:
        _fill_defaults(value, props)
    for key in schema.get("required") or ():
        if key not in value:
            causes.append(Cause("FieldValueRequired", f"{path}.{key}", "Required value"))
    n = len(value)
    if "maxProperties" in schema and n > schema["maxProperties"]:
        causes.append(
            Cause(
                "FieldValueTooMany", path, f"Too many: {n}: must have at most {schema['maxProperties']} items"
            )
        )
    if "minProperties" in schema and n < schema["minProperties"]:
        causes.append(
            Cause(
                "FieldValueInvalid",
                path,
                f"Invalid value: {n}: {path} in body should have at least {schema['minProperties']} properties",
            )
        )
    return value


def _check_array(value: list[Any], schema: Schema, path: str, causes: list[Cause]) -> None:
    n = len(value)
    if "maxItems" in schema and n > schema["maxItems"]:
        causes.append(
            Cause("FieldValueTooMany", path, f"Too many: {n}: must have at most {schema['maxItems']} items")
        )
    if "minItems" in schema and n < schema["minItems"]:
        causes.append(
            Cause(
                "FieldValueInvalid",
                path,
                f"Invalid value: {n}: {path} in body should have at least {schema['minItems']} items",
            )
        )


def _check_scalar(value: Any, schema: Schema, path: str, causes: list[Cause]) -> None:
    if isinstance(value, str):
        check = _FORMATS.get(schema.get("format", ""))
        if check is not None and not check(value):
            rendered = _render_value(value)
            causes.append(
                Cause(
                    "FieldValueTypeInvalid",
                    path,
                    f"Invalid value: {rendered}: {path} in body must be of type {schema['format']}: {rendered}",
                )
            )
        # As kube-openapi's string validator: maxLength, minLength, pattern, and only the first that fails.
        length = len(value)  # in characters, as Go's utf8.RuneCountInString
        if "maxLength" in schema and length > schema["maxLength"]:
            causes.append(
                Cause(
                    "FieldValueTooLong", path, f"Too long: may not be more than {schema['maxLength']} bytes"
                )
            )
        elif "minLength" in schema and length < schema["minLength"]:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {_render_value(value)}: {path} in body should be at least "
                    f"{schema['minLength']} chars long",
                )
            )
        elif "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {_render_value(value)}: {path} in body should match '{schema['pattern']}'",
                )
            )
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {value}: {path} in body should be greater than or equal to {schema['minimum']}",
                )
            )
        if "maximum" in schema and value > schema["maximum"]:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {value}: {path} in body should be less than or equal to {schema['maximum']}",
                )
            )


def structural_errors(schema: Schema, path: str = "openAPIV3Schema") -> list[str]:
    """The parts of a CRD schema that make it non-structural (kube-apiserver refuses such CRDs)."""
    errs: list[str] = []
    if not isinstance(schema, dict):
        return [f"{path}: must be an object"]
    has_shape = "properties" in schema or "additionalProperties" in schema or "items" in schema
    if has_shape and "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        errs.append(f"{path}.type: Required value: must not be empty for specified object fields")
    if (
        "properties" in schema
        and "additionalProperties" in schema
        and schema["additionalProperties"] is not False
    ):
        errs.append(
            f"{path}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
        )
    for key, sub in (schema.get("properties") or {}).items():
        errs.extend(structural_errors(sub, f"{path}.properties[{key}]"))
    if isinstance(schema.get("items"), dict):
        errs.extend(structural_errors(schema["items"], f"{path}.items"))
    elif schema.get("type") == "array" and "items" not in schema:
        errs.append(f"{path}.items: Required value: must be specified")
    if isinstance(schema.get("additionalProperties"), dict):
        errs.extend(structural_errors(schema["additionalProperties"], f"{path}.additionalProperties"))
    return errs
