"""Metadata: uid, timestamps, resourceVersion, generation, generateName, name/label syntax, namespaces."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.sim.conftest import (
    BW,
    CM,
    CRDS,
    NAMESPACES,
    WIDGETS,
    Kube,
    Obj,
    assert_status,
    build_workload,
    configmap,
    widget,
    widget_crd,
)

pytestmark = pytest.mark.anyio

RFC3339_SECONDS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


async def test_system_metadata_on_create(kube: Kube, widgets: Obj) -> None:
    for template, body in ((CM, configmap("c1")), (WIDGETS, widget("w1")), (BW, build_workload("b1"))):
        created = await kube.create(template, body)
        meta = created["metadata"]
        assert str(uuid.UUID(meta["uid"])) == meta["uid"]
        assert RFC3339_SECONDS.match(meta["creationTimestamp"]), meta["creationTimestamp"]
        assert isinstance(meta["resourceVersion"], str) and meta["resourceVersion"].isdigit()
        assert "deletionTimestamp" not in meta
        got = await kube.must_get(template, meta["name"])
        assert got["metadata"]["uid"] == meta["uid"]
        assert got["metadata"]["resourceVersion"] == meta["resourceVersion"]


async def test_client_supplied_system_fields_are_ignored(kube: Kube, widgets: Obj) -> None:
    body = widget("w1")
    body["metadata"].update(
        uid="11111111-1111-1111-1111-111111111111",
        creationTimestamp="2001-01-01T00:00:00Z",
        generation=42,
        deletionTimestamp="2001-01-01T00:00:00Z",
    )
    created = await kube.create(WIDGETS, body)
    meta = created["metadata"]
    assert meta["uid"] != "11111111-1111-1111-1111-111111111111"
    assert meta["creationTimestamp"] != "2001-01-01T00:00:00Z"
    assert meta["generation"] == 1
    assert "deletionTimestamp" not in meta

    # On update the stored values win too.
    changed = {
        **created,
        "metadata": {**meta, "uid": meta["uid"], "creationTimestamp": "2001-01-01T00:00:00Z"},
    }
    changed["metadata"]["generation"] = 99
    updated = await kube.put(kube.path(WIDGETS, name="w1"), changed)
    assert updated.status == 200, updated.body
    assert updated.body["metadata"]["creationTimestamp"] == meta["creationTimestamp"]
    assert updated.body["metadata"]["generation"] == 1


async def test_resource_version_is_one_global_increasing_counter(kube: Kube, widgets: Obj) -> None:
    rvs = []
    rvs.append((await kube.create(CM, configmap("c1")))["metadata"]["resourceVersion"])
    rvs.append((await kube.create(WIDGETS, widget("w1")))["metadata"]["resourceVersion"])
    rvs.append((await kube.create(BW, build_workload("b1")))["metadata"]["resourceVersion"])
    rvs.append((await kube.patch(kube.path(CM, name="c1"), {"data": {"k": "2"}})).rv)
    rvs.append((await kube.patch(kube.path(WIDGETS, name="w1"), {"spec": {"size": 3}})).rv)
    other = await kube.namespace("other")
    rvs.append((await kube.must_get(NAMESPACES, other))["metadata"]["resourceVersion"])
    rvs.append((await kube.create(CM, configmap("c2"), ns=other))["metadata"]["resourceVersion"])
    assert all(isinstance(rv, str) for rv in rvs)
    numbers = [int(rv) for rv in rvs]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
    # A list answers at the newest resourceVersion.
    listed = await kube.get("/api/v1/configmaps")
    assert int(listed.body["metadata"]["resourceVersion"]) >= numbers[-1]


async def test_generation_counts_spec_changes_only(kube: Kube, widgets: Obj) -> None:
    url = kube.path(WIDGETS, name="w1")
    created = await kube.create(WIDGETS, widget("w1"))
    assert created["metadata"]["generation"] == 1

    spec = await kube.patch(url, {"spec": {"size": 2}})
    assert spec.body["metadata"]["generation"] == 2
    labels = await kube.patch(url, {"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}}})
    assert labels.body["metadata"]["generation"] == 2
    assert int(labels.rv) > int(spec.rv)
    status = await kube.patch(kube.path(WIDGETS, name="w1", sub="status"), {"status": {"phase": "Ready"}})
    assert status.status == 200, status.body
    assert status.body["metadata"]["generation"] == 2
    assert status.body["status"] == {"phase": "Ready"}
    finalizer = await kube.patch(url, {"metadata": {"finalizers": ["example.com/hold"]}})
    assert finalizer.body["metadata"]["generation"] == 2
    current = await kube.must_get(WIDGETS, "w1")
    current["spec"]["color"] = "blue"
    put = await kube.put(url, current)
    assert put.body["metadata"]["generation"] == 3
    # Starting deletion bumps it once more (controllers see the change as a new generation).
    deleting = await kube.delete(url)
    assert deleting.status == 200
    assert deleting.body["metadata"]["generation"] == 4


async def test_built_in_kinds_without_generation(kube: Kube) -> None:
    created = await kube.create(CM, configmap("c1"))
    assert "generation" not in created["metadata"]
    patched = await kube.patch(kube.path(CM, name="c1"), {"data": {"k": "changed"}})
    assert "generation" not in patched.body["metadata"]


async def test_crd_generation_follows_its_spec(kube: Kube) -> None:
    crd = await kube.post(CRDS, widget_crd(group=kube.group))
    assert crd.body["metadata"]["generation"] == 1
    name = crd.body["metadata"]["name"]
    labelled = await kube.patch(f"{CRDS}/{name}", {"metadata": {"labels": {"a": "b"}}})
    assert labelled.body["metadata"]["generation"] == 1
    short = await kube.patch(f"{CRDS}/{name}", {"spec": {"names": {"shortNames": ["wdg"]}}})
    assert short.status == 200, short.body
    assert short.body["metadata"]["generation"] == 2


async def test_generate_name(kube: Kube) -> None:
    first = await kube.create(CM, {"metadata": {"generateName": "app-"}, "data": {}})
    second = await kube.create(CM, {"metadata": {"generateName": "app-"}, "data": {}})
    for made in (first, second):
        name = made["metadata"]["name"]
        assert re.fullmatch(r"app-[a-z0-9]{5}", name), name
        assert made["metadata"]["generateName"] == "app-"
    assert first["metadata"]["name"] != second["metadata"]["name"]
    status = assert_status(await kube.post(kube.path(CM), {"metadata": {}, "data": {}}), 422, "Invalid")
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueRequired",
            "message": "Required value: name or generateName is required",
            "field": "metadata.name",
        }
    ]


@pytest.mark.parametrize("name", ["Upper", "under_score", "-dash", "dash-", "a" * 254, "sp ace"])
async def test_object_names_must_be_dns_subdomains(kube: Kube, name: str) -> None:
    status = assert_status(await kube.post(kube.path(CM), configmap(name)), 422, "Invalid")
    assert status["details"]["causes"][0]["field"] == "metadata.name"
    assert status["details"]["causes"][0]["reason"] == "FieldValueInvalid"
    assert status["message"].startswith(f'ConfigMap "{name}" is invalid: metadata.name: Invalid value: ')


async def test_dotted_names_are_fine_but_namespaces_must_be_labels(kube: Kube) -> None:
    assert (await kube.post(kube.path(CM), configmap("a.b.c"))).status == 201
    status = assert_status(
        await kube.post("/api/v1/namespaces", {"metadata": {"name": "a.b"}}), 422, "Invalid"
    )
    assert status["details"]["causes"][0]["field"] == "metadata.name"
    long = assert_status(
        await kube.post("/api/v1/namespaces", {"metadata": {"name": "n" * 64}}), 422, "Invalid"
    )
    assert "must be no more than 63 characters" in long["message"]


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        ({"app": "has space"}, "metadata.labels"),
        ({"app": "v" * 64}, "metadata.labels"),
        ({"app": "-leading"}, "metadata.labels"),
        ({"-bad-key": "v"}, "metadata.labels"),
        ({"Bad_Prefix.example.com/key": "v"}, "metadata.labels"),
        ({"a/b/c": "v"}, "metadata.labels"),
        ({"k" * 64: "v"}, "metadata.labels"),
    ],
)
async def test_label_syntax(kube: Kube, labels: dict[str, str], field: str) -> None:
    status = assert_status(await kube.post(kube.path(CM), configmap("c1", labels)), 422, "Invalid")
    assert [c["field"] for c in status["details"]["causes"]] == [field]
    # The same rules hold on update.
    await kube.create(CM, configmap("c2"))
    assert_status(
        await kube.patch(kube.path(CM, name="c2"), {"metadata": {"labels": labels}}), 422, "Invalid"
    )


async def test_annotations_are_limited_to_256_kib_in_all(kube: Kube) -> None:
    """kube-apiserver counts the bytes of every key and value together (what makes kpack unable to
    create a Build whose buildChanges annotation records a huge env)."""
    at_limit = {"a": "x" * (256 * 1024 - 2), "b": ""}
    created = await kube.create(CM, configmap("c1"))
    assert created
    ok = await kube.patch(kube.path(CM, name="c1"), {"metadata": {"annotations": at_limit}})
    assert ok.status == 200
    over = {"a": "x" * (128 * 1024), "b": "é" * (64 * 1024)}  # 256 KiB of characters, more in bytes
    status = assert_status(
        await kube.post(kube.path(CM), {**configmap("c2"), "metadata": {"name": "c2", "annotations": over}}),
        422,
        "Invalid",
    )
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueTooLong",
            "field": "metadata.annotations",
            "message": "Too long: may not be more than 262144 bytes",
        }
    ]
    assert status["message"].endswith("metadata.annotations: Too long: may not be more than 262144 bytes")


async def test_valid_labels(kube: Kube) -> None:
    labels = {"app": "", "example.com/app": "v1.2_3-x", "korifi.cloudfoundry.org/app-guid": "a" * 63}
    created = await kube.create(CM, configmap("c1", labels))
    assert created["metadata"]["labels"] == labels


async def test_namespaced_create_needs_an_existing_namespace(kube: Kube, widgets: Obj) -> None:
    missing = f"{kube.ns}-missing"
    for template, body in ((CM, configmap("c1")), (WIDGETS, widget("w1")), (BW, build_workload("b1"))):
        status = assert_status(
            await kube.post(kube.path(template, missing), body),
            404,
            "NotFound",
            f'namespaces "{missing}" not found',
        )
        assert status["details"] == {"name": missing, "kind": "namespaces"}


async def test_reads_and_writes_in_a_missing_namespace_name_the_object(kube: Kube) -> None:
    """Only create checks the namespace (admission); other verbs just do not find the object."""
    msg = 'configmaps "c1" not found'
    missing = f"{kube.ns}-missing"
    assert_status(await kube.get(kube.path(CM, missing, "c1")), 404, "NotFound", msg)
    assert_status(await kube.put(kube.path(CM, missing, "c1"), configmap("c1")), 404, "NotFound", msg)
    assert_status(await kube.patch(kube.path(CM, missing, "c1"), {"data": {}}), 404, "NotFound", msg)
    assert_status(await kube.delete(kube.path(CM, missing, "c1")), 404, "NotFound", msg)
    listed = await kube.get(kube.path(CM, missing))
    assert listed.status == 200 and listed.body["items"] == []
    swept = await kube.delete(kube.path(CM, missing))
    assert swept.status == 200 and swept.body["items"] == []


async def test_url_and_body_namespace_must_agree(kube: Kube) -> None:
    other = await kube.namespace("other")
    body = configmap("c1", metadata={"namespace": other})
    msg = "the namespace of the provided object does not match the namespace sent on the request"
    assert_status(await kube.post(kube.path(CM), body), 400, "BadRequest", msg)
    created = await kube.create(CM, configmap("c1"))
    created["metadata"]["namespace"] = other
    assert_status(await kube.put(kube.path(CM, name="c1"), created), 400, "BadRequest", msg)
    # A body without a namespace takes the URL's.
    made = await kube.create(CM, configmap("c2"), ns=other)
    assert made["metadata"]["namespace"] == other


async def test_url_and_body_name_must_agree(kube: Kube) -> None:
    created = await kube.create(CM, configmap("c1"))
    created["metadata"]["name"] = "c2"
    assert_status(
        await kube.put(kube.path(CM, name="c1"), created),
        400,
        "BadRequest",
        "the name of the object (c2) does not match the name on the URL (c1)",
    )


async def test_create_with_resource_version_is_refused(kube: Kube) -> None:
    body = configmap("c1", metadata={"resourceVersion": "5"})
    reply = await kube.post(kube.path(CM), body)
    assert_status(reply, 500, "", "resourceVersion should not be set on objects to be created")
