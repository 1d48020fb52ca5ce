"""Go's ``encoding/json`` over a declared Go type, so objects round-trip as they do through kpack's webhook.

kpack's defaulting webhook decodes the request object into the Go struct of its kind and answers with a
patch to the re-encoded struct (knative's ``roundTripPatch``). What a client reads back is therefore what
Go's encoder writes: unknown fields are gone, fields without ``omitempty`` appear with zero values
(``spec.build.resources: {}``, a Build's ``status.stack: {}`` and ``lifecycleVersion: ""``), quantities and
times are canonical, and a value of the wrong JSON type is refused with Go's ``UnmarshalTypeError`` text.
The kpack controllers also write through Go types, so the simulator encodes its own writes with the same
model. Types are declared with the classes below (``kpack/apis.py`` has kpack's); Go values are plain
Python values: a struct is a dict holding every field (zero values included), nil is ``None``.

Decoding follows ``encoding/json``: a JSON key matches a field exactly, else ASCII case-insensitively; a
repeated key decodes into the value already there; ``null`` clears pointers, slices, maps and interfaces
and leaves other values alone; a type mismatch is recorded (the first one is reported) and decoding goes
on, while an ``UnmarshalJSON`` error (quantities, times) ends it. Encoding writes struct fields in
declaration order and map keys sorted, and ``omitempty`` omits false, 0, "", nil and empty slices and
maps but never structs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.kube import quantity
from service.kube.timestamps import rfc3339


class DecodeError(ValueError):
    """A value Go's decoder refuses; ``str()`` is Go's error text."""


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _number_literal(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return f"{value:.1f}"
    return str(value)


class Decoder:
    def __init__(self, *, disallow_unknown_fields: bool = False) -> None:
        self.disallow_unknown_fields = disallow_unknown_fields
        self.error: str | None = None

    def type_error(self, value: str, go_type: str, struct: str, path: Sequence[str]) -> None:
        if self.error is not None:
            return
        if struct or path:
            self.error = f"json: cannot unmarshal {value} into Go struct field {struct}.{'.'.join(path)} of type {go_type}"
        else:
            self.error = f"json: cannot unmarshal {value} into Go value of type {go_type}"

    def other_error(self, message: str) -> None:
        if self.error is None:
            self.error = message


class GoType:
    go_name = ""

    def zero(self) -> Any:
        return None

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> Any:
        raise NotImplementedError

    def empty(self, value: Any) -> bool:
        return value is None


class String(GoType):
    def __init__(self, go_name: str = "string") -> None:
        self.go_name = go_name

    def zero(self) -> Any:
        return ""

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        if raw is None:
            return current
        if not isinstance(raw, str):
            d.type_error(_json_kind(raw), self.go_name, struct, path)
            return current
        return raw

    def encode(self, value: Any) -> Any:
        return value

    def empty(self, value: Any) -> bool:
        return bool(value == "")


class Int(GoType):
    def __init__(self, bits: int = 64, go_name: str = "") -> None:
        self.bits = bits
        self.go_name = go_name or ("int" if bits == 0 else f"int{bits}")

    def zero(self) -> Any:
        return 0

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        if raw is None:
            return current
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            d.type_error(_json_kind(raw), self.go_name, struct, path)
            return current
        bits = self.bits or 64
        if isinstance(raw, float) or not -(2 ** (bits - 1)) <= raw < 2 ** (bits - 1):
            d.type_error(f"number {_number_literal(raw)}", self.go_name, struct, path)
            return current
        return raw

    def encode(self, value: Any) -> Any:
        return value

    def empty(self, value: Any) -> bool:
        return bool(value == 0)


class Bool(GoType):
    go_name = "bool"

    def zero(self) -> Any:
        return False

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        if raw is None:
            return current
        if not isinstance(raw, bool):
            d.type_error(_json_kind(raw), self.go_name, struct, path)
            return current
        return raw

    def encode(self, value: Any) -> Any:
        return value

    def empty(self, value: Any) -> bool:
        return value is False


class Any_(GoType):
    """``interface{}`` (or a type modelled opaquely): any JSON value, kept as it is."""

    go_name = "interface {}"

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        return raw

    def encode(self, value: Any) -> Any:
        return value


class Quantity(GoType):
    """``resource.Quantity``: a JSON string or number, re-encoded canonically."""

    go_name = "resource.Quantity"

    def zero(self) -> Any:
        return quantity.ZERO

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        if raw is None:
            return quantity.ZERO
        text = raw if isinstance(raw, str) else _raw_json(raw)
        try:
            return quantity.parse(text.strip())
        except quantity.QuantityError as exc:
            raise DecodeError(str(exc)) from None

    def encode(self, value: Any) -> Any:
        return str(value)

    def empty(self, value: Any) -> bool:
        return False  # a struct: omitempty never omits it


class Time(GoType):
    """``metav1.Time`` (and kpack's ``VolatileTime``): RFC 3339 in UTC to the second, ``null`` when zero."""

    go_name = "v1.Time"

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise DecodeError(f"json: cannot unmarshal {_json_kind(raw)} into Go value of type string")
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
            if parsed.tzinfo is None or "T" not in raw.upper():
                raise ValueError
        except ValueError:
            raise DecodeError(
                f'parsing time "{raw}" as "2006-01-02T15:04:05Z07:00": cannot parse "{raw}" as "2006"'
            ) from None
        return rfc3339(parsed)

    def encode(self, value: Any) -> Any:
        return value

    def empty(self, value: Any) -> bool:
        return False


def _raw_json(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return _number_literal(raw)
    return "{}" if isinstance(raw, dict) else "[]"


class Ptr(GoType):
    def __init__(self, elem: GoType) -> None:
        self.elem = elem
        self.go_name = elem.go_name  # errors name the pointed-to type (Go indirects first)

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        if raw is None:
            return None
        base = current if current is not None else self.elem.zero()
        return self.elem.decode(raw, base, d, struct, path)

    def encode(self, value: Any) -> Any:
        return None if value is None else self.elem.encode(value)


class Slice(GoType):
    def __init__(self, elem: GoType, go_name: str = "") -> None:
        self.elem = elem
        self.go_name = go_name or f"[]{elem.go_name}"

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        if raw is None:
            return None
        if not isinstance(raw, list):
            d.type_error(_json_kind(raw), self.go_name, struct, path)
            return current
        return [self.elem.decode(item, self.elem.zero(), d, struct, path) for item in raw]

    def encode(self, value: Any) -> Any:
        return None if value is None else [self.elem.encode(v) for v in value]

    def empty(self, value: Any) -> bool:
        return not value


class Map(GoType):
    """``map[string]V``."""

    def __init__(self, elem: GoType, go_name: str = "") -> None:
        self.elem = elem
        self.go_name = go_name or f"map[string]{elem.go_name}"

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            d.type_error(_json_kind(raw), self.go_name, struct, path)
            return current
        out = dict(current) if isinstance(current, dict) else {}
        for key, item in raw.items():
            out[key] = self.elem.decode(item, self.elem.zero(), d, struct, path)
        return out

    def encode(self, value: Any) -> Any:
        return None if value is None else {k: self.elem.encode(value[k]) for k in sorted(value)}

    def empty(self, value: Any) -> bool:
        return not value


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: GoType
    omitempty: bool = False


@dataclass(eq=False)
class Struct(GoType):
    """A Go struct. Embedded (``json:",inline"``) structs are declared by listing their fields in place;
    ``struct_name`` is the Go type's name that errors print (``ImageSpec``)."""

    go_name: str
    fields: list[Field] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.struct_name = self.go_name.rpartition(".")[2]
        self._exact = {f.name: f for f in self.fields}
        self._folded: dict[str, Field] = {}
        for f in self.fields:
            self._folded.setdefault(f.name.lower(), f)

    def zero(self) -> Any:
        return {f.name: f.type.zero() for f in self.fields}

    def field_type(self, name: str) -> GoType:
        return self._exact[name].type

    def decode(self, raw: Any, current: Any, d: Decoder, struct: str, path: tuple[str, ...]) -> Any:
        if raw is None:
            return current
        if not isinstance(raw, dict):
            d.type_error(_json_kind(raw), self.go_name, struct, path)
            return current
        out = dict(current) if isinstance(current, dict) else self.zero()
        for key, item in raw.items():
            f = self._exact.get(key) or self._folded.get(key.lower())
            if f is None:
                if d.disallow_unknown_fields:
                    d.other_error(f'json: unknown field "{key}"')
                continue
            out[f.name] = f.type.decode(item, out[f.name], d, self.struct_name, (*path, f.name))
        return out

    def encode(self, value: Any) -> Any:
        out = {}
        for f in self.fields:
            v = value.get(f.name, f.type.zero()) if isinstance(value, dict) else f.type.zero()
            if f.omitempty and f.type.empty(v):
                continue
            out[f.name] = f.type.encode(v)
        return out

    def empty(self, value: Any) -> bool:
        return False


def fields(*spec: tuple[str, GoType] | tuple[str, GoType, bool] | Sequence[Field]) -> list[Field]:
    """Field list shorthand: ``("name", type)`` (no omitempty), ``("name", type, True)`` (omitempty), or a
    list of Fields to inline (an embedded struct)."""
    out: list[Field] = []
    for item in spec:
        if isinstance(item, tuple):
            name, typ = item[0], item[1]
            out.append(Field(name, typ, bool(item[2]) if len(item) > 2 else False))
        else:
            out.extend(item)
    return out


def decode(typ: GoType, raw: Any, *, disallow_unknown_fields: bool = False) -> Any:
    """Decode a JSON value into a Go value of ``typ``; DecodeError with Go's message on failure."""
    d = Decoder(disallow_unknown_fields=disallow_unknown_fields)
    value = typ.decode(raw, typ.zero(), d, "", ())
    if d.error is not None:
        raise DecodeError(d.error)
    return value


def encode(typ: GoType, value: Any) -> Any:
    return typ.encode(value)


def roundtrip(typ: GoType, raw: Any) -> Any:
    return encode(typ, decode(typ, raw))
