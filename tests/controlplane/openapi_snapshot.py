"""``python -m tests.controlplane.openapi_snapshot``: regenerate ``simcluster/openapi_builtin.json``, the
OpenAPI documents the emulator serves for its built-in kinds, from the real kube-apiserver.

The emulator must not need the real server (nor ``../shared``) at run time, and schemas of built-in kinds
are not something to write by hand, so they are taken once from the real server this project builds
(``tests/controlplane``, default feature gates: exactly what a cluster of that version serves, unlike the
``api/openapi-spec`` files of the kubernetes repository, which are generated with every alpha field) and
committed with their provenance. What is kept:

- OpenAPI v2 (``/openapi/v2``): the paths of the built-in resources the emulator serves (no ``/watch/``
  paths, no subresource it does not serve), the shared parameters they or a CRD's paths refer to, and the
  definitions they need; ``info``, ``security`` and ``securityDefinitions`` as served.
- OpenAPI v3 (``/openapi/v3/...``): the same paths in the documents of the served group versions, and of
  ``api``, ``apis``, each served built-in group and ``version``; one pool of the component schemas they
  (and a CRD's document) refer to.
- What a CRD's documents are built from besides its schema, taken from one CRD's documents on that
  server (``simcluster/openapi/crd.py`` builds the rest as kube-apiserver's apiextensions builder does): the
  query parameters of each operation, the path parameters, the ``apiVersion``/``kind`` properties and the
  descriptions of ``metadata``.

Everywhere, what the emulator does not do is left out: the ``fieldValidation`` parameter, server-side
apply's media types, protobuf and CBOR. ``tests/controlplane/test_kubectl_both.py`` checks that this file
is still what the real server serves and that the emulator's documents for the same CRDs are the real
server's.

    python -m tests.controlplane.openapi_snapshot [--out simcluster/openapi_builtin.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from simcluster.kinds import Kind, built_in_kinds

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "simcluster" / "openapi_builtin.json"
# The CRD whose documents give the per-operation parameters (namespaced, with a status subresource).
TEMPLATE_GV = "apis/korifi.cloudfoundry.org/v1alpha1"
TEMPLATE_KIND = "BuildWorkload"

Obj = dict[str, Any]
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")


_UNSERVED_MEDIA = ("application/apply-patch+yaml", "application/apply-patch+cbor")


def served_media(types: list[str]) -> list[str]:
    return [t for t in types if t not in _UNSERVED_MEDIA and "protobuf" not in t and "cbor" not in t]


def served_params(params: list[Obj]) -> list[Obj]:
    return [p for p in params if not (p.get("in") == "query" and p.get("name") == "fieldValidation")]


def without_unserved(paths: Obj) -> Obj:
    """v2 or v3 paths, less what the emulator does not do."""
    out: Obj = {}
    for path, item in paths.items():
        item = dict(item)
        out[path] = item
        for method, op in item.items():
            if method == "parameters":
                item[method] = served_params(op)
                continue
            op = item[method] = dict(op)
            if "parameters" in op:
                op["parameters"] = served_params(op["parameters"])
            for key in ("consumes", "produces"):  # v2
                if key in op:
                    op[key] = served_media(op[key])
            if "requestBody" in op:  # v3
                body = op["requestBody"] = dict(op["requestBody"])
                body["content"] = {t: v for t, v in body["content"].items() if served_media([t])}
            if "responses" in op:
                op["responses"] = {
                    code: {**r, "content": {t: v for t, v in r["content"].items() if served_media([t])}}
                    if "content" in r
                    else r
                    for code, r in op["responses"].items()
                }
    return out


def gv_key(group: str, version: str) -> str:
    """The name of a group version's OpenAPI v3 document: ``api/v1``, ``apis/<group>/<version>``."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def served_paths(kind: Kind) -> list[str]:
    """The REST paths the emulator serves for a built-in kind (simcluster/server.py), as OpenAPI names
    them (no ``/watch/`` paths: the emulator serves only ``?watch=true``)."""
    prefix = "/" + gv_key(kind.group, kind.storage_version)
    status = kind.versions[kind.storage_version].status
    if kind.namespaced:
        base = f"{prefix}/namespaces/{{namespace}}/{kind.plural}"
        paths = [f"{prefix}/{kind.plural}", base, f"{base}/{{name}}"]
    else:
        base = f"{prefix}/{kind.plural}"
        paths = [base, f"{base}/{{name}}"]
    if status:
        paths.append(f"{base}/{{name}}/status")
    if kind.key == ("", "namespaces"):
        paths.append(f"{base}/{{name}}/finalize")
    return paths


def refs(node: Any, prefix: str) -> set[str]:
    """The names every ``$ref`` under ``node`` points to (``prefix``: ``#/definitions/`` etc.)."""
    found: set[str] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, dict):
            for k, v in n.items():
                if k == "$ref" and isinstance(v, str):
                    if v.startswith(prefix):
                        found.add(v[len(prefix) :])
                else:
                    todo.append(v)
        elif isinstance(n, list):
            todo.extend(n)
    return found


def closure(pool: Obj, roots: set[str], prefix: str) -> Obj:
    """The schemas of ``pool`` that ``roots`` need, transitively."""
    out: Obj = {}
    todo = sorted(roots)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out[name] = pool[name]
        todo.extend(sorted(refs(pool[name], prefix) - out.keys()))
    return dict(sorted(out.items()))


def _route_params_v3(doc: Obj, path: str, method: str) -> list[Obj]:
    item = doc["paths"][path]
    return [*item.get("parameters", []), *item[method].get("parameters", [])]


def _route_params_v2(v2: Obj, path: str, method: str) -> list[Obj]:
    item = v2["paths"][path]
    out = []
    for p in [*item.get("parameters", []), *item[method].get("parameters", [])]:
        if "$ref" in p:
            p = v2["parameters"][p["$ref"].removeprefix("#/parameters/")]
        if p.get("in") != "body":
            out.append(p)
    return out


_COMMON = ("pretty", "namespace", "name")


def crd_parameters(doc3: Obj, v2: Obj, gv: str, plural: str) -> Obj:
    """Each CRD operation's parameters (besides ``pretty``, ``namespace`` and ``name``), in v2 and v3
    form, read off one namespaced CRD's paths; checked to be the same on its status subresource."""
    ns = f"/{gv}/namespaces/{{namespace}}/{plural}"
    routes = {
        "list": (ns, "get"),
        "post": (ns, "post"),
        "deletecollection": (ns, "delete"),
        "get": (f"{ns}/{{name}}", "get"),
        "put": (f"{ns}/{{name}}", "put"),
        "delete": (f"{ns}/{{name}}", "delete"),
        "patch": (f"{ns}/{{name}}", "patch"),
    }
    out: Obj = {"v2": {}, "v3": {}}
    for action, (path, method) in routes.items():
        out["v3"][action] = [p for p in _route_params_v3(doc3, path, method) if p["name"] not in _COMMON]
        out["v2"][action] = [p for p in _route_params_v2(v2, path, method) if p["name"] not in _COMMON]
    for action, method in (("get", "get"), ("put", "put"), ("patch", "patch")):
        status = f"{ns}/{{name}}/status"
        assert [p for p in _route_params_v3(doc3, status, method) if p["name"] not in _COMMON] == out["v3"][
            action
        ], (status, method)
    common = doc3["paths"][f"{ns}/{{name}}"]["parameters"]
    out["v3"]["path"] = {p["name"]: p for p in common if p["name"] != "name"}
    out["v2"]["path"] = {
        p["name"]: p
        for p in _route_params_v2(v2, f"{ns}/{{name}}", "get")
        if p["name"] in ("pretty", "namespace")
    }
    return out


def extract(v2: Obj, v3: dict[str, Obj], version: str) -> Obj:
    """The data file, from the real server's documents (``v3``: by document name)."""
    kinds = built_in_kinds()
    groups = sorted({k.group for k in kinds if k.group})
    gvs = sorted({gv_key(k.group, k.storage_version) for k in kinds})
    paths: list[str] = ["/api/", "/apis/", "/version/"]
    paths += [f"/{gv}/" for gv in gvs] + [f"/apis/{g}/" for g in groups]
    for kind in kinds:
        paths += served_paths(kind)
    missing = [p for p in paths if p not in v2["paths"]]
    assert not missing, f"not served by kube-apiserver {version}: {missing}"

    template = v3[TEMPLATE_GV]
    crd_model = next(
        name
        for name, s in template["components"]["schemas"].items()
        if {"kind": TEMPLATE_KIND}.items() <= (s.get("x-kubernetes-group-version-kind") or [{}])[0].items()
    )
    crd_list_model = crd_model + "List"
    plural = next(
        path.rsplit("/", 1)[1]
        for path, item in template["paths"].items()
        if "{" not in path
        and item.get("get", {}).get("x-kubernetes-group-version-kind", {}).get("kind") == TEMPLATE_KIND
    )
    params = crd_parameters(template, v2, TEMPLATE_GV, plural)
    for form in ("v2", "v3"):
        for action, listed in params[form].items():
            if action != "path":
                params[form][action] = served_params(listed)

    # v2: paths, the shared parameters they and CRD paths refer to, the definitions they all need.
    v2_paths = without_unserved({p: v2["paths"][p] for p in sorted(paths)})
    crd_def2 = v2["definitions"][crd_model]
    crd_list2 = v2["definitions"][crd_list_model]
    shared = refs(v2_paths, "#/parameters/")
    shared |= {
        name
        for name, p in v2["parameters"].items()
        if any(p == q for qs in params["v2"].values() if isinstance(qs, list) for q in qs)
        or p in params["v2"]["path"].values()
        or p.get("in") == "body"
    }
    definitions = closure(
        v2["definitions"],
        refs(v2_paths, "#/definitions/")
        | refs([crd_def2["properties"]["metadata"], crd_list2], "#/definitions/") - {crd_model},
        "#/definitions/",
    )
    v2_out = {
        "swagger": v2["swagger"],
        "info": v2["info"],
        "paths": v2_paths,
        "definitions": definitions,
        "parameters": {k: v2["parameters"][k] for k in sorted(shared)},
        "securityDefinitions": v2["securityDefinitions"],
        "security": v2["security"],
    }

    # v3: the documents of the served group versions (and discovery), with one pool of schemas.
    # A few schemas differ between documents only in their list of group-version-kinds (DeleteOptions
    # and WatchEvent name every group of the document): the pool keeps the first form seen and each
    # document its own where it differs.
    documents: Obj = {}
    schemas: Obj = {}

    def pooled(needed: Obj) -> Obj:
        overrides = {}
        for k, s in needed.items():
            if schemas.setdefault(k, s) != s:
                overrides[k] = s
        return overrides

    for name in ["api", "apis", "version", *(f"apis/{g}" for g in groups), *gvs]:
        doc = v3[name]
        kept = without_unserved({p: doc["paths"][p] for p in sorted(doc["paths"]) if p in paths})
        assert kept, name
        pool = doc.get("components", {}).get("schemas", {})
        overrides = pooled(closure(pool, refs(kept, "#/components/schemas/"), "#/components/schemas/"))
        components = {k: v for k, v in doc.get("components", {}).items() if k != "schemas"}
        if overrides:
            components["schemas"] = overrides
        documents[name] = {
            "openapi": doc["openapi"],
            "info": doc["info"],
            "paths": kept,
            **({"components": components} if components else {}),
        }
    crd_schemas = template["components"]["schemas"]
    crd_def3 = crd_schemas[crd_model]
    crd_overrides = pooled(
        closure(
            crd_schemas,
            refs(
                [crd_def3["properties"]["metadata"], crd_schemas[crd_list_model], template["paths"]],
                "#/components/schemas/",
            )
            - {crd_model, crd_list_model},
            "#/components/schemas/",
        )
    )

    def crd_form(definition: Obj, listing: Obj, ref_form: str) -> Obj:
        props = definition["properties"]
        return {
            "typeMeta": {"apiVersion": props["apiVersion"], "kind": props["kind"]},
            "objectMeta": {k: v for k, v in props["metadata"].items() if k not in ("$ref", "allOf")},
            "listMeta": {
                k: v for k, v in listing["properties"]["metadata"].items() if k not in ("$ref", "allOf")
            },
            "ref": ref_form,
        }

    return {
        "provenance": (
            f"kube-apiserver {version} (default feature gates), built and started by tests/controlplane; "
            "written by `python -m tests.controlplane.openapi_snapshot`. Paths, parameters and schemas "
            "are as that server serves them, for the built-in resources the emulator serves."
        ),
        "kubernetesVersion": version,
        "v2": v2_out,
        "v3": {"documents": documents, "schemas": dict(sorted(schemas.items()))},
        "crd": {
            "v2": {
                "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
                "parameters": params["v2"],
                **crd_form(crd_def2, crd_list2, "$ref"),
            },
            "v3": {
                "info": template["info"],
                "parameters": params["v3"],
                "schemas": crd_overrides,
                **crd_form(crd_def3, crd_schemas[crd_list_model], "allOf"),
            },
        },
    }


def crd_models(crds: list[Obj]) -> dict[str, set[str]]:
    """The models the CRDs publish, by v3 document name."""
    out: dict[str, set[str]] = {}
    for crd in crds:
        spec = crd["spec"]
        for v in spec["versions"]:
            if v.get("served", True):
                names = {
                    spec["names"]["kind"],
                    spec["names"].get("listKind") or spec["names"]["kind"] + "List",
                }
                group = ".".join(reversed(spec["group"].split(".")))
                out.setdefault(gv_key(spec["group"], v["name"]), set()).update(
                    f"{group}.{v['name']}.{n}" for n in names
                )
    return out


async def fetch(
    url: str,
    context: ssl.SSLContext | None,
    names: list[str] | None = None,
    want: dict[str, set[str]] | None = None,
    within: float = 30.0,
) -> tuple[Obj, dict[str, Obj]]:
    """A server's v2 document and its v3 documents (all, or those ``names``). kube-apiserver publishes
    a CRD's schema a moment after the CRD is Established: with ``want`` (models by v3 document name, see
    ``crd_models``), this asks again until both documents have them all, for ``within`` seconds."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(trust_env=False) as http:

        async def get(path: str) -> Obj:
            tls = context if context is not None else True
            async with http.get(url + path, ssl=tls, headers={"Accept": "application/json"}) as resp:
                resp.raise_for_status()
                body: Obj = await resp.json(content_type=None)
                return body

        while True:
            v2 = await get("/openapi/v2")
            index = (await get("/openapi/v3"))["paths"]
            wanted = set(index if names is None else names) | set(want or {})
            v3 = {n: await get(index[n]["serverRelativeURL"]) for n in sorted(wanted) if n in index}
            missing = [n for n in wanted if n not in index]
            for name, models in (want or {}).items():
                schemas = v3.get(name, {}).get("components", {}).get("schemas", {})
                missing += [m for m in models if m not in schemas or m not in v2["definitions"]]
            if not missing:
                return v2, v3
            if time.monotonic() > deadline:
                raise AssertionError(f"not published within {within} s: {missing}")
            await asyncio.sleep(0.2)


def dumps(data: Obj) -> str:
    """The file's text: one value a line (diffs stay readable), without indentation (it stays small)."""
    return json.dumps(data, indent=0, separators=(",", ":"), ensure_ascii=False) + "\n"


async def _snapshot() -> Obj:
    from service.kube.client import KubeClient
    from service.kube.config import load_kubeconfig
    from simcluster.crds import bundled_crd_dirs, read_documents
    from tests.controlplane.build import ensure_built
    from tests.controlplane.cluster import apply_crds, control_plane

    async with control_plane(ensure_built()) as cp:
        crds = [d for d in read_documents(bundled_crd_dirs()) if d.get("kind") == "CustomResourceDefinition"]
        async with KubeClient(await load_kubeconfig(str(cp.kubeconfig))) as client:
            await apply_crds(client, crds)
        v2, v3 = await fetch(cp.url, cp.ssl_context(), want=crd_models(crds))
        return extract(v2, v3, cp.version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.controlplane.openapi_snapshot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data = asyncio.run(_snapshot())
    args.out.write_text(dumps(data))
    print(f"openapi_snapshot: wrote {args.out} ({args.out.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
