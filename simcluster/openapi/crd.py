"""A CRD's part of the OpenAPI documents, as kube-apiserver's apiextensions builder publishes it
(``BuildOpenAPIV3``/``BuildOpenAPIV2`` and ``ToStructuralOpenAPIV2`` in apiextensions-apiserver).

For each served version: the same routes, operation ids, parameters and responses (less ``/scale``,
which the emulator does not serve), and two models, the kind and its list. The kind's model is its
structural schema with ``apiVersion``, ``kind`` and a ``metadata`` reference,
``x-kubernetes-group-version-kind``, int-or-string unfolded and embedded resources completed; in v2
without defaults, junctors and ``nullable``, and an object with unknown fields left open (kubectl
validates against v2, and must not refuse what the schema allows).

What is not derived from the CRD (each operation's query parameters, the ``apiVersion``/``kind``
properties, the descriptions of ``metadata``) is the ``form`` taken from the real server with the
built-in documents (``openapi_builtin.json``, key ``crd``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import orjson

Obj = dict[str, Any]

V2_REF = "#/definitions/"
V3_REF = "#/components/schemas/"
_JSON_YAML = ["application/json", "application/yaml"]
# no application/apply-patch+yaml: the emulator refuses server-side apply
_PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json"]
_API_CONVENTIONS = "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_LIST_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
_STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"
_PATCH = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
_DELETE_OPTIONS = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"


def model_name(group: str, version: str, kind: str) -> str:
    """A CRD model's definition name: the group reversed (``org.cloudfoundry.korifi.v1alpha1.Kind``)."""
    return ".".join([*reversed(group.split(".")), version, kind])


@dataclass(frozen=True, slots=True)
class CRDVersion:
    group: str
    version: str
    kind: str
    list_kind: str
    plural: str
    namespaced: bool
    status: bool
    schema: Obj | None

    @property
    def model(self) -> str:
        return model_name(self.group, self.version, self.kind)

    @property
    def list_model(self) -> str:
        return model_name(self.group, self.version, self.list_kind)

    @property
    def gv(self) -> str:
        """The name of its OpenAPI v3 document."""
        return f"apis/{self.group}/{self.version}"


def crd_versions(crd: Obj) -> list[CRDVersion]:
    """The served versions of a CRD."""
    spec = crd["spec"]
    names = spec["names"]
    return [
        CRDVersion(
            group=spec["group"],
            version=v["name"],
            kind=names["kind"],
            list_kind=names.get("listKind") or names["kind"] + "List",
            plural=names["plural"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            status="status" in (v.get("subresources") or {}),
            schema=(v.get("schema") or {}).get("openAPIV3Schema"),
        )
        for v in spec.get("versions") or []
        if v.get("served", True)
    ]


# ------------------------------------------------------------------------------------------ operation ids
_VERBS = (
    "get",
    "log",
    "read",
    "replace",
    "patch",
    "delete",
    "deletecollection",
    "watch",
    "connect",
    "proxy",
    "list",
    "create",
)


def _valid_operation_id(s: str, capitalize_first: bool) -> str:
    """apiserver's ``ToValidOperationID``: letters, ``_`` and (not first) digits; others capitalise the
    next letter."""
    out = []
    capitalize = capitalize_first
    for i, ch in enumerate(s):
        if ch.isalpha() or ch == "_" or (i != 0 and ch.isdigit()):
            out.append(ch.upper() if capitalize else ch)
            capitalize = False
        else:
            capitalize = True
    return "".join(out)


def operation_id_and_tags(operation: str, path: str) -> tuple[str, list[str]]:
    """apiserver's ``GetOperationIDAndTags`` for an ``/apis/<group>/<version>/...`` route."""
    prefix = min((v for v in _VERBS if operation.startswith(v)), key=len)
    rest = operation[len(prefix) :]
    parts = path.strip("/").split("/")
    group = parts[1].removesuffix(".k8s.io")
    prefix += _valid_operation_id(group, True) + _valid_operation_id(parts[2], True)
    tag = _valid_operation_id(group, False) + "_" + _valid_operation_id(parts[2], False)
    return prefix + _valid_operation_id(rest, True), [tag]


def _article(noun: str) -> str:
    """apiserver's ``GetArticleForNoun`` with a space either side."""
    if noun.endswith("s") and not noun.endswith("ss"):
        return " "
    return " an " if noun[:1].lower() in "aeiou" else " a "


def _description(kind: str, sub: str, verb: str) -> str:
    """The builder's ``descriptionFor``."""
    of = f" {sub} of" if sub else ""
    if verb == "patch":
        return "partially update" + of + " the specified " + kind
    if verb == "deletecollection":
        return "delete collection of" + (of + " a" if of else "") + " " + kind
    if verb in ("create", "delete"):
        return verb + of + _article(kind) + kind
    article = " objects of kind " if verb == "list" else " the specified "
    return verb + of + article + kind


# ------------------------------------------------------------------------------------------ routes
@dataclass(frozen=True, slots=True)
class _Route:
    path: str
    method: str  # lower case
    action: str  # x-kubernetes-action, and which of the form's parameters
    sample: str  # the model answered
    reads: str | None  # the model read from the body
    operation: str
    description: str


def _routes(c: CRDVersion) -> list[_Route]:
    """The routes of one served CRD version, as the builder's ``generateBuilder`` makes them."""
    scope = "Namespaced" if c.namespaced else ""

    def route(
        root: str, sub: str, method: str, action: str, verb: str, sample: str, reads: str | None = None
    ) -> _Route:
        path = root + ("/{name}" if action not in ("list", "post", "deletecollection") else "")
        path += f"/{sub}" if sub else ""
        operation = verb + scope + c.kind + sub.title()
        return _Route(path, method, action, sample, reads, operation, _description(c.kind, sub, verb))

    root = f"/apis/{c.group}/{c.version}/{c.plural}"
    out = []
    if c.namespaced:
        every = route(root, "", "get", "list", "list", c.list_model)
        out.append(
            _Route(
                every.path,
                "get",
                "list",
                c.list_model,
                None,
                f"list{c.kind}ForAllNamespaces",
                every.description,
            )
        )
        root = f"/apis/{c.group}/{c.version}/namespaces/{{namespace}}/{c.plural}"
    out += [
        route(root, "", "get", "list", "list", c.list_model),
        route(root, "", "post", "post", "create", c.model, c.model),
        route(root, "", "delete", "deletecollection", "deletecollection", _STATUS),
        route(root, "", "get", "get", "read", c.model),
        route(root, "", "put", "put", "replace", c.model, c.model),
        route(root, "", "delete", "delete", "delete", _STATUS, _DELETE_OPTIONS),
        route(root, "", "patch", "patch", "patch", c.model, _PATCH),
    ]
    if c.status:
        out += [
            route(root, "status", "get", "get", "read", c.model),
            route(root, "status", "put", "put", "replace", c.model, c.model),
            route(root, "status", "patch", "patch", "patch", c.model, _PATCH),
        ]
    return out


_EXTRA_RESPONSES = {
    "post": (("202", "Accepted"), ("201", "Created")),
    "delete": (("202", "Accepted"),),
    "put": (("201", "Created"),),
}


def _by_path(c: CRDVersion, form: Obj, name_param: Obj) -> dict[str, dict[_Route, list[Obj]]]:
    """Each path's routes with their non-body parameters: ``pretty``, the path's, then the options' (the
    builder's order; they are sorted later)."""
    path_params = form["parameters"]["path"]
    paths: dict[str, dict[_Route, list[Obj]]] = {}
    for r in _routes(c):
        params = [path_params["pretty"]]
        if "{namespace}" in r.path:
            params.append(path_params["namespace"])
        if "{name}" in r.path:
            params.append(name_param)
        paths.setdefault(r.path, {})[r] = params + form["parameters"][r.action]
    return paths


def _split(routes: dict[_Route, list[Obj]]) -> tuple[list[Obj], dict[_Route, list[Obj]]]:
    """The parameters every route of a path has (the path item's), and each route's others."""
    first = next(iter(routes.values()))
    common = [p for p in first if all(p in params for params in routes.values())]
    return common, {r: [p for p in params if p not in common] for r, params in routes.items()}


def _sorted(params: list[Obj]) -> list[Obj]:
    return sorted(params, key=lambda p: (p.get("name", ""), p.get("in", "")))


def _operation(c: CRDVersion, r: _Route, op: Obj, response: Any) -> Obj:
    op["operationId"], op["tags"] = operation_id_and_tags(r.operation, r.path)
    responses: Obj = {"200": {"description": "OK", **response(r.sample)}}
    for code, text in _EXTRA_RESPONSES.get(r.action, ()):
        responses[code] = {"description": text, **response(r.sample)}
    responses["401"] = {"description": "Unauthorized"}
    op["responses"] = dict(sorted(responses.items()))
    op["x-kubernetes-action"] = r.action
    op["x-kubernetes-group-version-kind"] = {"group": c.group, "version": c.version, "kind": c.kind}
    return op


def paths_v3(c: CRDVersion, form: Obj) -> Obj:
    """The v3 paths of a CRD version; ``form``: the ``crd.v3`` part of the built-in data."""
    name_param = {
        "name": "name",
        "in": "path",
        "description": f"name of the {c.kind}",
        "required": True,
        "schema": {"type": "string", "uniqueItems": True},
    }

    def content(model: str, types: list[str]) -> Obj:
        return {t: {"schema": {"$ref": V3_REF + model}} for t in types}

    paths: Obj = {}
    for path, routes in _by_path(c, form, name_param).items():
        common, own = _split(routes)
        item: Obj = {"parameters": _sorted(common)} if common else {}
        for r, params in own.items():
            op: Obj = {"tags": None, "description": r.description, "operationId": None}
            if params:
                op["parameters"] = _sorted(params)
            if r.reads is not None:
                body: Obj = {"content": content(r.reads, _PATCH_TYPES if r.method == "patch" else _JSON_YAML)}
                if r.action != "delete":
                    body["required"] = True
                op["requestBody"] = body
            item[r.method] = _operation(c, r, op, lambda m: {"content": content(m, _JSON_YAML)})
        paths[path] = item
    return paths


def paths_v2(c: CRDVersion, form: Obj, shared: dict[bytes, str]) -> Obj:
    """The v2 paths of a CRD version; ``form``: the ``crd.v2`` part of the built-in data; ``shared``: the
    document's shared parameters by canonical content (kube-openapi replaces a parameter equal to a shared
    one with a reference)."""
    name_param = {
        "uniqueItems": True,
        "type": "string",
        "description": f"name of the {c.kind}",
        "name": "name",
        "in": "path",
        "required": True,
    }

    def refer(params: list[Obj]) -> list[Obj]:
        out = []
        for p in _sorted(params):
            name = shared.get(canonical(p))
            out.append({"$ref": f"#/parameters/{name}"} if name is not None else p)
        return out

    paths: Obj = {}
    for path, routes in _by_path(c, form, name_param).items():
        common, own = _split(routes)
        item: Obj = {}
        for r, params in own.items():
            op: Obj = {
                "description": r.description,
                "consumes": _PATCH_TYPES if r.method == "patch" else _JSON_YAML,
                "produces": _JSON_YAML,
                "schemes": ["https"],
            }
            if r.reads is not None:
                body: Obj = {"name": "body", "in": "body", "schema": {"$ref": V2_REF + r.reads}}
                if r.action != "delete":
                    body["required"] = True
                params = [*params, body]
            _operation(c, r, op, lambda m: {"schema": {"$ref": V2_REF + m}})
            if params:
                op["parameters"] = refer(params)
            item[r.method] = op
        if common:
            item["parameters"] = refer(common)
        paths[path] = item
    return paths


def canonical(value: Any) -> bytes:
    """A JSON value's canonical form (sorted keys), to find equal parameters."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


# ------------------------------------------------------------------------------------------ schemas
_STRUCTURAL_KEYS = {
    # Generic
    "type", "description", "title", "default", "nullable", "externalDocs", "example",
    # ValueValidation
    "format", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength",
    "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "enum", "maxProperties",
    "minProperties", "required", "allOf", "anyOf", "oneOf", "not",
    # Extensions
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys", "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations",
    # the tree
    "properties", "items", "additionalProperties",
}  # fmt: skip
_FALSE_OMITTED = (
    "nullable", "exclusiveMaximum", "exclusiveMinimum", "uniqueItems", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
)  # fmt: skip
_EMPTY_OMITTED = (
    "type",
    "description",
    "title",
    "format",
    "pattern",
    "required",
    "enum",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
)
_JUNCTORS = ("allOf", "anyOf", "oneOf")
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def structural(schema: Obj, nested: bool = False) -> Obj:
    """A schema as ``NewStructural(...).ToKubeOpenAPI()`` gives it back: the fields a structural schema
    keeps, false flags and empty values left out. In a junctor (``nested``), additionalProperties is
    dropped, as ``NestedValueValidation`` does not write it back."""
    out: Obj = {}
    for key, value in schema.items():
        if key not in _STRUCTURAL_KEYS:
            continue
        if key in _FALSE_OMITTED and value is not True:
            continue
        if key in _EMPTY_OMITTED and value in ("", [], None):
            continue
        if key in ("default", "example") and value is None:
            continue
        if key == "properties":
            out[key] = {k: structural(v, nested) for k, v in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = structural(value, nested)
        elif key == "additionalProperties":
            if nested:
                continue
            out[key] = structural(value) if isinstance(value, dict) else value
        elif key in _JUNCTORS:
            out[key] = [structural(v, True) for v in value]
        elif key == "not":
            out[key] = structural(value, True)
        else:
            out[key] = value
    return out


def _unfold(s: Obj) -> None:
    """``Structural.Unfold``: x-kubernetes-int-or-string without its anyOf pattern gets it (in place)."""
    if s.get("x-kubernetes-int-or-string"):
        any_of = s.get("anyOf")
        all_of = s.get("allOf") or []
        if any_of != _INT_OR_STRING and not (all_of and all_of[0].get("anyOf") == _INT_OR_STRING):
            if any_of is None:
                s["anyOf"] = copy.deepcopy(_INT_OR_STRING)
            else:
                s["allOf"] = [{"anyOf": copy.deepcopy(_INT_OR_STRING)}, *all_of]
    for child in _children(s):
        _unfold(child)


def _children(s: Obj) -> list[Obj]:
    out = list((s.get("properties") or {}).values())
    if isinstance(s.get("items"), dict):
        out.append(s["items"])
    if isinstance(s.get("additionalProperties"), dict):
        out.append(s["additionalProperties"])
    return out


def _to_v2(s: Obj) -> None:
    """``ToStructuralOpenAPIV2`` (in place, parent before children as its visitor goes): no junctors;
    a nullable value or one with unknown fields loses its type and subtree (kubectl would refuse what
    they allow); an array without items loses its type; no ``nullable``."""
    for key in (*_JUNCTORS, "not"):
        s.pop(key, None)
    if s.pop("nullable", False):
        s.pop("type", None)
        s.pop("items", None)
        s.pop("properties", None)
    if s.get("x-kubernetes-preserve-unknown-fields"):
        s.pop("items", None)
        s.pop("properties", None)
    if "items" not in s and s.get("type") == "array":
        s.pop("type")
    if s.get("x-kubernetes-preserve-unknown-fields") and s.get("type") == "object":
        s.pop("type")
    required = s.get("required")
    if required:
        nullable = {k for k, v in (s.get("properties") or {}).items() if v.get("nullable")}
        kept = [f for f in required if f not in nullable]
        additional = s.get("additionalProperties")
        if isinstance(additional, dict) and additional.get("nullable"):
            kept = []
        if kept:
            s["required"] = kept
        else:
            s.pop("required")
    for child in _children(s):
        _to_v2(child)


def _prune_defaults(s: Obj) -> None:
    s.pop("default", None)
    for child in _children(s):
        _prune_defaults(child)


def _meta_ref(form: Obj, which: str, model: str, prefix: str) -> Obj:
    described = dict(form[which])
    if form["ref"] == "allOf":
        return {**described, "allOf": [{"$ref": prefix + model}]}
    return {**described, "$ref": prefix + model}


_EMBEDDED_API_VERSION = (
    "apiVersion defines the versioned schema of this representation of an object. More info: "
    f"{_API_CONVENTIONS}#resources"
)
_EMBEDDED_KIND = (
    "kind is a string value representing the type of this object. In CamelCase. More info: "
    f"{_API_CONVENTIONS}#types-kinds"
)


def _embedded(s: Obj, form: Obj, v2: bool, prefix: str) -> None:
    """``addEmbeddedProperties``: an embedded resource gets ``apiVersion``, ``kind`` and ``metadata``,
    and requires the first two (not in v2 where it keeps unknown fields)."""
    for child in _children(s):
        _embedded(child, form, v2, prefix)
    if v2 and s.get("x-kubernetes-preserve-unknown-fields"):
        return
    if s.get("x-kubernetes-embedded-resource"):
        props = s.setdefault("properties", {})
        props["apiVersion"] = {**form["typeMeta"]["apiVersion"], "description": _EMBEDDED_API_VERSION}
        props["kind"] = {**form["typeMeta"]["kind"], "description": _EMBEDDED_KIND}
        props["metadata"] = _meta_ref(form, "objectMeta", _OBJECT_META, prefix)
        # a new list: ``structural`` shares lists with the stored CRD, which must not change
        required = s.get("required") or []
        s["required"] = required + [f for f in ("kind", "apiVersion") if f not in required]


def schemas(c: CRDVersion, form: Obj, v2: bool) -> Obj:
    """The two models a CRD version publishes: the kind (from its schema) and its list; ``form``: the
    ``crd.v2`` or ``crd.v3`` part of the built-in data."""
    prefix = V2_REF if v2 else V3_REF
    gvk = {"group": c.group, "kind": c.kind, "version": c.version}
    schema = structural(c.schema) if c.schema is not None else None
    if schema is None or (v2 and schema.get("x-kubernetes-preserve-unknown-fields")):
        # with no schema (or one open to anything, in v2) kubectl must not think fields are forbidden
        model: Obj = {"type": "object"}
    else:
        _unfold(schema)
        if v2:
            _to_v2(schema)
            _prune_defaults(schema)
        model = schema
        props = model.setdefault("properties", {})
        props["metadata"] = _meta_ref(form, "objectMeta", _OBJECT_META, prefix)
        props["apiVersion"] = dict(form["typeMeta"]["apiVersion"])
        props["kind"] = dict(form["typeMeta"]["kind"])
        _embedded(model, form, v2, prefix)
    model["x-kubernetes-group-version-kind"] = [gvk]
    listing = {
        "description": f"{c.list_kind} is a list of {c.kind}",
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": dict(form["typeMeta"]["apiVersion"]),
            "items": {
                "description": f"List of {c.plural}. More info: {_API_CONVENTIONS}",
                "type": "array",
                "items": {"$ref": prefix + c.model},
            },
            "kind": dict(form["typeMeta"]["kind"]),
            "metadata": _meta_ref(form, "listMeta", _LIST_META, prefix),
        },
        "x-kubernetes-group-version-kind": [{**gvk, "kind": c.list_kind}],
    }
    return {c.model: model, c.list_model: listing}
