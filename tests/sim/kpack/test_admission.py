"""kpack's admission webhooks, through HTTP: the exact refusal texts (table-driven, as kpack's validation
tests state them), defaulting and the round trip, status writes, and when the webhooks do not apply."""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.resources import Resource
from simcluster.kpack import KpackWebhooks
from simcluster.kpack.apis import CLUSTER_LIFECYCLE_RESOURCE
from simcluster.kpack.validation import KPACK_CONTROLLER
from simcluster.server import RunningApiServer
from tests.helpers import fast_client
from tests.sim.kpack.conftest import NS, PACKAGE, Obj, image

pytestmark = pytest.mark.anyio

DENIED = 'admission webhook "validation.webhook.kpack.io" denied the request: validation failed: '
DIGEST = "sha256:" + "a" * 64


def kpack_obj(kind: str, name: str, spec: Obj, namespace: str | None = None) -> Obj:
    meta: Obj = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "kpack.io/v1alpha2", "kind": kind, "metadata": meta, "spec": spec}


def build(name: str = "b", **spec: Any) -> Obj:
    return kpack_obj(
        "Build",
        name,
        {
            "tags": ["registry.example.com/app"],
            "builder": {"image": "registry.example.com/builder@" + DIGEST},
            "source": {"registry": {"image": PACKAGE}},
            **spec,
        },
        NS,
    )


def builder(kind: str = "Builder", **spec: Any) -> Obj:
    base: Obj = {"tag": "registry.example.com/builder", "stack": {"kind": "ClusterStack", "name": "stack"}}
    if kind == "ClusterBuilder":
        base["serviceAccountRef"] = {"name": "sa", "namespace": NS}
    return kpack_obj(kind, "bldr", {**base, **spec}, NS if kind == "Builder" else None)


RESOURCES: dict[str, Resource] = {
    "Image": r.IMAGE,
    "Build": r.BUILD,
    "Builder": r.BUILDER,
    "ClusterBuilder": r.CLUSTER_BUILDER,
    "ClusterStack": r.CLUSTER_STACK,
    "ClusterStore": r.CLUSTER_STORE,
    "ClusterBuildpack": r.CLUSTER_BUILDPACK,
    "Buildpack": r.BUILDPACK,
    "ClusterLifecycle": CLUSTER_LIFECYCLE_RESOURCE,
}


async def refusal(client: KubeClient, obj: Obj) -> str:
    with pytest.raises(errors.BadRequest) as info:
        await client.create(RESOURCES[obj["kind"]], obj)
    assert info.value.code == 400
    return info.value.message


CREATE_CASES: list[tuple[str, Obj, str]] = [
    ("image without tag", image(tag=""), "missing field(s): spec.tag"),
    (
        "image with a digest tag",
        image(tag="registry.example.com/app@" + DIGEST),
        f"invalid value: registry.example.com/app@{DIGEST}: spec.tag",
    ),
    (
        "image with an upper-case repository",
        image(tag="registry.example.com/App"),
        "invalid value: registry.example.com/App: spec.tag",
    ),
    (
        "image without builder name",
        image(builder={"kind": "ClusterBuilder"}),
        "missing field(s): spec.builder.name",
    ),
    (
        "image with a bad builder kind",
        image(builder={"kind": "Stack", "name": "x"}),
        "invalid value: Stack: spec.builder.kind",
    ),
    (
        "image with no source",
        image(source={}),
        "expected exactly one, got neither: spec.source.blob, spec.source.git, spec.source.registry",
    ),
    (
        "image with two sources",
        image(source={"git": {"url": "u", "revision": "r"}, "registry": {"image": PACKAGE}}),
        "expected exactly one, got both: spec.source.git, spec.source.registry",
    ),
    (
        "image with an incomplete git source",
        image(source={"git": {}}),
        "missing field(s): spec.source.git.revision, spec.source.git.url",
    ),
    (
        "image with a bad blob auth",
        image(source={"blob": {"url": "u", "auth": "x"}}),
        "invalid value: x: spec.source.blob.auth\nmust be one of '', 'helper', or 'secret'",
    ),
    (
        "image with two cache types",
        image(cache={"volume": {"size": "1G"}, "registry": {"tag": "t"}}),
        "only one type of cache can be specified: spec.cache.registry, spec.cache.volume",
    ),
    (
        "image with a zero history limit",
        image(failedBuildHistoryLimit=0),
        "build history limit must be greater than 0: spec.failedBuildHistoryLimit",
    ),
    (
        "image with a zero success limit",
        image(successBuildHistoryLimit=0),
        "build history limit must be greater than 0: spec.successBuildHistoryLimit",
    ),
    (
        "image with bad services",
        image(
            build={
                "services": [
                    {"name": "db", "kind": "Secret"},
                    {"name": "db", "kind": "Secret"},
                    {"name": "Bad_Name"},
                    {},
                ]
            }
        ),
        'duplicate service name "db": spec.build.services[0].name, spec.build.services[1].name\n'
        "invalid value: Bad_Name: spec.build.services[2].name\n"
        "missing field(s): spec.build.services[2].kind, spec.build.services[3].kind, spec.build.services[3].name",
    ),
    (
        "image with cnb bindings",
        image(build={"cnbBindings": [{"name": "b"}]}),
        "use of this field has been deprecated in v1alpha2, please use v1alpha1 for CNB bindings: spec.build.cnbBindings",
    ),
    (
        "image with notary",
        image(notary={"v1": {"url": "u", "secretRef": {"name": "s"}}}),
        "use of this field has been deprecated in v1alpha2, please use v1alpha1 for notary image signing: spec.notary",
    ),
    (
        "image with an os node selector",
        image(build={"nodeSelector": {"kubernetes.io/os": "linux"}}),
        'invalid key name "kubernetes.io/os": spec.build.nodeSelector\nos is determined automatically',
    ),
    (
        "image with a bad creation time",
        image(build={"creationTime": "yesterday"}),
        "invalid value: yesterday: spec.build.creationTime",
    ),
    (
        "image with another registry in additionalTags",
        image(additionalTags=["other.example.com/app"]),
        "all additionalTags must have the same registry as tag: spec.additionalTags\n"
        "expected registry: registry.example.com, got: other.example.com",
    ),
    (
        "image with a bad cosign annotation",
        image(cosign={"annotations": [{"name": "n"}]}),
        "missing field(s): spec.cosign.annotations[0].value",
    ),
    (
        "image name that is no label value",
        image(name="a" * 64),
        f"invalid image name: {'a' * 64}, name must be a valid label: metadata.name\nmust be no more than 63 characters",
    ),
    ("build without tags", build(tags=[]), "missing field(s): spec.tags"),
    ("build without builder", build(builder={}), "missing field(s): spec.builder.image, spec.builder.ref"),
    (
        "build with image and ref",
        build(builder={"image": "x", "ref": {"kind": "Builder", "name": "b"}}),
        "expected exactly one, got both: spec.builder.image, spec.builder.ref",
    ),
    (
        "build with an os node selector",
        build(nodeSelector={"kubernetes.io/os": "linux"}),
        'invalid key name "kubernetes.io/os": spec.nodeSelector\nos is determined automatically',
    ),
    ("builder without tag", builder(tag=""), "missing field(s): spec.tag"),
    (
        "builder with a wrong stack kind",
        builder(stack={"kind": "Stack", "name": "s"}),
        "invalid value: Stack: spec.stack.kind",
    ),
    (
        "builder with a wrong store kind",
        builder(store={"kind": "Store"}),
        "invalid value: Store: spec.store.kind\nmust be one of ClusterStore\nmissing field(s): spec.store.name",
    ),
    (
        "builder ordering an image",
        builder(order=[{"group": [{"image": "x"}]}]),
        "must not set the field(s): spec.order[0].group[0].image reference currently not supported",
    ),
    (
        "builder ordering nothing",
        builder(order=[{"group": [{"id": "a"}, {}]}]),
        "expected exactly one, got neither: spec.order[0].group[1].id, spec.order[0].group[1].image, "
        "spec.order[0].group[1].name + kind",
    ),
    (
        "builder ordering a wrong kind",
        builder(order=[{"group": [{"kind": "Store", "name": "n"}]}]),
        "invalid value: Store: spec.order[0].group[0].kind\nmust be one of Buildpack, ClusterBuildpack",
    ),
    (
        "cluster builder without service account",
        kpack_obj("ClusterBuilder", "cb", {"tag": ""}),
        "missing field(s): spec.serviceAccountRef.name",
    ),
    (
        "cluster builder without service account namespace",
        kpack_obj("ClusterBuilder", "cb", {"serviceAccountRef": {"name": "sa"}}),
        "missing field(s): spec.serviceAccountRef.namespace",
    ),
    (
        "cluster builder: paths without spec.",
        builder("ClusterBuilder", tag="", stack={"name": "s"}),
        "invalid value: : stack.kind\nmissing field(s): tag",
    ),
    (
        "cluster builder naming a store without its kind",
        builder("ClusterBuilder", store={"name": "st"}),
        "invalid value: : store.kind\nmust be one of ClusterStore",
    ),
    (
        "cluster stack without id",
        kpack_obj("ClusterStack", "s", {"buildImage": {"image": "b"}, "runImage": {"image": "Bad"}}),
        "invalid value: Bad: spec.runImage.image\nmissing field(s): spec.id",
    ),
    (
        "cluster stack with a bad service account",
        kpack_obj("ClusterStack", "s", {"serviceAccountRef": {"name": "sa"}}),
        "missing field(s): spec.serviceAccountRef.namespace",
    ),
    ("cluster store without sources", kpack_obj("ClusterStore", "s", {}), "missing field(s): spec.sources"),
    (
        "cluster store with a bad source",
        kpack_obj("ClusterStore", "s", {"sources": [{"image": "ok"}, {"image": "Bad"}]}),
        "invalid value: {Bad}: spec.sources[1]",
    ),
    (
        "cluster buildpack without image",
        kpack_obj("ClusterBuildpack", "b", {}),
        "missing field(s): spec.image",
    ),
    (
        "buildpack with a bad image",
        kpack_obj("Buildpack", "b", {"image": "Bad"}, NS),
        "invalid value: Bad: spec.image",
    ),
    (
        "cluster lifecycle without image",
        kpack_obj("ClusterLifecycle", "l", {}),
        "missing field(s): spec.image",
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"), [c[1:] for c in CREATE_CASES], ids=[c[0] for c in CREATE_CASES]
)
async def test_creates_are_refused_with_kpacks_messages(
    webhooks: KpackWebhooks, client: KubeClient, body: Obj, expected: str
) -> None:
    assert await refusal(client, body) == DENIED + expected


ACCEPTED_QUIRKS = [
    ("cluster builder store kind without name", builder("ClusterBuilder", store={"kind": "ClusterStore"})),
    ("buildpack ref kind without name", builder(order=[{"group": [{"kind": "ClusterBuildpack"}]}])),
    ("builder without store", builder()),
    ("image with an unvalidated tagging strategy", image(imageTaggingStrategy="Sometimes")),
]


@pytest.mark.parametrize("body", [c[1] for c in ACCEPTED_QUIRKS], ids=[c[0] for c in ACCEPTED_QUIRKS])
async def test_kpacks_lenient_checks_let_these_through(
    webhooks: KpackWebhooks, client: KubeClient, body: Obj
) -> None:
    await client.create(RESOURCES[body["kind"]], body)


async def replace(client: KubeClient, res: Resource, stored: Obj, **spec: Any) -> Obj:
    new = copy.deepcopy(stored)
    new["spec"].update(spec)
    return await client.update(res, new)


async def test_image_updates_keep_tag_cache_size_and_storage_class(
    webhooks: KpackWebhooks, client: KubeClient
) -> None:
    stored = await client.create(
        r.IMAGE, image(cache={"volume": {"size": "5G", "storageClassName": "standard"}})
    )
    cases = [
        (
            {"tag": "registry.example.com/cf/other"},
            "Immutable field changed: spec.tag\ngot: registry.example.com/cf/other, want: registry.example.com/cf/app-droplets",
        ),
        (
            {"cache": {"volume": {"size": "4G", "storageClassName": "standard"}}},
            "Field cannot be decreased: spec.cache.volume.size\ncurrent: 5G, requested: 4G",
        ),
        (
            {"cache": {"volume": {"size": "6G", "storageClassName": "fast"}}},
            "Immutable field changed: spec.cache.volume.storageClassName\ngot: fast, want: standard",
        ),
    ]
    for spec, expected in cases:
        with pytest.raises(errors.BadRequest) as info:
            await replace(client, r.IMAGE, stored, **spec)
        assert info.value.message == DENIED + expected
    grown = await replace(
        client, r.IMAGE, stored, cache={"volume": {"size": "5368709120", "storageClassName": "standard"}}
    )
    assert (
        grown["spec"]["cache"]["volume"]["size"] == "5368709120"
    )  # 5Gi > 5G: allowed (and canonical already)
    # Switching to a registry cache, or dropping the cache, is fine.
    await replace(client, r.IMAGE, grown, cache={"registry": {"tag": "registry.example.com/cache"}})


async def test_a_full_update_without_cache_gets_the_default_back_and_may_then_shrink(
    webhooks: KpackWebhooks, client: KubeClient
) -> None:
    stored = await client.create(r.IMAGE, image(cache={"volume": {"size": "5G"}}))
    body = copy.deepcopy(stored)
    del body["spec"]["cache"]
    with pytest.raises(errors.BadRequest) as info:
        await client.update(r.IMAGE, body)
    assert (
        info.value.message
        == DENIED + "Field cannot be decreased: spec.cache.volume.size\ncurrent: 5G, requested: 2G"
    )
    # A merge patch that leaves the cache alone is fine.
    await client.merge_patch(r.IMAGE, "app", {"spec": {"serviceAccountName": "other"}}, NS)


async def test_a_build_spec_is_immutable_but_its_metadata_and_status_are_not(
    webhooks: KpackWebhooks, client: KubeClient
) -> None:
    await client.create(r.BUILD, build())
    with pytest.raises(errors.BadRequest) as info:
        await client.merge_patch(r.BUILD, "b", {"spec": {"tags": ["registry.example.com/other"]}}, NS)
    # kpack's path is "spec" inside BuildSpec.Validate, which Build.Validate puts under "spec" again.
    assert info.value.message.startswith(DENIED + "Immutable fields changed (-old +new): spec.spec\n")
    patched = await client.merge_patch(
        r.BUILD, "b", {"metadata": {"annotations": {"image.kpack.io/additionalBuildNeeded": "true"}}}, NS
    )
    assert patched["metadata"]["annotations"] == {"image.kpack.io/additionalBuildNeeded": "true"}
    status = await client.patch_status(r.BUILD, "b", {"status": {"podName": "p", "extra": 1}}, NS)
    # The round trip drops unknown fields and adds Go's zero values to the status, too.
    assert status["status"] == {"stack": {}, "lifecycleVersion": "", "podName": "p"}


async def test_defaults(webhooks: KpackWebhooks, client: KubeClient) -> None:
    created = await client.create(
        r.IMAGE, image(serviceAccountName="", build={"env": [{"name": "A", "value": "1"}]})
    )
    spec = created["spec"]
    assert spec["serviceAccountName"] == "default"
    assert spec["imageTaggingStrategy"] == "BuildNumber"
    assert (spec["failedBuildHistoryLimit"], spec["successBuildHistoryLimit"]) == (10, 10)
    assert spec["cache"] == {"volume": {"size": "2G"}}  # no cache, and a default StorageClass: 2G
    assert spec["build"]["resources"] == {}
    no_cache = await client.create(r.IMAGE, image("nocache", cache={}))
    assert no_cache["spec"]["cache"] == {}  # cache: {} opts out
    canonical = await client.create(
        r.IMAGE,
        image(
            "canon",
            build={"resources": {"requests": {"memory": "1024000000", "ephemeral-storage": "2048Mi"}}},
        ),
    )
    assert canonical["spec"]["build"]["resources"] == {
        "requests": {"ephemeral-storage": "2Gi", "memory": "1024M"}
    }

    b = await client.create(r.BUILDER, builder())
    assert b["spec"]["stack"] == {"kind": "ClusterStack", "name": "stack"}
    assert b["spec"]["store"] == {"kind": "ClusterStore"}
    assert b["spec"]["lifecycle"] == {"kind": "ClusterLifecycle", "name": "default-lifecycle"}
    assert b["spec"]["serviceAccountName"] == "default"
    cb = await client.create(r.CLUSTER_BUILDER, builder("ClusterBuilder"))
    assert cb["spec"]["lifecycle"] == {"kind": "ClusterLifecycle", "name": "default-lifecycle"}
    assert cb["spec"]["store"] == {}  # not defaulted on a ClusterBuilder (Go writes the empty struct)
    assert (await client.create(r.BUILD, build()))["spec"]["serviceAccountName"] == "default"


async def test_without_a_default_storage_class_there_is_no_cache_default_and_a_volume_needs_a_class(
    api: RunningApiServer, client: KubeClient
) -> None:
    api.cluster.ensure_namespace(NS)
    webhooks = KpackWebhooks(api.cluster).install()
    try:
        created = await client.create(r.IMAGE, image())
        assert "cache" not in created["spec"]
        assert await refusal(client, image("vol", cache={"volume": {"size": "1G"}})) == DENIED + (
            "spec.cache.volume.size cannot be set without spec.cache.volume.storageClassName or a default "
            "StorageClass: "
        )
        await client.create(
            r.IMAGE, image("named", cache={"volume": {"size": "1G", "storageClassName": "x"}})
        )
    finally:
        webhooks.uninstall()


async def test_status_writes_are_validated_too(
    webhooks: KpackWebhooks, api: RunningApiServer, client: KubeClient
) -> None:
    stored = await client.create(r.IMAGE, image(cache={"volume": {"size": "1G"}}))
    kind = api.cluster.kind_for(r.STORAGE_CLASS.group, r.STORAGE_CLASS.plural)
    api.cluster.delete(kind, "v1", None, "standard")  # the default class goes away
    with pytest.raises(errors.BadRequest) as info:
        await client.update_status(r.IMAGE, {**stored, "status": {"observedGeneration": 1}})
    assert "spec.cache.volume.size cannot be set without" in info.value.message


async def test_wrong_json_types_fail_in_the_defaulting_webhook(
    webhooks: KpackWebhooks, client: KubeClient
) -> None:
    assert await refusal(client, image(failedBuildHistoryLimit="5")) == (
        'admission webhook "defaults.webhook.kpack.io" denied the request: mutation failed: cannot decode incoming '
        "new object: json: cannot unmarshal string into Go struct field ImageSpec.spec.failedBuildHistoryLimit of "
        "type int64"
    )


async def test_refusals_are_bad_request_statuses(webhooks: KpackWebhooks, api: RunningApiServer) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{api.url}{r.IMAGE.path(NS)}"
        async with session.post(url, json=image(tag="")) as resp:
            assert resp.status == 400
            assert await resp.json() == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": DENIED + "missing field(s): spec.tag",
                "reason": "BadRequest",
                "code": 400,
            }


async def test_only_v1alpha2_is_admitted_and_excluded_namespaces_are_skipped(
    webhooks: KpackWebhooks, api: RunningApiServer, client: KubeClient
) -> None:
    v1alpha1 = Resource("kpack.io", "v1alpha1", "images", "Image", True, True)
    body = {**image(tag=""), "apiVersion": "kpack.io/v1alpha1"}
    created = await client.create(v1alpha1, body)
    assert created["spec"]["tag"] == ""  # neither validated nor defaulted
    api.cluster.create(
        api.cluster.kind_for("", "namespaces"),
        "v1",
        None,
        {"metadata": {"name": "excluded", "labels": {"webhooks.knative.dev/exclude": "true"}}},
    )
    await client.create(r.IMAGE, image(tag="", namespace="excluded"))
    # SourceResolvers are not kpack-admitted at all.
    await client.create(
        Resource("kpack.io", "v1alpha2", "sourceresolvers", "SourceResolver", True, True),
        kpack_obj("SourceResolver", "sr", {"source": {}, "junk": 1}, NS),
    )


async def test_controller_only_fields_are_accepted_from_kpacks_service_account(
    webhooks: KpackWebhooks, api: RunningApiServer
) -> None:
    api.server.users["controller-token"] = KPACK_CONTROLLER
    async with fast_client(api.url, token="controller-token") as controller:
        created = await controller.create(
            r.IMAGE, image(build={"cnbBindings": [{"name": "b", "metadataRef": {"name": "m"}}]})
        )
    assert created["spec"]["build"]["cnbBindings"] == [{"name": "b", "metadataRef": {"name": "m"}}]
    async with aiohttp.ClientSession() as session:  # impersonation works too
        headers = {"Impersonate-User": KPACK_CONTROLLER}
        async with session.post(
            f"{api.url}{r.IMAGE.path(NS)}",
            json=image("other", notary={"v1": {"url": "u", "secretRef": {"name": "s"}}}),
            headers=headers,
        ) as resp:
            assert resp.status == 201, await resp.text()


async def test_uninstalled_webhooks_admit_nothing(webhooks: KpackWebhooks, client: KubeClient) -> None:
    webhooks.uninstall()
    created = await client.create(r.IMAGE, image(tag=""))
    assert created["spec"]["tag"] == ""


async def test_the_webhooks_match_kpack_kinds_and_look_up_storage_classes_only_when_needed(
    webhooks: KpackWebhooks, api: RunningApiServer, client: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    kinds = api.cluster.kinds.values()
    admitted = {res.plural for res in RESOURCES.values()}
    for hook in (webhooks.defaulting, webhooks.validating):
        assert {(k.group, k.plural) for k in kinds if hook.applies_to(k)} == {
            ("kpack.io", p) for p in admitted
        }

    lookups = 0
    lookup = webhooks.storage_context

    def counting() -> tuple[bool, bool]:
        nonlocal lookups
        lookups += 1
        return lookup()

    monkeypatch.setattr(webhooks, "storage_context", counting)
    await client.create(r.BUILD, build())
    await client.create(r.BUILDER, builder())
    await client.create(r.IMAGE, image("nocache", cache={}))
    await client.create(r.CONFIG_MAP, {"metadata": {"name": "c"}}, NS)
    assert lookups == 0  # nothing asked about a volume cache
    created = await client.create(r.IMAGE, image())
    assert created["spec"]["cache"] == {"volume": {"size": "2G"}}
    assert lookups == 2  # once for defaulting the cache, once for validating its storage class
