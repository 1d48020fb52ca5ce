"""The project's CRDs (manifests/crds) on the real kube-apiserver: what their schemas refuse and accept is
what the service relies on, and the API emulator answers the same.

The service relies on the CRDs in two directions. What they refuse, it never has to handle: a
BuildWorkload without ``builderName`` or ``buildRef.name``, a source registry without an image, an env
var without a name. What they accept, it must handle itself, with ``InvalidWorkload`` (no source at all,
an empty image, no app-guid label). And its own status writes must pass them, or the whole status is
refused and the workload shows none: every condition it writes (reasons matching the CRD's pattern, RFC
3339 times, messages cut to the 32768-character limit), the droplet, and the BuilderInfo's lists, which
the CRD requires in every status written. The status subresource and pruning behave as it assumes: a
status write changes only the status and not the generation, a spec write leaves the status alone,
unknown fields vanish; and ``kubectl get`` shows the printer columns.

Every test runs against both servers (``server``): the session's kube-apiserver, with manifests/crds
applied, and a fresh emulator. A refusal is compared by its code, reason and the set of its causes'
fields and reasons: kube-apiserver lists causes in Go map order, which changes from one request to the
next.
"""

from __future__ import annotations

import contextlib
import copy
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.conditions import MAX_MESSAGE, set_condition
from service.kube.config import ClusterConfig, explicit, load_kubeconfig
from service.reconcilers import korifi as k
from service.reconcilers.builderinfo import mirror
from service.reconcilers.droplet import droplet
from simcluster.crds import read_documents
from simcluster.server import RunningApiServer
from tests.controlplane.build import binaries
from tests.controlplane.cluster import ControlPlane, apply_crds

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
EMULATOR, REAL = "emulator", "kube-apiserver"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"
TIME = "2026-01-02T03:04:05Z"


@pytest.fixture(scope="session")
async def real_with_project_crds(real_control_plane: ControlPlane) -> ControlPlane:
    async with KubeClient(await load_kubeconfig(str(real_control_plane.kubeconfig))) as client:
        await apply_crds(client, read_documents([ROOT / "manifests" / "crds"]))
    return real_control_plane


@pytest.fixture(
    params=[
        pytest.param(REAL, marks=pytest.mark.timeout(3600 if binaries().missing() else 120)),
        EMULATOR,
    ]
)
def target(request: pytest.FixtureRequest) -> Path | str:
    """The real server's admin kubeconfig, or the emulator's URL. Synchronous, so that it may ask for the
    (async) server fixtures by name: only the one it needs."""
    if request.param == REAL:
        control_plane: ControlPlane = request.getfixturevalue("real_with_project_crds")
        return control_plane.kubeconfig
    api: RunningApiServer = request.getfixturevalue("api")  # the root conftest's: the CRDs loaded
    return api.url


@dataclass
class Server:
    client: KubeClient
    config: ClusterConfig
    ns: str  # a namespace of the test's own: the real server is shared by the session


@pytest.fixture
async def server(target: Path | str) -> AsyncIterator[Server]:
    config = await load_kubeconfig(str(target)) if isinstance(target, Path) else explicit(target)
    async with KubeClient(config, timeout=10) as client:
        ns = f"crd-{uuid.uuid4().hex[:8]}"
        await client.create(r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        try:
            yield Server(client, config, ns)
        finally:
            with contextlib.suppress(errors.NotFound):
                await client.delete(r.NAMESPACE, ns)


# ---------------------------------------------------------------------------------------------- objects
def workload(name: str = "wl", **spec: Any) -> Obj:
    """A BuildWorkload as Korifi creates one; ``spec`` overrides fields (None removes one)."""
    body: Obj = {
        "apiVersion": k.KORIFI_API_VERSION,
        "kind": "BuildWorkload",
        "metadata": {"name": name, "labels": {k.APP_GUID_LABEL: "app-1"}},
        "spec": {
            "buildRef": {"name": "build-1"},
            "builderName": k.BUILDER_NAME,
            "source": {"registry": {"image": "registry.example.com/cf/app-1-packages@sha256:" + "a" * 64}},
        },
    }
    for key, value in spec.items():
        if value is None:
            del body["spec"][key]
        else:
            body["spec"][key] = value
    return body


def builder_info(name: str = k.BUILDER_INFO_NAME) -> Obj:
    return {
        "apiVersion": k.KORIFI_API_VERSION,
        "kind": "BuilderInfo",
        "metadata": {"name": name},
        "spec": {},
    }


def condition(**fields: Any) -> Obj:
    """A complete, valid condition; ``fields`` override (None removes one)."""
    out: Obj = {
        "type": k.SUCCEEDED,
        "status": "Unknown",
        "reason": k.BUILD_RUNNING,
        "message": k.BUILD_RUNNING_MESSAGE,
        "lastTransitionTime": TIME,
        "observedGeneration": 1,
    }
    for key, value in fields.items():
        if value is None:
            del out[key]
        else:
            out[key] = value
    return out


def buildpack(**fields: Any) -> Obj:
    out: Obj = {
        "name": "paketo-buildpacks/go",
        "version": "4.0.0",
        "stack": "io.buildpacks.stacks.jammy",
        "creationTimestamp": TIME,
        "updatedTimestamp": TIME,
    }
    out.update(fields)
    return {key: value for key, value in out.items() if value is not None}


# ---------------------------------------------------------------------------------------------- refusals
Causes = frozenset[tuple[str, str]]


def causes(*pairs: tuple[str, str]) -> Causes:
    return frozenset(pairs)


def required(*fields: str) -> Causes:
    return frozenset((f, "FieldValueRequired") for f in fields)


@dataclass(frozen=True)
class Write:
    """A write the CRD refuses: a BuildWorkload created (``create``), or a status merge-patched onto a
    valid BuildWorkload or BuilderInfo (``status``)."""

    kind: str  # BuildWorkload | BuilderInfo
    create: Obj | None = None
    status: Obj | None = None


def create(body: Obj) -> Write:
    return Write("BuildWorkload", create=body)


def workload_status(**status: Any) -> Write:
    return Write("BuildWorkload", status=status)


def info_status(**status: Any) -> Write:
    return Write("BuilderInfo", status=status)


DROPLET = {
    "registry": {"image": "registry.example.com/cf/app-1-droplets@sha256:" + "b" * 64},
    "stack": "jammy",
}
CONDITION = "status.conditions[0]"

REFUSED = [
    # --- what the service never has to handle: every workload it sees names its builder and its build,
    # and a source, if given, names an image.
    pytest.param(create(workload(builderName=None)), required("spec.builderName"), id="no-builderName"),
    pytest.param(create(workload(buildRef=None)), required("spec.buildRef"), id="no-buildRef"),
    pytest.param(create(workload(buildRef={})), required("spec.buildRef.name"), id="buildRef-without-name"),
    pytest.param(create(workload(source={})), required("spec.source.registry"), id="source-without-registry"),
    pytest.param(
        create(workload(source={"registry": {"imagePullSecrets": [{"name": "s"}]}})),
        required("spec.source.registry.image"),
        id="registry-without-image",
    ),
    pytest.param(create(workload(env=[{"value": "v"}])), required("spec.env[0].name"), id="env-without-name"),
    pytest.param(
        create(workload(buildpacks="paketo-buildpacks/go")),
        causes(("spec.buildpacks", "FieldValueTypeInvalid")),
        id="buildpacks-not-a-list",
    ),
    pytest.param(
        create(workload(buildpacks=["paketo-buildpacks/go", 7])),
        causes(("spec.buildpacks[1]", "FieldValueTypeInvalid")),
        id="buildpack-not-a-string",
    ),
    pytest.param(
        create(workload(buildRef={}, builderName=None, env=[{}], source={"registry": {}})),
        required("spec.buildRef.name", "spec.builderName", "spec.env[0].name", "spec.source.registry.image"),
        id="everything-at-once",
    ),
    # --- what the service must never write: a condition the CRD refuses takes the whole status with it.
    pytest.param(
        workload_status(conditions=[condition(status="Maybe")]),
        causes((f"{CONDITION}.status", "FieldValueNotSupported")),
        id="condition-status-outside-the-enum",
    ),
    pytest.param(
        # minLength fails first, and kube-openapi reports only the first of a string's failures
        workload_status(conditions=[condition(reason="")]),
        causes((f"{CONDITION}.reason", "FieldValueInvalid")),
        id="condition-reason-empty",
    ),
    pytest.param(
        workload_status(conditions=[condition(reason="Build running")]),
        causes((f"{CONDITION}.reason", "FieldValueInvalid")),
        id="condition-reason-not-camel-case",
    ),
    pytest.param(
        # Go's `$` is the end of the text; Python's would let the newline through
        workload_status(conditions=[condition(reason="BuildRunning\n")]),
        causes((f"{CONDITION}.reason", "FieldValueInvalid")),
        id="condition-reason-ending-in-a-newline",
    ),
    pytest.param(
        workload_status(conditions=[condition(type="Build succeeded")]),
        causes((f"{CONDITION}.type", "FieldValueInvalid")),
        id="condition-type-not-a-name",
    ),
    pytest.param(
        workload_status(conditions=[condition(lastTransitionTime="yesterday")]),
        causes((f"{CONDITION}.lastTransitionTime", "FieldValueTypeInvalid")),
        id="condition-time-not-a-date-time",
    ),
    pytest.param(
        workload_status(conditions=[condition(lastTransitionTime="")]),
        causes((f"{CONDITION}.lastTransitionTime", "FieldValueTypeInvalid")),
        id="condition-time-empty",
    ),
    pytest.param(
        workload_status(conditions=[condition(lastTransitionTime="2026-01-02T03:04:05")]),
        causes((f"{CONDITION}.lastTransitionTime", "FieldValueTypeInvalid")),
        id="condition-time-without-a-zone",
    ),
    pytest.param(
        workload_status(conditions=[condition(lastTransitionTime="2026-02-30T03:04:05Z")]),
        causes((f"{CONDITION}.lastTransitionTime", "FieldValueTypeInvalid")),
        id="condition-time-not-a-day",
    ),
    pytest.param(
        workload_status(conditions=[condition(message="x" * (MAX_MESSAGE + 1))]),
        causes((f"{CONDITION}.message", "FieldValueTooLong")),
        id="condition-message-too-long",
    ),
    pytest.param(
        workload_status(conditions=[condition(observedGeneration=-1)]),
        causes((f"{CONDITION}.observedGeneration", "FieldValueInvalid")),
        id="condition-observedGeneration-negative",
    ),
    pytest.param(
        workload_status(conditions=[{"type": k.SUCCEEDED}]),
        required(*(f"{CONDITION}.{f}" for f in ("status", "reason", "message", "lastTransitionTime"))),
        id="condition-incomplete",
    ),
    pytest.param(
        workload_status(droplet={**DROPLET, "registry": {}}),
        required("status.droplet.registry.image"),
        id="droplet-without-image",
    ),
    pytest.param(
        workload_status(droplet={**DROPLET, "processTypes": [{"type": "web"}]}),
        required("status.droplet.processTypes[0].command"),
        id="droplet-process-without-command",
    ),
    pytest.param(
        workload_status(droplet={**DROPLET, "ports": ["8080"]}),
        causes(("status.droplet.ports[0]", "FieldValueTypeInvalid")),
        id="droplet-port-not-a-number",
    ),
    # --- the BuilderInfo: both lists in every status written, each buildpack complete.
    pytest.param(
        info_status(conditions=[condition(type=k.READY)]),
        required("status.stacks", "status.buildpacks"),
        id="builderinfo-without-its-lists",
    ),
    pytest.param(
        info_status(stacks=[], buildpacks=[{"name": "paketo-buildpacks/go"}]),
        required(
            *(
                f"status.buildpacks[0].{f}"
                for f in ("version", "stack", "creationTimestamp", "updatedTimestamp")
            )
        ),
        id="builderinfo-buildpack-incomplete",
    ),
    pytest.param(
        info_status(stacks=[], buildpacks=[buildpack(creationTimestamp="")]),
        causes(("status.buildpacks[0].creationTimestamp", "FieldValueTypeInvalid")),
        id="builderinfo-buildpack-time-empty",
    ),
]


async def prepared(server: Server, kind: str) -> Obj:
    """The valid object a status write goes to."""
    if kind == "BuildWorkload":
        return await server.client.create(r.BUILD_WORKLOAD, workload(), server.ns)
    return await server.client.create(r.BUILDER_INFO, builder_info(), server.ns)


@pytest.mark.parametrize(("write", "expected"), REFUSED)
async def test_the_crds_refuse_what_the_service_relies_on_them_to_refuse(
    server: Server, write: Write, expected: Causes
) -> None:
    res = r.BUILD_WORKLOAD if write.kind == "BuildWorkload" else r.BUILDER_INFO
    before: Obj | None = None
    if write.create is not None:
        name = write.create["metadata"]["name"]
        with pytest.raises(errors.Invalid) as refused:
            await server.client.create(res, write.create, server.ns)
    else:
        before = await prepared(server, write.kind)
        name = before["metadata"]["name"]
        with pytest.raises(errors.Invalid) as refused:
            await server.client.patch_status(res, name, {"status": write.status}, server.ns)
    exc = refused.value
    assert (exc.code, exc.reason) == (422, "Invalid")
    assert exc.message.startswith(f'{write.kind}.korifi.cloudfoundry.org "{name}" is invalid: '), exc.message
    details = exc.details or {}
    assert (details.get("kind"), details.get("group"), details.get("name")) == (
        write.kind,
        "korifi.cloudfoundry.org",
        name,
    )
    assert frozenset((c["field"], c["reason"]) for c in details.get("causes") or ()) == expected, details
    # Refused whole: nothing was written.
    if before is None:
        with pytest.raises(errors.NotFound):
            await server.client.get(res, name, server.ns)
    else:
        after = await server.client.get(res, name, server.ns)
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert "status" not in after


# ---------------------------------------------------------------------------------------------- acceptance
async def test_the_crds_accept_the_workloads_the_service_judges_itself(server: Server) -> None:
    """The CRD does not require a source, an image that is not empty or the app-guid label: these reach
    the service, which ends them with ``InvalidWorkload`` (service/reconcilers/workload_checks.py)."""
    no_label = workload("no-label")
    del no_label["metadata"]["labels"]
    for body in (
        workload("no-source", source=None),
        workload("empty-image", source={"registry": {"image": ""}}),
        no_label,
        workload("unknown-buildpacks", buildpacks=["nobody/knows"], env=[{"name": "A", "value": "1"}]),
    ):
        created = await server.client.create(r.BUILD_WORKLOAD, body, server.ns)
        assert created["spec"] == body["spec"]
        assert created["metadata"]["generation"] == 1


async def test_every_status_the_service_writes_is_accepted(server: Server) -> None:
    """Conditions made by the service's own ``set_condition`` with each reason it writes (docs/conditions.md),
    a message longer than the limit as the service cuts it (the limit counts characters, not bytes), the
    droplet as the service builds it, and the BuilderInfo status as it mirrors a ClusterBuilder."""
    created = await prepared(server, "BuildWorkload")
    name = created["metadata"]["name"]
    outcomes = [
        (k.SUCCEEDED, "Unknown", k.BUILD_RUNNING, k.BUILD_RUNNING_MESSAGE),
        (k.SUCCEEDED, "True", k.BUILD_SUCCEEDED, k.BUILD_SUCCEEDED_MESSAGE),
        (k.SUCCEEDED, "False", k.BUILD_FAILED, k.BUILD_FAILED_MESSAGE),
        (k.SUCCEEDED, "False", k.INVALID_BUILDPACKS, k.invalid_buildpack_message("nobody/knows")),
        (k.SUCCEEDED, "False", k.BUILDER_NOT_READY, k.DEFAULT_CLUSTER_BUILDER_NOT_FOUND),
        (k.SUCCEEDED, "False", k.KPACK_MISSED_BUILD, k.KPACK_MISSED_BUILD_MESSAGE),
        (k.SUCCEEDED, "False", k.INVALID_WORKLOAD, "spec.source.registry.image is empty"),
        (k.SUCCEEDED, "False", k.IMAGE_REJECTED, "é" * (MAX_MESSAGE + 100)),  # 2 bytes each in UTF-8
        (k.SUCCEEDED, "False", k.BUILDER_REJECTED, "x" * (MAX_MESSAGE * 2)),
        (k.READY, "True", k.READY_REASON, k.READY_MESSAGE),
        (k.READY, "False", k.UNKNOWN_REASON, 'Secret "x" not found'),
    ]
    for type_, status, reason, message in outcomes:
        conditions: list[Obj] = []
        set_condition(conditions, type_, status, reason, message, created["metadata"]["generation"])
        patch: Obj = {"status": {"conditions": conditions, "observedGeneration": 1}}
        if status == "True" and type_ == k.SUCCEEDED:
            patch["status"]["droplet"] = droplet(
                DROPLET["registry"]["image"],
                "io.buildpacks.stacks.jammy",
                {
                    k.BUILD_METADATA_LABEL: '{"processes": [{"type": "web", "command": ["app"], "args": ["-p 1"]}]}'
                },
                [8080, 8443],
                [{"name": "pull-secret"}],
            )
        written = await server.client.patch_status(r.BUILD_WORKLOAD, name, patch, server.ns)
        assert written["status"]["conditions"] == conditions, reason
        assert len(written["status"]["conditions"][0]["message"]) <= MAX_MESSAGE

    info = await prepared(server, "BuilderInfo")
    cluster_builder = {
        "metadata": {"name": "cf-kpack-cluster-builder", "creationTimestamp": TIME},
        "status": {
            "stack": {"id": "io.buildpacks.stacks.jammy"},
            "order": [{"group": [{"id": "paketo-buildpacks/go", "version": "4.0.0"}]}, {"group": []}],
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-03T00:00:00Z"}],
        },
    }
    for builder, reason in ((cluster_builder, k.READY_REASON), (None, k.CLUSTER_BUILDER_MISSING)):
        stacks, buildpacks = mirror(builder) if builder is not None else ([], [])
        conditions = []
        set_condition(conditions, k.READY, "True" if builder else "False", reason, "m", 1)
        status = {
            "stacks": stacks,
            "buildpacks": buildpacks,
            "conditions": conditions,
            "observedGeneration": 1,
        }
        written = await server.client.patch_status(
            r.BUILDER_INFO, info["metadata"]["name"], {"status": status}, server.ns
        )
        assert written["status"] == status


# ---------------------------------------------------------------------------------------------- subresource
async def test_the_status_subresource_separates_status_from_spec_as_the_service_assumes(
    server: Server,
) -> None:
    client, ns = server.client, server.ns
    body = workload()
    body["status"] = {"conditions": [condition()]}
    created = await client.create(r.BUILD_WORKLOAD, body, ns)
    assert "status" not in created  # a create sets no status
    assert created["metadata"]["generation"] == 1

    # A status write changes the status only: the spec and labels it carries are ignored, and the
    # generation stays (observedGeneration compares with it).
    status_write = copy.deepcopy(created)
    status_write["status"] = {"conditions": [condition()], "observedGeneration": 1}
    status_write["spec"]["builderName"] = "someone-else"
    status_write["metadata"]["labels"]["added"] = "by-status"
    written = await client.update_status(r.BUILD_WORKLOAD, status_write)
    assert written["status"] == status_write["status"]
    assert written["spec"] == created["spec"]
    assert "added" not in written["metadata"]["labels"]
    assert written["metadata"]["generation"] == 1

    # A metadata change (the service's label and finalizer) is not a new generation either.
    labelled = await client.merge_patch(
        r.BUILD_WORKLOAD,
        "wl",
        {"metadata": {"labels": {k.IMAGE_GENERATION_LABEL: "1"}, "finalizers": [k.BUILD_WORKLOAD_FINALIZER]}},
        ns,
    )
    assert labelled["metadata"]["generation"] == 1

    # A write of the main resource leaves the status alone; a spec change is a new generation.
    spec_write = copy.deepcopy(labelled)
    spec_write["spec"]["buildpacks"] = ["paketo-buildpacks/go"]
    spec_write["status"] = {"conditions": []}
    updated = await client.update(r.BUILD_WORKLOAD, spec_write)
    assert updated["status"] == written["status"]
    assert updated["metadata"]["generation"] == 2

    # The service's status patches carry the resourceVersion they were computed from: a stale one is a
    # conflict, not a lost update.
    with pytest.raises(errors.Conflict):
        await client.patch_status(
            r.BUILD_WORKLOAD,
            "wl",
            {
                "metadata": {"resourceVersion": labelled["metadata"]["resourceVersion"]},
                "status": {"observedGeneration": 2},
            },
            ns,
        )
    # A finalizer holds the deletion: clean up as the service would.
    await client.merge_patch(r.BUILD_WORKLOAD, "wl", {"metadata": {"finalizers": None}}, ns)


async def test_unknown_fields_are_pruned_in_spec_and_status(server: Server) -> None:
    client, ns = server.client, server.ns
    body = workload(futureField={"a": 1})
    body["spec"]["source"]["registry"]["digest"] = "sha256:..."
    created = await client.create(r.BUILD_WORKLOAD, body, ns)
    assert created["spec"] == workload()["spec"]
    patch = {
        "status": {
            "conditions": [{**condition(), "severity": "Error"}],
            "droplet": {**DROPLET, "size": 10},
            "phase": "Building",
        }
    }
    written = await client.patch_status(r.BUILD_WORKLOAD, "wl", patch, ns)
    assert written["status"] == {"conditions": [condition()], "droplet": DROPLET}
    stored = await client.get(r.BUILD_WORKLOAD, "wl", ns)
    assert stored["status"] == written["status"]


# ---------------------------------------------------------------------------------------------- printing
async def table(server: Server, res: r.Resource) -> Obj:
    """``kubectl get``'s request: the list as a server-side printed Table."""
    url = f"{server.config.host}{res.path(server.ns)}"
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=server.config.ssl)) as http,
        http.get(url, headers={"Accept": TABLE}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body: Obj = await resp.json()
        return body


def column(tab: Obj, name: str) -> Callable[[Obj], Any]:
    index = [c["name"] for c in tab["columnDefinitions"]].index(name)
    return lambda row: row["cells"][index]


AGE = re.compile(r"^\d+s$")


async def test_kubectl_get_prints_the_crds_columns(server: Server) -> None:
    await server.client.create(r.BUILD_WORKLOAD, workload(), server.ns)
    workloads = await table(server, r.BUILD_WORKLOAD)
    # No printer columns in the BuildWorkload CRD: Name and the default Age.
    assert [(c["name"], c["type"]) for c in workloads["columnDefinitions"]] == [
        ("Name", "string"),
        ("Age", "date"),
    ]
    [row] = workloads["rows"]
    assert row["cells"][0] == "wl" and AGE.match(row["cells"][1]), row["cells"]

    await server.client.create(r.BUILDER_INFO, builder_info(), server.ns)
    await server.client.create(r.BUILDER_INFO, builder_info("no-status"), server.ns)
    await server.client.patch_status(
        r.BUILDER_INFO,
        k.BUILDER_INFO_NAME,
        {"status": {"stacks": [], "buildpacks": [], "conditions": [condition(type=k.READY, status="True")]}},
        server.ns,
    )
    infos = await table(server, r.BUILDER_INFO)
    # The CRD's own columns, in its order, after Name.
    assert [(c["name"], c["type"]) for c in infos["columnDefinitions"]] == [
        ("Name", "string"),
        ("Age", "date"),
        ("Ready", "string"),
    ]
    ready = column(infos, "Ready")
    cells = {row["cells"][0]: ready(row) for row in infos["rows"]}
    # A path that finds nothing prints as null (kubectl shows <none>).
    assert cells == {k.BUILDER_INFO_NAME: "True", "no-status": None}
