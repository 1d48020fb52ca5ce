"""kubectl against the emulator and the real kube-apiserver side by side: ``apply``, ``diff``, ``explain``
and ``wait`` must answer the same on both, and the emulator's OpenAPI documents must be the real
server's (less what the emulator deliberately does not do: docs/emulator.md).

The same kubectl binary talks to both servers (Google Cloud SDK's ``kubectl`` is a dispatcher that would
pick a client by the server's version: the newest of its versioned clients is taken instead). The
emulator runs in process; the real server is the session's (``real_control_plane``), where each test
works in a namespace of its own and the module's CRD is removed at the end.

Skipped, saying why, without kubectl or where the real control plane cannot be had (an error under
``CI=true``).
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml

from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from simcluster.crds import bundled_crd_dirs, new_cluster, read_documents
from simcluster.devcluster import kubeconfig as emulator_kubeconfig
from simcluster.openapi.serving import builtin
from simcluster.server import RunningApiServer, running_apiserver
from tests.controlplane.build import binaries
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.controlplane.conftest import skip_unless_available
from tests.controlplane.openapi_snapshot import crd_models, extract, fetch, without_unserved

skip_unless_available(module_level=True)


def kubectl_binary() -> str | None:
    found = shutil.which("kubectl")
    if found is None:
        return None
    resolved = Path(found).resolve()
    if resolved.name != "kubectl":
        return found  # a versioned client itself
    versioned = resolved.parent.glob("kubectl.1.*")
    newest = max(versioned, key=lambda p: int(p.name.rsplit(".", 1)[1]), default=None)
    return str(newest) if newest is not None else found


KUBECTL = kubectl_binary()
if KUBECTL is None:
    pytest.skip("kubectl is not on PATH (as root, `make system-deps` installs it)", allow_module_level=True)


def _client_minor() -> int:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30, check=True
    )
    minor = re.match(r"\d+", json.loads(done.stdout)["clientVersion"]["minor"])
    assert minor is not None, done.stdout
    return int(minor[0])


KUBECTL_MINOR = _client_minor()
CALL_TIMEOUT = 30.0  # seconds any one kubectl command may take
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(3600 if binaries().missing() else 180)]

Obj = dict[str, Any]

GROUP = "both.example.com"
CRD_NAME = f"gadgets.{GROUP}"
# A schema with what the OpenAPI builder treats specially: int-or-string, an embedded resource, unknown
# fields kept, nullable, defaults, enums and required fields.
GADGET_CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget", "listKind": "GadgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "description": "A Gadget is a thing for tests.",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "description": "What the gadget should be.",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 0, "description": "How big."},
                                    "color": {
                                        "type": "string",
                                        "enum": ["red", "green", "blue"],
                                        "default": "red",
                                    },
                                    "port": {"x-kubernetes-int-or-string": True},
                                    "tags": {"type": "array", "items": {"type": "string"}},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                    "template": {
                                        "type": "object",
                                        "x-kubernetes-embedded-resource": True,
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    },
                                    "note": {"type": "string", "nullable": True},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "phase": {"type": "string"},
                                    "conditions": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["type", "status"],
                                            "properties": {
                                                "type": {"type": "string"},
                                                "status": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
            {
                "name": "v1beta1",
                "served": True,
                "storage": False,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            },
        ],
    },
}


def objects(namespace: str, size: int, data: str) -> str:
    return f"""\
apiVersion: {GROUP}/v1
kind: Gadget
metadata: {{name: g1, namespace: {namespace}}}
spec: {{size: {size}, port: 8080, tags: [a], template: {{apiVersion: v1, kind: ConfigMap, metadata: {{name: x}}}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: c1, namespace: {namespace}, labels: {{app: x}}}}
data: {{a: "{data}"}}
"""


@dataclass
class Done:
    code: int
    out: str
    err: str


@dataclass
class Kubectl:
    """kubectl for one server, with a home (its discovery and OpenAPI caches) of its own."""

    server: str
    kubeconfig: Path
    home: Path

    async def run(self, *args: str, stdin: str | None = None) -> Done:
        assert KUBECTL is not None
        with anyio.fail_after(CALL_TIMEOUT):
            done = await anyio.run_process(
                [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args],
                input=stdin.encode() if stdin is not None else None,
                env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"},
                check=False,
            )
        return Done(done.returncode, done.stdout.decode(), done.stderr.decode())

    async def ok(self, *args: str, stdin: str | None = None) -> str:
        done = await self.run(*args, stdin=stdin)
        assert done.code == 0, f"{self.server}: kubectl {' '.join(args)} failed:\n{done.err}"
        return done.out


@dataclass
class Both:
    emulator: Kubectl
    real: Kubectl
    api: RunningApiServer
    cp: ControlPlane

    @property
    def each(self) -> tuple[Kubectl, Kubectl]:
        return self.emulator, self.real

    async def same(self, *args: str, stdin: str | None = None) -> str:
        """Run on both: it must succeed on both with the same output, which it returns."""
        outs = [await k.ok(*args, stdin=stdin) for k in self.each]
        assert outs[0] == outs[1], f"kubectl {' '.join(args)}:\nemulator:\n{outs[0]}\nreal:\n{outs[1]}"
        return outs[0]


@pytest.fixture(scope="module")
async def both(
    real_control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Both]:
    """The emulator and the real server, each with the project's CRDs and the Gadget CRD, published."""
    tmp = tmp_path_factory.mktemp("kubectl-both")
    cp = real_control_plane
    crds = [d for d in read_documents(bundled_crd_dirs()) if d.get("kind") == "CustomResourceDefinition"]
    async with KubeClient(await load_kubeconfig(str(cp.kubeconfig))) as client:
        await apply_crds(client, [*crds, GADGET_CRD])
    async with running_apiserver(new_cluster()) as api:
        (tmp / "emulator.kubeconfig").write_text(yaml.safe_dump(emulator_kubeconfig(api.url)))
        emulator = Kubectl("emulator", tmp / "emulator.kubeconfig", tmp / "home-emulator")
        real = Kubectl("real", cp.kubeconfig, tmp / "home-real")
        for k in (emulator, real):
            k.home.mkdir()
        await emulator.ok("create", "-f", "-", stdin=json.dumps(GADGET_CRD))
        # kube-apiserver publishes a CRD's schemas a moment after it is Established
        await fetch(cp.url, cp.ssl_context(), names=[], want=crd_models([GADGET_CRD]))
        try:
            yield Both(emulator, real, api, cp)
        finally:
            await real.run("delete", "crd", CRD_NAME, "--wait=false")


@pytest.fixture
async def namespace(both: Both) -> AsyncIterator[str]:
    name = f"kb-{uuid.uuid4().hex[:8]}"
    # (not `kubectl create namespace`: kubectl 1.33 sends that one in protobuf, which the emulator does
    # not read)
    await both.same(
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    yield name
    await both.real.run("delete", "namespace", name, "--wait=false")


def _normalised_diff(out: str) -> list[str]:
    """``kubectl diff``'s output without what differs between any two servers: temporary file names,
    times, resourceVersions and uids."""
    headers = ("diff -u", "--- ", "+++ ")
    volatile = ("creationTimestamp:", "resourceVersion:", "uid:")
    return [
        line
        for line in out.splitlines()
        if not line.startswith(headers) and not line[1:].strip().startswith(volatile)
    ]


# ---------------------------------------------------------------------------------------------- tests


async def test_documents_are_the_real_servers(both: Both) -> None:
    """The built-in part is still what the real server serves; a CRD's paths and schemas are the real
    server's, less fieldValidation and server-side apply."""
    crds = [d for d in read_documents(bundled_crd_dirs()) if d.get("kind") == "CustomResourceDefinition"]
    want = crd_models([*crds, GADGET_CRD])
    real_v2, real_v3 = await fetch(both.cp.url, both.cp.ssl_context(), want=want)
    assert extract(real_v2, real_v3, both.cp.version) == builtin(), (
        "simcluster/openapi_builtin.json is out of date: python -m tests.controlplane.openapi_snapshot"
    )
    sim_v2, sim_v3 = await fetch(both.api.url, None, names=sorted(want))
    for name in want:
        real = {**real_v3[name], "paths": without_unserved(real_v3[name]["paths"])}
        assert sim_v3[name] == real, name
    groups = tuple(f"/apis/{name.split('/')[1]}/" for name in want)
    real_paths = without_unserved({p: item for p, item in real_v2["paths"].items() if p.startswith(groups)})
    assert {p: item for p, item in sim_v2["paths"].items() if p.startswith(groups)} == real_paths
    for models in want.values():
        for model in models:
            assert sim_v2["definitions"][model] == real_v2["definitions"][model], model
    assert sim_v2.keys() == real_v2.keys()
    assert {k: sim_v2[k] for k in ("swagger", "info", "security", "securityDefinitions")} == {
        k: real_v2[k] for k in ("swagger", "info", "security", "securityDefinitions")
    }


V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


async def _http_answers(url: str, context: ssl.SSLContext | None) -> list[Any]:
    """What a server answers to the OpenAPI requests clients make (and a few they should not)."""
    tls: ssl.SSLContext | bool = context if context is not None else True
    out: list[Any] = []
    async with aiohttp.ClientSession(trust_env=False) as http:

        async def ask(path: str, **headers: str) -> aiohttp.ClientResponse:
            async with http.get(url + path, ssl=tls, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                return resp

        for accept in (
            "application/json",
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",  # client-go's
            "application/json;q=0.5, " + V2_PROTOBUF,
            "*/*",
            "text/html",
        ):
            resp = await ask("/openapi/v2", Accept=accept)
            out.append((accept, resp.status, resp.headers.get("Content-Type")))
        etag = (await ask("/openapi/v2", Accept="application/json")).headers["ETag"]
        again = await ask("/openapi/v2", Accept=V2_PROTOBUF, **{"If-None-Match": etag})
        out.append(("same ETag for protobuf", again.status))

        async with http.get(url + "/openapi/v3", ssl=tls) as resp:
            out.append(("index", resp.status, resp.headers.get("Cache-Control")))
            index = json.loads(await resp.read())["paths"]
        hashed = index[f"apis/{GROUP}/v1"]["serverRelativeURL"]
        plain = hashed.split("?")[0]
        resp = await ask(hashed, Accept="application/json")
        out.append(
            ("hashed", resp.status, resp.headers.get("Content-Type"), resp.headers.get("Cache-Control"))
        )
        resp = await ask(plain)
        out.append(("plain", resp.status, resp.headers.get("Cache-Control")))
        resp = await ask(plain, **{"If-None-Match": resp.headers["ETag"]})
        out.append(("plain, not modified", resp.status))
        resp = await ask(plain + "?hash=0123")
        out.append(("stale hash", resp.status, resp.headers.get("Location") == hashed))
        out.append(("no such document", (await ask("/openapi/v3/apis/nothing.example.com/v1")).status))
    return out


async def test_http_answers(both: Both) -> None:
    """Content negotiation, ETags and the v3 index's hashed URLs, as clients cache with them."""
    emulator = await _http_answers(both.api.url, None)
    assert emulator == await _http_answers(both.cp.url, both.cp.ssl_context())
    assert emulator[:5] == [
        ("application/json", 200, "application/json"),
        ("application/com.github.proto-openapi.spec.v2@v1.0+protobuf", 200, V2_PROTOBUF),
        ("application/json;q=0.5, " + V2_PROTOBUF, 200, V2_PROTOBUF),
        ("*/*", 200, "application/json"),
        ("text/html", 406, None),
    ]
    assert emulator[5:] == [
        ("same ETag for protobuf", 304),
        ("index", 200, "no-cache, private"),
        ("hashed", 200, "application/json", "public, immutable"),
        ("plain", 200, "no-cache, private"),
        ("plain, not modified", 304),
        ("stale hash", 301, True),
        ("no such document", 404),
    ]


async def test_apply_and_diff(both: Both, namespace: str) -> None:
    first, second = objects(namespace, 1, "1"), objects(namespace, 2, "2")
    created = await both.same("apply", "-f", "-", stdin=first)
    assert created.splitlines() == [f"gadget.{GROUP}/g1 created", "configmap/c1 created"]
    unchanged = await both.same("apply", "-f", "-", stdin=first)
    assert unchanged.splitlines() == [f"gadget.{GROUP}/g1 unchanged", "configmap/c1 unchanged"]

    # kubectl diff: a server-side dry run of the patch apply would send; exit code 1 means "differs"
    diffs = [await k.run("diff", "-f", "-", stdin=second) for k in both.each]
    assert [d.code for d in diffs] == [1, 1], [d.err for d in diffs]
    changed = {"-  size: 1", "+  size: 2", '-  a: "1"', '+  a: "2"', "-  generation: 1", "+  generation: 2"}
    for d in diffs:
        assert changed <= set(d.out.splitlines()), d.out
    if "managedFields:" not in diffs[1].out:
        # (kubectl 1.20 shows managedFields, which the emulator keeps simpler: docs/emulator.md)
        assert _normalised_diff(diffs[0].out) == _normalised_diff(diffs[1].out)
    # nothing was changed by the dry run
    await both.same("apply", "-f", "-", stdin=first)

    configured = await both.same("apply", "-f", "-", stdin=second)
    assert configured.splitlines() == [f"gadget.{GROUP}/g1 configured", "configmap/c1 configured"]
    for k in both.each:
        assert (await k.run("diff", "-f", "-", stdin=second)).code == 0
    got = [
        json.loads(await k.ok("get", "-n", namespace, "gadget/g1", "configmap/c1", "-o", "json"))
        for k in both.each
    ]
    kept = [
        [
            {"spec": o.get("spec"), "data": o.get("data"), "generation": o["metadata"].get("generation")}
            for o in g["items"]
        ]
        for g in got
    ]
    assert kept[0] == kept[1]
    assert kept[0][0] == {
        "spec": {
            "size": 2,
            "port": 8080,
            "tags": ["a"],
            "color": "red",
            "template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
        },
        "data": None,
        "generation": 2,
    }


async def test_apply_refuses_what_the_schema_refuses(both: Both, namespace: str) -> None:
    """Both refuse, and create nothing; the message differs (docs/emulator.md): the real server refuses
    (``fieldValidation=Strict``), where kubectl validates on its side against the emulator."""
    bad = [
        {"size": 1, "bogus": 1},  # an unknown field
        {"color": "red"},  # a required field missing
        {"size": "big"},  # a wrong type
    ]
    for spec in bad:
        doc = {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Gadget",
            "metadata": {"name": "bad", "namespace": namespace},
            "spec": spec,
        }
        for k in both.each:
            done = await k.run("apply", "-f", "-", stdin=json.dumps(doc))
            assert done.code != 0, (k.server, spec, done.out)
        await both.same("get", "gadgets", "-n", namespace, "-o", "name")
    assert (await both.same("get", "gadgets", "-n", namespace, "-o", "name")) == ""


async def test_server_side_apply_is_refused_clearly(both: Both, namespace: str) -> None:
    """A deliberate difference (docs/emulator.md): the real server applies, the emulator says it does not."""
    doc = objects(namespace, 1, "1")
    assert (await both.real.ok("apply", "--server-side", "-f", "-", stdin=doc)).splitlines() == [
        f"gadget.{GROUP}/g1 serverside-applied",
        "configmap/c1 serverside-applied",
    ]
    refused = await both.emulator.run("apply", "--server-side", "-f", "-", stdin=doc)
    assert refused.code != 0
    assert "server-side apply is not implemented by the kpack-image-builder API emulator" in refused.err
    # and client-side apply still works
    assert "created" in await both.emulator.ok("apply", "-f", "-", stdin=doc)


@pytest.mark.parametrize(
    "what",
    [
        ["gadget.spec"],
        ["gadget", "--recursive"],
        ["gadget.spec.template"],
        ["gadget", "--api-version", f"{GROUP}/v1beta1"],
        ["configmap", "--recursive"],
        ["secret.type"],
        ["namespace.spec"],
        ["customresourcedefinition.spec.versions.schema"],
        ["buildworkload.spec", "--recursive"],
        ["image", "--api-version", "kpack.io/v1alpha2"],
    ],
)
async def test_explain(both: Both, what: list[str]) -> None:
    out = await both.same("explain", *what)
    assert "FIELD" in out or "KIND" in out


@pytest.mark.skipif(KUBECTL_MINOR < 27, reason="kubectl before 1.27 explains from OpenAPI v2 only")
async def test_explain_from_openapi_v2(both: Both) -> None:
    """The v2 document, which kubectl reads in protobuf (also for client-side validation)."""
    out = await both.same("explain", "--output=plaintext-openapiv2", "gadget.spec")
    assert "How big." in out


@pytest.mark.skipif(KUBECTL_MINOR < 24, reason="kubectl before 1.24 has no --subresource or --for=jsonpath")
async def test_wait(both: Both, namespace: str) -> None:
    await both.same("apply", "-f", "-", stdin=objects(namespace, 1, "1"))
    ready = '{"status":{"phase":"Ready","conditions":[{"type":"Ready","status":"True"}]}}'
    for k in both.each:
        waits: list[Done] = []
        async with anyio.create_task_group() as tg:

            async def wait(k: Kubectl = k, waits: list[Done] = waits) -> None:
                waits.append(
                    await k.run(
                        "wait", "-n", namespace, "gadget/g1", "--for=condition=Ready", "--timeout=20s"
                    )
                )

            tg.start_soon(wait)
            # before or after the wait has started (both orders are fine): the wait must see it
            await k.ok(
                "patch", "-n", namespace, "gadget/g1", "--subresource=status", "--type=merge", "-p", ready
            )
        assert [(w.code, w.out) for w in waits] == [(0, f"gadget.{GROUP}/g1 condition met\n")], (
            k.server,
            waits,
        )
    await both.same(
        "wait", "-n", namespace, "gadget/g1", "--for=jsonpath={.status.phase}=Ready", "--timeout=10s"
    )
    await both.same("delete", "-n", namespace, "configmap/c1", "--wait=false")
    await both.same("wait", "-n", namespace, "configmap/c1", "--for=delete", "--timeout=10s")
