"""OpenAPI v2 in protobuf, as kube-apiserver serves it to kubectl.

kubectl (and client-go's ``OpenAPISchema``) asks for ``/openapi/v2`` only as gnostic's
``openapi.v2.Document`` protobuf message, with no JSON fallback: Debian's kubectl 1.20 for every
client-side validation, ``explain`` and ``apply``; newer ones for client-side validation when the server
does not take ``fieldValidation`` (as the emulator does not). The wire format is simple and the documents
use a small part of the message set, so this encodes the JSON document directly: for each message, its
JSON keys with their field numbers and types, those of gnostic's ``OpenAPIv2.proto``.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

Obj = dict[str, Any]

# For each message, as far as the documents use them: its JSON keys with (field number, type); a type is
# a scalar ("string", "bool", "int64", "double"), "any" (an Any holding the value as YAML) or another
# message. Maps of named values (definitions, properties, paths...) and the one-of wrappers are handled by
# the encoder itself.
_S, _B, _I, _D, _ANY = "string", "bool", "int64", "double", "any"
_PRIMITIVE_FIELDS = {
    "type": (1, _S), "format": (2, _S), "items": (3, "PrimitivesItems"), "collectionFormat": (4, _S),
    "default": (5, _ANY), "maximum": (6, _D), "exclusiveMaximum": (7, _B), "minimum": (8, _D),
    "exclusiveMinimum": (9, _B), "maxLength": (10, _I), "minLength": (11, _I), "pattern": (12, _S),
    "maxItems": (13, _I), "minItems": (14, _I), "uniqueItems": (15, _B), "enum": (16, _ANY),
    "multipleOf": (17, _D),
}  # fmt: skip


def _shifted(
    fields: dict[str, tuple[int, str]], by: int, **extra: tuple[int, str]
) -> dict[str, tuple[int, str]]:
    return {**extra, **{k: (n + by, t) for k, (n, t) in fields.items()}}


MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "Document": {
        "swagger": (1, _S), "info": (2, "Info"), "host": (3, _S), "basePath": (4, _S), "schemes": (5, _S),
        "consumes": (6, _S), "produces": (7, _S), "paths": (8, "Paths"), "definitions": (9, "Definitions"),
        "parameters": (10, "ParameterDefinitions"), "security": (12, "SecurityRequirement"),
        "securityDefinitions": (13, "SecurityDefinitions"), "tags": (14, "Tag"),
        "externalDocs": (15, "ExternalDocs"),
    },
    "Info": {"title": (1, _S), "version": (2, _S), "description": (3, _S), "termsOfService": (4, _S)},
    "ExternalDocs": {"description": (1, _S), "url": (2, _S)},
    "Tag": {"name": (1, _S), "description": (2, _S), "externalDocs": (3, "ExternalDocs")},
    "PathItem": {
        "$ref": (1, _S), "get": (2, "Operation"), "put": (3, "Operation"), "post": (4, "Operation"),
        "delete": (5, "Operation"), "options": (6, "Operation"), "head": (7, "Operation"),
        "patch": (8, "Operation"), "parameters": (9, "ParametersItem"),
    },
    "Operation": {
        "tags": (1, _S), "summary": (2, _S), "description": (3, _S), "externalDocs": (4, "ExternalDocs"),
        "operationId": (5, _S), "produces": (6, _S), "consumes": (7, _S), "parameters": (8, "ParametersItem"),
        "responses": (9, "Responses"), "schemes": (10, _S), "deprecated": (11, _B),
        "security": (12, "SecurityRequirement"),
    },
    "JsonReference": {"$ref": (1, _S), "description": (2, _S)},
    "BodyParameter": {
        "description": (1, _S), "name": (2, _S), "in": (3, _S), "required": (4, _B), "schema": (5, "Schema"),
    },
    "QueryParameterSubSchema": _shifted(
        _PRIMITIVE_FIELDS, 5, required=(1, _B), **{"in": (2, _S)}, description=(3, _S), name=(4, _S),
        allowEmptyValue=(5, _B),
    ),
    "PathParameterSubSchema": _shifted(
        _PRIMITIVE_FIELDS, 4, required=(1, _B), **{"in": (2, _S)}, description=(3, _S), name=(4, _S)
    ),
    "PrimitivesItems": _PRIMITIVE_FIELDS,
    "Response": {"description": (1, _S), "schema": (2, "SchemaItem")},
    "Schema": {
        "$ref": (1, _S), "format": (2, _S), "title": (3, _S), "description": (4, _S), "default": (5, _ANY),
        "multipleOf": (6, _D), "maximum": (7, _D), "exclusiveMaximum": (8, _B), "minimum": (9, _D),
        "exclusiveMinimum": (10, _B), "maxLength": (11, _I), "minLength": (12, _I), "pattern": (13, _S),
        "maxItems": (14, _I), "minItems": (15, _I), "uniqueItems": (16, _B), "maxProperties": (17, _I),
        "minProperties": (18, _I), "required": (19, _S), "enum": (20, _ANY),
        "additionalProperties": (21, "AdditionalPropertiesItem"), "type": (22, "TypeItem"),
        "items": (23, "ItemsItem"), "allOf": (24, "Schema"), "properties": (25, "Properties"),
        "discriminator": (26, _S), "readOnly": (27, _B), "externalDocs": (29, "ExternalDocs"),
        "example": (30, _ANY),
    },
    "ApiKeySecurity": {"type": (1, _S), "name": (2, _S), "in": (3, _S), "description": (4, _S)},
}  # fmt: skip
# Where each message keeps its vendor extensions (``x-...`` keys, as NamedAny).
VENDOR_EXTENSION = {
    "Document": 16, "Info": 7, "ExternalDocs": 3, "Tag": 4, "PathItem": 10, "Operation": 13,
    "BodyParameter": 6, "QueryParameterSubSchema": 23, "PathParameterSubSchema": 22, "PrimitivesItems": 18,
    "Response": 5, "Schema": 31, "ApiKeySecurity": 5, "Paths": 1, "Responses": 2,
}  # fmt: skip
# Messages that are maps of named values: (field of the entries, the value's message).
NAMED = {
    "Paths": (2, "PathItem"),
    "Definitions": (1, "Schema"),
    "Properties": (1, "Schema"),
    "ParameterDefinitions": (1, "Parameter"),
    "Responses": (1, "ResponseValue"),
    "SecurityDefinitions": (1, "SecurityDefinitionsItem"),
    "SecurityRequirement": (1, "StringArray"),
}


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _any(value: Any) -> bytes:
    """An ``Any`` holding ``value`` as YAML (JSON is YAML; kube-openapi reads it with a YAML parser)."""
    return _len_field(2, orjson.dumps(value))


def _scalar(number: int, kind: str, value: Any) -> bytes:
    # proto3: zero values are not written (as Go's encoder does; the real server loses them too)
    if kind == _S:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return _len_field(number, value.encode()) if value else b""
    if kind == _B:
        if not isinstance(value, bool):
            raise ValueError(f"expected a boolean, got {value!r}")
        return _varint(number << 3) + b"\x01" if value else b""
    if kind == _I:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ValueError(f"expected an integer, got {value!r}")
        return _varint(number << 3) + _varint(int(value)) if value else b""
    if kind == _D:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        return _varint(number << 3 | 1) + struct.pack("<d", float(value)) if value else b""
    raise AssertionError(kind)


def _named(number: int, name: str, value: bytes) -> bytes:
    return _len_field(number, _len_field(1, name.encode()) + _len_field(2, value))


_NON_BODY = {"query": (3, "QueryParameterSubSchema"), "path": (4, "PathParameterSubSchema")}


def encode(message: str, value: Any) -> bytes:
    """``value`` (JSON) as the gnostic message ``message``: what gnostic's compiler makes of it, then
    ``proto.Marshal``. A key the message has no field for is an error (gnostic refuses it too)."""
    if message in NAMED:
        number, inner = NAMED[message]
        out = bytearray()
        for k, v in value.items():
            if k.startswith("x-") and message in VENDOR_EXTENSION:
                out += _named(VENDOR_EXTENSION[message], k, _any(v))
            else:
                out += _named(number, k, encode(inner, v))
        return bytes(out)
    if message == "ParametersItem":
        if "$ref" in value:
            return _len_field(2, encode("JsonReference", value))
        return _len_field(1, encode("Parameter", value))
    if message == "ResponseValue":
        if "$ref" in value:
            return _len_field(2, encode("JsonReference", value))
        return _len_field(1, encode("Response", value))
    if message == "Parameter":
        where = value.get("in")
        if where == "body":
            return _len_field(1, encode("BodyParameter", value))
        if where not in _NON_BODY:
            raise ValueError(f"unsupported parameter location {where!r}")
        number, inner = _NON_BODY[where]
        return _len_field(2, _len_field(number, encode(inner, value)))
    if message == "SchemaItem":
        return _len_field(1, encode("Schema", value))
    if message == "AdditionalPropertiesItem":
        if isinstance(value, bool):
            return _varint(2 << 3) + (b"\x01" if value else b"\x00")  # a oneof member is always written
        return _len_field(1, encode("Schema", value))
    if message == "TypeItem":
        types = value if isinstance(value, list) else [value]
        return b"".join(_scalar(1, _S, t) for t in types)
    if message == "ItemsItem":
        schemas = value if isinstance(value, list) else [value]
        return b"".join(_len_field(1, encode("Schema", s)) for s in schemas)
    if message == "StringArray":
        return b"".join(_scalar(1, _S, s) for s in value)
    if message == "SecurityDefinitionsItem":
        if value.get("type") != "apiKey":
            raise ValueError(f"unsupported security definition {value!r}")
        return _len_field(2, encode("ApiKeySecurity", value))
    fields = MESSAGES[message]
    out = bytearray()
    for key, v in value.items():
        if key.startswith("x-") and message in VENDOR_EXTENSION:
            out += _named(VENDOR_EXTENSION[message], key, _any(v))
            continue
        if key not in fields:
            raise ValueError(f"{message} has no field {key!r}")
        number, kind = fields[key]
        repeated = isinstance(v, list) and kind not in ("TypeItem", "ItemsItem")
        for item in v if repeated else [v]:
            if kind == _ANY:
                out += _len_field(number, _any(item))
            elif kind in (_S, _B, _I, _D):
                out += _scalar(number, kind, item)
            else:
                out += _len_field(number, encode(kind, item))
    return bytes(out)


def encode_document(doc: Obj) -> bytes:
    """An OpenAPI v2 document as kube-apiserver serves it in protobuf (``openapi.v2.Document``)."""
    return encode("Document", doc)
