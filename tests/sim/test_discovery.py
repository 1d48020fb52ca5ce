"""Discovery, version, health probes, and bearer-token authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from simcluster.crds import new_cluster
from simcluster.server import running_apiserver
from tests.sim.conftest import (
    CM,
    CRDS,
    GROUP,
    Kube,
    Obj,
    assert_page_not_found,
    assert_status,
    configmap,
    eventually,
    install_crd,
    path,
    widget_crd,
)

pytestmark = pytest.mark.anyio


async def test_core_discovery(kube: Kube) -> None:
    api = await kube.get("/api")
    assert api.status == 200
    assert api.body["kind"] == "APIVersions"
    assert api.body["versions"] == ["v1"]

    v1 = await kube.get("/api/v1")
    assert v1.body["kind"] == "APIResourceList"
    assert v1.body["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in v1.body["resources"]}
    for name, kind, namespaced in (
        ("namespaces", "Namespace", False),
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("events", "Event", True),
    ):
        assert (by_name[name]["kind"], by_name[name]["namespaced"]) == (kind, namespaced)
        assert {"create", "delete", "get", "list", "patch", "update", "watch"} <= set(by_name[name]["verbs"])
    assert "deletecollection" in by_name["configmaps"]["verbs"]
    assert "deletecollection" not in by_name["namespaces"]["verbs"]  # namespaces are deleted one by one
    assert by_name["configmaps"]["shortNames"] == ["cm"]
    assert "namespaces/status" in by_name


async def test_group_discovery(kube: Kube, widgets: Obj) -> None:
    groups = await kube.get("/apis")
    assert groups.body["kind"] == "APIGroupList"
    by_name = {g["name"]: g for g in groups.body["groups"]}
    for group in (
        "apiextensions.k8s.io",
        "coordination.k8s.io",
        "storage.k8s.io",
        "korifi.cloudfoundry.org",
        "kpack.io",
        GROUP,
    ):
        assert group in by_name, group
    kpack = by_name["kpack.io"]
    assert {v["version"] for v in kpack["versions"]} == {"v1alpha1", "v1alpha2"}
    assert kpack["preferredVersion"] == {"groupVersion": "kpack.io/v1alpha2", "version": "v1alpha2"}
    # Versions are in kube-aware order and the first is preferred, whichever one is stored.
    assert [v["version"] for v in by_name[GROUP]["versions"]] == ["v2", "v1"]
    assert by_name[GROUP]["preferredVersion"] == {"groupVersion": f"{GROUP}/v2", "version": "v2"}

    one = await kube.get("/apis/kpack.io")
    assert one.body["kind"] == "APIGroup"
    assert one.body["name"] == "kpack.io"
    assert one.body["preferredVersion"]["version"] == "v1alpha2"

    resources = await kube.get("/apis/kpack.io/v1alpha2")
    assert resources.body["kind"] == "APIResourceList"
    assert resources.body["groupVersion"] == "kpack.io/v1alpha2"
    by_resource = {r["name"]: r for r in resources.body["resources"]}
    image = by_resource["images"]
    assert (image["kind"], image["namespaced"], image["singularName"]) == ("Image", True, "image")
    assert "img" in image["shortNames"]
    assert image["categories"] == ["kpack"]
    assert "images/status" in by_resource
    assert by_resource["clusterbuilders"]["namespaced"] is False

    korifi = await kube.get("/apis/korifi.cloudfoundry.org/v1alpha1")
    assert {"buildworkloads", "buildworkloads/status", "builderinfos"} <= {
        r["name"] for r in korifi.body["resources"]
    }


async def test_discovery_of_unknown_things_is_not_found(kube: Kube) -> None:
    assert_status(
        await kube.get("/api/v2"), 404, "NotFound", "the server could not find the requested resource"
    )
    for url in ("/apis/nothing.example.com", "/apis/kpack.io/v9", "/apis/kpack.io/v1alpha2/nothings"):
        assert_page_not_found(await kube.get(url))


async def test_crd_removal_leaves_discovery(kube: Kube) -> None:
    crd = await install_crd(kube, widget_crd(group=kube.group))
    assert (await kube.get(f"/apis/{kube.group}")).status == 200
    reply = await kube.delete(f"{CRDS}/{crd['metadata']['name']}")
    assert reply.status == 200

    async def gone() -> bool:
        return (await kube.get(f"/apis/{kube.group}")).status == 404

    await eventually(gone)
    assert_page_not_found(await kube.get(kube.path(f"/apis/{kube.group}/v1/namespaces/{{ns}}/widgets")))


async def test_version_and_probes(kube: Kube) -> None:
    version = await kube.get("/version")
    assert version.status == 200
    assert version.body["major"] == "1"
    assert version.body["gitVersion"].startswith("v1.")
    for probe in ("/healthz", "/livez", "/readyz"):
        reply = await kube.get(probe)
        assert (reply.status, reply.body) == (200, "ok")


@pytest.fixture
async def secured() -> AsyncIterator[str]:
    async with running_apiserver(new_cluster(), token="s3cret") as server:
        yield server.url


async def test_bearer_token_is_required_when_configured(secured: str) -> None:
    async with aiohttp.ClientSession(base_url=secured) as anonymous:
        kube = Kube(anonymous)
        for url in ("/api/v1/namespaces", "/version", "/apis", path(CM)):
            assert_status(await kube.get(url), 401, "Unauthorized", "Unauthorized")
        wrong = await kube.request("GET", "/api/v1/namespaces", headers={"Authorization": "Bearer nope"})
        assert_status(wrong, 401, "Unauthorized")
        assert (await kube.get("/healthz")).status == 200  # probes stay open
    async with aiohttp.ClientSession(base_url=secured, headers={"Authorization": "Bearer s3cret"}) as authed:
        kube = Kube(authed)
        assert (await kube.get("/api/v1/namespaces")).status == 200
        assert (await kube.post(path(CM), configmap("c1"))).status == 201
