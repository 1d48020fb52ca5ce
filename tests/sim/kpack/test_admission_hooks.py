"""The emulator's admission hook API, on which kpack's webhooks sit: where in a write the hooks run (as in
kube-apiserver: mutating before schema defaulting and pruning, validating on the final object), what they
are told (operation, old object, subresource, user), and how their refusals and failures reach clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from service.kube import errors
from simcluster import store as store_module
from simcluster.cluster import AdmissionHook, AdmissionRequest, AdmissionRule, Cluster
from simcluster.server import ADMIN_USER, ANONYMOUS, RunningApiServer, running_apiserver
from tests.sim.kpack.conftest import Obj

pytestmark = pytest.mark.anyio

GROUP = "hooks.example.com"


def gadget_crd() -> Obj:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "size": {"type": "integer", "default": 1},
                    "color": {"type": "string"},
                },
            },
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                }
            ],
        },
    }


class Recorder:
    """A hook pair that records what it is shown, and can be told to refuse or to fail."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, AdmissionRequest, Obj | None]] = []
        self.refuse: dict[str, errors.ApiError] = {}
        self.crash = False
        self.hook = AdmissionHook("recorder.example.com", mutate=self.mutate, validate=self.validate)

    def mutate(self, request: AdmissionRequest, obj: Obj) -> None:
        self.seen.append(("mutate", request, {**obj, "spec": dict(obj.get("spec") or {})}))
        if self.crash:
            raise RuntimeError("connection refused")
        if "mutate" in self.refuse:
            raise self.refuse["mutate"]
        spec = obj.setdefault("spec", {})
        spec["color"] = spec.get("color") or "blue"
        spec["extra"] = "pruned later"  # not in the schema: pruned after mutation, as webhook additions are

    def validate(self, request: AdmissionRequest, obj: Obj | None) -> None:
        self.seen.append(("validate", request, obj))
        if "validate" in self.refuse:
            raise self.refuse["validate"]

    def of(self, phase: str) -> list[tuple[AdmissionRequest, Obj | None]]:
        return [(req, obj) for p, req, obj in self.seen if p == phase]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def hooked(recorder: Recorder) -> AsyncIterator[RunningApiServer]:
    cluster = Cluster()
    cluster.ensure_namespace("default")
    crd_kind = cluster.kind_for("apiextensions.k8s.io", "customresourcedefinitions")
    cluster.create(crd_kind, "v1", None, gadget_crd())
    cluster.add_admission_hook(recorder.hook)
    async with running_apiserver(cluster, users={"t0k3n": "alice"}) as api:
        yield api


def url(api: RunningApiServer, name: str | None = None, sub: str | None = None) -> str:
    out = f"{api.url}/apis/{GROUP}/v1/namespaces/default/gadgets"
    return out + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def gadget(name: str | None = "g", **spec: Any) -> Obj:
    meta: Obj = {"name": name} if name else {"generateName": "g-"}
    return {"apiVersion": f"{GROUP}/v1", "kind": "Gadget", "metadata": meta, "spec": spec}


async def call(method: str, target: str, body: Any = None, **headers: str) -> tuple[int, Obj]:
    async with aiohttp.ClientSession() as session:
        ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
        async with session.request(
            method, target, json=body, headers={"Content-Type": ctype, **headers}
        ) as resp:
            return resp.status, await resp.json()


async def test_create_mutates_before_the_schema_and_validates_the_final_object(
    hooked: RunningApiServer, recorder: Recorder
) -> None:
    status, created = await call("POST", url(hooked), gadget(None))
    assert status == 201, created
    [(mreq, mobj)] = recorder.of("mutate")
    [(vreq, vobj)] = recorder.of("validate")
    assert (mreq.operation, mreq.name, mreq.namespace, mreq.version, mreq.old) == (
        "CREATE",
        "",
        "default",
        "v1",
        None,
    )
    assert mobj is not None and mobj["spec"] == {}  # before schema defaulting: no size yet
    assert vobj is not None
    assert vobj["spec"] == {"size": 1, "color": "blue"}  # mutated, defaulted, pruned
    assert vreq.name == vobj["metadata"]["name"] != ""  # generated after mutation
    assert vobj["metadata"]["uid"] and vobj["metadata"]["generation"] == 1
    assert created["spec"] == vobj["spec"]
    assert (mreq.user, vreq.user) == (ANONYMOUS, ANONYMOUS)


async def test_update_hooks_see_the_stored_object_and_the_subresource(
    hooked: RunningApiServer, recorder: Recorder
) -> None:
    _, created = await call("POST", url(hooked), gadget(size=2))
    recorder.seen.clear()
    status, patched = await call(
        "PATCH", url(hooked, "g", "status"), {"status": {"phase": "Up"}, "spec": {"size": 9}}
    )
    assert status == 200, patched
    [(mreq, mobj)] = recorder.of("mutate")
    [(vreq, vobj)] = recorder.of("validate")
    assert (mreq.operation, mreq.subresource) == (vreq.operation, vreq.subresource) == ("UPDATE", "status")
    assert (
        mreq.old is not None
        and mreq.old["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    )
    assert mobj is not None and mobj["spec"]["size"] == 9  # the request as sent
    assert (
        vobj is not None and vobj["spec"]["size"] == 2 and vobj["status"] == {"phase": "Up"}
    )  # what is stored


async def test_mutating_refusals_win_over_conflicts_and_conflicts_over_validating_ones(
    hooked: RunningApiServer, recorder: Recorder
) -> None:
    await call("POST", url(hooked), gadget())
    stale = {**gadget(), "metadata": {"name": "g", "resourceVersion": "1"}}
    recorder.refuse["validate"] = errors.BadRequest("validator says no")
    status, body = await call("PUT", url(hooked, "g"), stale)
    assert (status, body["reason"]) == (409, "Conflict")  # the lock is checked before validating hooks
    recorder.refuse["mutate"] = errors.BadRequest("mutator says no")
    status, body = await call("PUT", url(hooked, "g"), stale)
    assert (status, body["message"]) == (400, "mutator says no")  # mutating hooks run before the lock check


async def test_deletes_are_validated_after_their_preconditions(
    hooked: RunningApiServer, recorder: Recorder
) -> None:
    await call("POST", url(hooked), gadget())
    recorder.refuse["validate"] = errors.Forbidden("not this one")
    status, body = await call("DELETE", url(hooked, "g"), {"preconditions": {"uid": "wrong"}})
    assert status == 409 and not recorder.of("validate")[1:]
    status, body = await call("DELETE", url(hooked, "g"))
    assert (status, body["message"]) == (403, "not this one")
    req, obj = recorder.of("validate")[-1]
    assert (req.operation, obj) == ("DELETE", None) and req.old is not None


async def test_users_come_from_tokens_or_impersonation(hooked: RunningApiServer, recorder: Recorder) -> None:
    await call("POST", url(hooked), gadget("a"), Authorization="Bearer t0k3n")
    await call("POST", url(hooked), gadget("b"), **{"Impersonate-User": "system:serviceaccount:x:y"})
    assert [req.user for req, _ in recorder.of("validate")] == ["alice", "system:serviceaccount:x:y"]


async def test_a_failing_hook_is_an_internal_error_and_dry_runs_are_admitted(
    hooked: RunningApiServer, recorder: Recorder
) -> None:
    recorder.crash = True
    status, body = await call("POST", url(hooked), gadget())
    assert (status, body["reason"]) == (500, "InternalError")
    assert (
        body["message"]
        == 'Internal error occurred: failed calling webhook "recorder.example.com": connection refused'
    )
    recorder.crash = False
    status, _ = await call("POST", url(hooked) + "?dryRun=All", gadget())
    assert status == 201 and recorder.of("validate")[-1][0].dry_run


async def test_the_admin_token_user(recorder: Recorder) -> None:
    cluster = Cluster()
    cluster.ensure_namespace("default")
    cluster.create(
        cluster.kind_for("apiextensions.k8s.io", "customresourcedefinitions"), "v1", None, gadget_crd()
    )
    cluster.add_admission_hook(recorder.hook)
    async with running_apiserver(cluster, token="admin") as api:
        status, _ = await call("POST", url(api), gadget(), Authorization="Bearer admin")
        assert status == 201
        status, _ = await call("POST", url(api), gadget("x"), Authorization="Bearer nope")
        assert status == 401
    assert [req.user for req, _ in recorder.of("validate")] == [ADMIN_USER]
    cluster.remove_admission_hook(recorder.hook)
    assert cluster.admission == []


def test_rules_choose_the_kinds_a_hook_is_called_for(recorder: Recorder) -> None:
    cluster = Cluster()
    cluster.ensure_namespace("default")
    cluster.create(
        cluster.kind_for("apiextensions.k8s.io", "customresourcedefinitions"), "v1", None, gadget_crd()
    )
    gadgets, configmaps = cluster.kind_for(GROUP, "gadgets"), cluster.kind_for("", "configmaps")
    secrets = cluster.kind_for("", "secrets")
    assert AdmissionHook("any").applies_to(configmaps)  # by default, every kind
    assert not AdmissionHook("none", rules=()).applies_to(configmaps)
    core = AdmissionHook("core", rules=(AdmissionRule(api_groups=("",), resources=("configmaps",)),))
    assert core.applies_to(configmaps) and not core.applies_to(secrets) and not core.applies_to(gadgets)
    assert AdmissionHook("all-core", rules=(AdmissionRule(api_groups=("",)),)).applies_to(secrets)

    only = (AdmissionRule(api_groups=(GROUP,), resources=("gadgets",)),)
    cluster.add_admission_hook(
        AdmissionHook("gadgets", mutate=recorder.mutate, validate=recorder.validate, rules=only)
    )
    cluster.create(configmaps, "v1", "default", {"metadata": {"name": "c"}})
    cluster.update(configmaps, "v1", "default", "c", {"metadata": {"name": "c"}, "data": {"a": "b"}})
    cluster.delete(configmaps, "v1", "default", "c")
    assert recorder.seen == []
    cluster.create(gadgets, "v1", "default", gadget())
    cluster.patch(
        gadgets,
        "v1",
        "default",
        "g",
        "application/merge-patch+json",
        b'{"status": {"phase": "Up"}}',
        subresource="status",
    )
    cluster.delete(gadgets, "v1", "default", "g")
    assert [(phase, req.operation, req.subresource) for phase, req, _ in recorder.seen] == [
        ("mutate", "CREATE", None),
        ("validate", "CREATE", None),
        ("mutate", "UPDATE", "status"),  # a kind's subresources go with it
        ("validate", "UPDATE", "status"),
        ("validate", "DELETE", None),
    ]


def test_writes_no_hook_matches_make_no_admission_copies(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = 0
    fresh = store_module.fresh

    def counting(obj: Obj) -> Obj:
        nonlocal copies
        copies += 1
        return fresh(obj)

    monkeypatch.setattr(store_module, "fresh", counting)

    def copies_for_writes(rules: tuple[AdmissionRule, ...] | None) -> int:
        nonlocal copies
        cluster = Cluster()
        cluster.ensure_namespace("default")
        if rules is not None:
            cluster.add_admission_hook(
                AdmissionHook("h", mutate=recorder.mutate, validate=recorder.validate, rules=rules)
            )
        configmaps = cluster.kind_for("", "configmaps")
        copies = 0
        cluster.create(configmaps, "v1", "default", {"metadata": {"name": "c"}})
        cluster.update(configmaps, "v1", "default", "c", {"metadata": {"name": "c"}, "data": {"a": "b"}})
        cluster.delete(configmaps, "v1", "default", "c")
        return copies

    others = (AdmissionRule(api_groups=(GROUP,), resources=("gadgets",)),)
    assert copies_for_writes(None) == copies_for_writes(others) < copies_for_writes((AdmissionRule(),))
