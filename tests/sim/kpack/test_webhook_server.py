"""kpack's webhooks served over HTTPS (AdmissionReview v1, as kube-apiserver calls them) answer as the
emulator's in-process hooks do, object for object: both sit on one ``KpackAdmission``, here literally the
same instance. The AdmissionReviews are sent as kube-apiserver sends them (the mutating webhook first, its
JSONPatch applied, then the validating one) to a server trusted through the CA bundle it registers.
Plus what only the server has: its answers' shape, and a kpack panic as a dropped connection."""

from __future__ import annotations

import base64
import copy
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jsonpatch
import orjson
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from simcluster.__main__ import build_parser
from simcluster.kpack import KpackWebhooks
from simcluster.kpack.webhook_server import DEFAULTS_PATH, VALIDATE_PATH, WebhookServer
from simcluster.kpack.webhooks import DEFAULTING, VALIDATING
from tests.sim.kpack.conftest import NS, Obj, image
from tests.sim.kpack.test_admission import ACCEPTED_QUIRKS, CREATE_CASES, RESOURCES, build, builder

pytestmark = pytest.mark.anyio

USER = "kubernetes-admin"


@pytest.fixture
async def webhook_server(webhooks: KpackWebhooks) -> AsyncIterator[WebhookServer]:
    async with WebhookServer(webhooks.admission).serving() as served:
        yield served


@pytest.fixture
async def http(webhook_server: WebhookServer) -> AsyncIterator[aiohttp.ClientSession]:
    # Trusts the CA the webhook configurations carry, and nothing else: as kube-apiserver does.
    connector = aiohttp.TCPConnector(
        ssl=webhook_server.certificate.client_context() if webhook_server.certificate else None
    )
    async with aiohttp.ClientSession(webhook_server.url, connector=connector) as session:
        yield session


def review(obj: Obj, operation: str = "CREATE", old: Obj | None = None, subresource: str = "") -> Obj:
    group, version = obj["apiVersion"].split("/")
    plural = RESOURCES[obj["kind"]].plural
    request: Obj = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": obj["kind"]},
        "resource": {"group": group, "version": version, "resource": plural},
        "name": obj["metadata"].get("name", ""),
        "namespace": obj["metadata"].get("namespace", ""),
        "operation": operation,
        "userInfo": {"username": USER, "groups": ["system:masters", "system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": False,
    }
    if subresource:
        request["subResource"] = subresource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


async def call(http: aiohttp.ClientSession, path: str, body: Obj) -> Obj:
    async with http.post(path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer: Obj = await resp.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == body["request"]["uid"]
    return answer["response"]  # type: ignore[no-any-return]


def refusal(webhook: str, response: Obj) -> str:
    """The message kube-apiserver makes of a webhook's refusal (webhookerrors.ToStatusErr)."""
    status = response["status"]
    assert (status["code"], status["reason"], status["status"]) == (400, "BadRequest", "Failure")
    return f'admission webhook "{webhook}" denied the request: {status["message"]}'


async def admit(
    http: aiohttp.ClientSession, obj: Obj, operation: str = "CREATE", old: Obj | None = None
) -> Obj | str:
    """The object after both webhooks, or the refusal message, as kube-apiserver would have them."""
    mutated = await call(http, DEFAULTS_PATH, review(obj, operation, old))
    if not mutated["allowed"]:
        return refusal(DEFAULTING, mutated)
    if "patch" in mutated:
        assert mutated["patchType"] == "JSONPatch"
        obj = jsonpatch.JsonPatch(orjson.loads(base64.b64decode(mutated["patch"]))).apply(obj)
    validated = await call(http, VALIDATE_PATH, review(obj, operation, old))
    return obj if validated["allowed"] else refusal(VALIDATING, validated)


async def emulated(client: KubeClient, obj: Obj, operation: str = "CREATE") -> Obj | str:
    """The same write through the emulator's hooks (dry run: the cases reuse names)."""
    res = RESOURCES[obj["kind"]]
    namespace = obj["metadata"].get("namespace")
    if operation == "CREATE":
        method, path = "POST", res.path(namespace)
    else:
        method, path = "PUT", res.path(namespace, obj["metadata"]["name"])
    status, headers, raw = await client.request(method, path, params={"dryRun": "All"}, body=obj)
    if status >= 300:
        return errors.error_from_response(status, raw, headers).message
    return orjson.loads(raw)  # type: ignore[no-any-return]


def same_answer(emulator: Obj | str, webhook: Obj | str) -> bool:
    if isinstance(emulator, str) or isinstance(webhook, str):
        return emulator == webhook
    return bool(emulator["spec"] == webhook["spec"])


DEFAULTED = [
    (
        "image with defaults to fill in",
        image(serviceAccountName="", build={"env": [{"name": "A", "value": "1"}]}),
    ),
    ("image opting out of the cache", image("nocache", cache={})),
    (
        "image with quantities to canonicalise",
        image(
            "canon",
            build={"resources": {"requests": {"memory": "1024000000", "ephemeral-storage": "2048Mi"}}},
        ),
    ),
    ("builder", builder()),
    ("cluster builder", builder("ClusterBuilder")),
    ("build", build()),
]
CASES = [(name, body) for name, body, _ in CREATE_CASES] + ACCEPTED_QUIRKS + DEFAULTED


async def test_the_webhook_server_and_the_emulators_hooks_answer_the_same_creates(
    http: aiohttp.ClientSession, client: KubeClient
) -> None:
    differ = []
    for name, body in CASES:
        emulator, webhook = (
            await emulated(client, copy.deepcopy(body)),
            await admit(http, copy.deepcopy(body)),
        )
        if not same_answer(emulator, webhook):
            differ.append((name, emulator, webhook))
    assert differ == []
    # Not vacuous: refusals and defaults are among the answers compared.
    assert await admit(http, CREATE_CASES[0][1]) == (
        f'admission webhook "{VALIDATING}" denied the request: validation failed: {CREATE_CASES[0][2]}'
    )
    defaulted = await admit(http, DEFAULTED[0][1])
    assert not isinstance(defaulted, str)
    assert defaulted["spec"]["serviceAccountName"] == "default"
    assert defaulted["spec"]["cache"] == {"volume": {"size": "2G"}}  # the default StorageClass, looked up


async def test_and_the_same_updates(http: aiohttp.ClientSession, client: KubeClient) -> None:
    stored = await client.create(
        r.IMAGE, image(cache={"volume": {"size": "5G", "storageClassName": "standard"}})
    )
    stored_build = await client.create(r.BUILD, build())
    updates = [
        {"tag": "registry.example.com/cf/other"},
        {"cache": {"volume": {"size": "4G", "storageClassName": "standard"}}},
        {"cache": {"volume": {"size": "6G", "storageClassName": "standard"}}},
        {"failedBuildHistoryLimit": 0},
    ]
    answers = []
    for spec in updates:
        new = copy.deepcopy(stored)
        new["spec"].update(spec)
        emulator = await emulated(client, copy.deepcopy(new), "UPDATE")
        webhook = await admit(http, new, "UPDATE", stored)
        assert same_answer(emulator, webhook), (spec, emulator, webhook)
        answers.append(webhook if isinstance(webhook, str) else "allowed")
    new_build = copy.deepcopy(stored_build)
    new_build["spec"]["tags"] = ["registry.example.com/other"]
    webhook = await admit(http, new_build, "UPDATE", stored_build)
    assert same_answer(await emulated(client, new_build, "UPDATE"), webhook)
    assert answers[2] == "allowed"
    assert "Immutable field changed: spec.tag" in answers[0]
    assert "Field cannot be decreased: spec.cache.volume.size" in answers[1]
    assert isinstance(webhook, str) and "Immutable fields changed (-old +new): spec.spec" in webhook


async def test_what_the_webhooks_do_not_handle_is_allowed_unchanged(http: aiohttp.ClientSession) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS}}
    body = review(image(tag=""))
    body["request"].update(
        kind={"group": "", "version": "v1", "kind": "ConfigMap"},
        resource={"group": "", "version": "v1", "resource": "configmaps"},
        object=config_map,
    )
    assert (await call(http, DEFAULTS_PATH, body)).keys() == {"uid", "allowed"}
    assert (await call(http, VALIDATE_PATH, body))["allowed"] is True
    v1alpha1 = review({**image(tag=""), "apiVersion": "kpack.io/v1alpha1"})
    assert (await call(http, VALIDATE_PATH, v1alpha1))["allowed"] is True  # matchPolicy Exact: v1alpha2 only
    async with http.post(VALIDATE_PATH, data=b"not json") as resp:
        assert resp.status == 400


async def test_a_panic_in_kpacks_validation_drops_the_connection(http: aiohttp.ClientSession) -> None:
    # An Image that skipped defaulting (history limits nil) makes kpack's Validate dereference nil.
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, VALIDATE_PATH, review(image()))
    assert not isinstance(await admit(http, image()), str)  # defaulted first, it passes; the server lives on


async def test_the_configurations_call_the_server_with_its_ca(webhook_server: WebhookServer) -> None:
    ca = base64.b64encode(webhook_server.ca_bundle).decode()
    found = {
        obj["metadata"]["name"]: (res.kind, obj["webhooks"]) for res, obj in webhook_server.configurations()
    }
    assert found.keys() == {DEFAULTING, VALIDATING}
    for name, path in ((DEFAULTING, DEFAULTS_PATH), (VALIDATING, VALIDATE_PATH)):
        kind, [webhook] = found[name]
        assert kind == (
            "MutatingWebhookConfiguration" if name == DEFAULTING else "ValidatingWebhookConfiguration"
        )
        assert webhook["name"] == name
        assert webhook["clientConfig"] == {"url": f"{webhook_server.url}{path}", "caBundle": ca}
        assert webhook_server.url.startswith("https://127.0.0.1:")
        assert (webhook["failurePolicy"], webhook["sideEffects"], webhook["matchPolicy"]) == (
            "Fail",
            "None",
            "Exact",
        )
        [rule] = webhook["rules"]
        assert rule["apiVersions"] == ["v1alpha2"] and rule["operations"] == ["CREATE", "UPDATE"]
        assert {"images", "images/status", "builds", "clusterlifecycles/status"} <= set(rule["resources"])
        assert not any(res.startswith("sourceresolvers") for res in rule["resources"])


async def test_a_public_url_is_named_by_the_certificate(webhooks: KpackWebhooks) -> None:
    async with WebhookServer(webhooks.admission, url="https://webhook.example.com:9443/").serving() as served:
        assert served.url == "https://webhook.example.com:9443"
        [(_, mutating), _] = served.configurations()
        assert mutating["webhooks"][0]["clientConfig"]["url"] == "https://webhook.example.com:9443/defaults"
        # The certificate is good for that name: a client that trusts the CA and asks for it gets through.
        assert served.certificate is not None
        connector = aiohttp.TCPConnector(ssl=served.certificate.client_context())
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                f"https://127.0.0.1:{served.port}{DEFAULTS_PATH}",
                json=review(image()),
                server_hostname="webhook.example.com",
            ) as resp,
        ):
            assert resp.status == 200


def test_every_flag_of_the_kpack_command_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "emulator.md").read_text()
    section = doc.split("## The kpack simulator on a real cluster", 1)[1].split("\n## ", 1)[0]
    command = build_parser()._subparsers._group_actions[0].choices["kpack"]  # type: ignore[union-attr]
    flags = [
        s
        for action in command._actions
        for s in action.option_strings
        if s.startswith("--") and s != "--help"
    ]
    assert len(flags) == 11
    for flag in flags:
        assert flag in section, f"docs/emulator.md's kpack section does not mention {flag}"
