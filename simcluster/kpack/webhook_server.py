"""kpack's admission webhooks as a real API server calls them: AdmissionReview v1 over HTTPS.

``WebhookServer`` serves ``/defaults`` and ``/validate`` (the paths of kpack's webhook process) with the
implementation the emulator's hooks use (``webhooks.KpackAdmission``), on a certificate made at start by
its own throwaway CA; ``registered`` writes the MutatingWebhookConfiguration ``defaults.webhook.kpack.io``
and the ValidatingWebhookConfiguration ``validation.webhook.kpack.io`` (kpack's names, and the rules
knative's reconciler gives them: the nine kinds and their ``/status`` in ``v1alpha2``, CREATE and UPDATE,
namespaces without ``webhooks.knative.dev/exclude``) pointing at the server by ``clientConfig.url``, waits
until the API server calls them, and deletes them on the way out (``failurePolicy: Fail`` would otherwise
block every kpack write once the server is gone).

Answers are knative's: a mutation is a JSONPatch from the object received to the re-encoded, defaulted
one (Go's round trip included); a refusal is ``allowed: false`` with a 400 ``BadRequest`` status carrying
the webhook's message, to which kube-apiserver adds ``admission webhook "<name>" denied the request:``.
Where kpack's Go code would panic (``WebhookPanic``) the connection is dropped without an answer, as Go's
HTTP server does, so the client gets kube-apiserver's own ``... failed to call webhook: ... EOF``.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import jsonpatch
import orjson
from aiohttp import web

from service.http import serving
from service.kube import errors
from service.kube.client import KubeClient
from service.kube.resources import KPACK, Resource
from simcluster.certs import ServingCertificate, serving_certificate
from simcluster.kpack.apis import ADMITTED
from simcluster.kpack.validation import WebhookPanic
from simcluster.kpack.webhooks import (
    DEFAULTING,
    EXCLUDE_LABEL,
    OPERATIONS,
    VALIDATING,
    VERSION,
    Denied,
    KpackAdmission,
    Review,
)

log = logging.getLogger("simcluster.kpack.webhook")

Obj = dict[str, Any]

DEFAULTS_PATH = "/defaults"
VALIDATE_PATH = "/validate"
ADMISSION_REVIEW = "admission.k8s.io/v1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kpack-simulator"}

MUTATING_WEBHOOK_CONFIGURATION = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    False,
    False,
)
VALIDATING_WEBHOOK_CONFIGURATION = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "validatingwebhookconfigurations",
    "ValidatingWebhookConfiguration",
    False,
    False,
)


def review_of(request: Obj) -> Review:
    """The fields of an AdmissionReview ``request`` the webhooks read."""
    resource = request.get("resource") or {}
    return Review(
        operation=request.get("operation", ""),
        group=resource.get("group", ""),
        version=resource.get("version", ""),
        resource=resource.get("resource", ""),
        subresource=request.get("subResource") or None,
        user=(request.get("userInfo") or {}).get("username", ""),
        old=request.get("oldObject"),
    )


def _refusal(denial: Denied) -> Obj:
    # knative's webhook.MakeErrorStatus: apierrors.NewBadRequest(message).Status()
    return {
        "allowed": False,
        "status": {
            "metadata": {},
            "status": "Failure",
            "message": denial.answer,
            "reason": "BadRequest",
            "code": 400,
        },
    }


class RegistrationFailed(Exception):
    """The API server does not call the webhooks (or cannot: kpack's CRDs are missing)."""


class _Dropped(Exception):
    """The request dies without an answer (kpack's webhook panicked on it)."""


class WebhookServer:
    """The two webhooks on ``https://host:port`` (0: a free port) while ``serving()``; ``url`` is where the
    API server calls them (default: the address served), and the certificate names its host too."""

    def __init__(
        self,
        admission: KpackAdmission,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        url: str | None = None,
    ) -> None:
        self.admission = admission
        self.host = host
        self.port = port
        self.public_url = url.rstrip("/") if url else None
        self.url = ""  # set once serving
        self.certificate: ServingCertificate | None = None

    @property
    def ca_bundle(self) -> bytes:
        assert self.certificate is not None, "not serving"
        return self.certificate.ca

    def _hosts(self) -> list[str]:
        hosts = ["127.0.0.1", "localhost"]
        if self.host not in ("", "0.0.0.0", "::"):
            hosts.append(self.host)
        if self.public_url and (named := urlsplit(self.public_url).hostname):
            hosts.append(named)
        return hosts

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(DEFAULTS_PATH, self._defaults)
        app.router.add_post(VALIDATE_PATH, self._validate)
        return app

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[WebhookServer]:
        self.certificate = serving_certificate(self._hosts(), common_name="kpack-webhook")
        async with serving(self.app(), self.host, self.port, self.certificate.server_context()) as port:
            self.port = port
            local = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
            self.url = self.public_url or f"https://{local}:{port}"
            log.info("kpack's webhooks listening on %s:%d (called as %s)", self.host, port, self.url)
            yield self

    # ------------------------------------------------------------------ AdmissionReview
    async def _answer(self, request: web.Request, decide: Callable[[Obj], Obj]) -> web.StreamResponse:
        try:
            review = orjson.loads(await request.read())
            admission = review["request"]
            uid = admission["uid"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.Response(status=400, text="expected an AdmissionReview v1 with a request")
        try:
            response: Obj = decide(admission)
        except Denied as denial:
            response = _refusal(denial)
        except _Dropped:
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPInternalServerError() from None  # never sent: the connection is gone
        body = {
            "apiVersion": ADMISSION_REVIEW,
            "kind": "AdmissionReview",
            "response": {"uid": uid, **response},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _defaults(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self.default)

    async def _validate(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self.validate)

    def default(self, request: Obj) -> Obj:
        obj = request.get("object")
        if not isinstance(obj, dict):
            return {"allowed": True}
        defaulted = self.admission.default(review_of(request), obj)
        patch = [] if defaulted is None else jsonpatch.make_patch(obj, defaulted).patch
        if not patch:
            return {"allowed": True}
        return {
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": base64.b64encode(orjson.dumps(patch)).decode(),
        }

    def validate(self, request: Obj) -> Obj:
        try:
            self.admission.validate(review_of(request), request.get("object"))
        except WebhookPanic:
            log.error("validation panicked (as kpack's webhook would) on %s", request.get("resource"))
            raise _Dropped() from None
        return {"allowed": True}

    # ------------------------------------------------------------------ registration
    def configurations(self) -> list[tuple[Resource, Obj]]:
        """The two webhook configurations, as kpack's release names them and knative's reconciler fills
        them in, calling this server."""
        resources = [p for plural in ADMITTED for p in (plural, f"{plural}/status")]
        ca = base64.b64encode(self.ca_bundle).decode()

        def webhook(name: str, path: str) -> Obj:
            return {
                "name": name,
                "admissionReviewVersions": ["v1"],
                "clientConfig": {"url": self.url + path, "caBundle": ca},
                "failurePolicy": "Fail",
                "matchPolicy": "Exact",
                "sideEffects": "None",
                "timeoutSeconds": 10,
                "namespaceSelector": {
                    "matchExpressions": [{"key": EXCLUDE_LABEL, "operator": "DoesNotExist"}]
                },
                "rules": [
                    {
                        "apiGroups": [KPACK],
                        "apiVersions": [VERSION],
                        "operations": list(OPERATIONS),
                        "resources": resources,
                        "scope": "*",
                    }
                ],
            }

        def configuration(res: Resource, name: str, path: str, **extra: Any) -> tuple[Resource, Obj]:
            return res, {
                "apiVersion": res.api_version,
                "kind": res.kind,
                "metadata": {"name": name, "labels": dict(MANAGED_BY)},
                "webhooks": [{**webhook(name, path), **extra}],
            }

        return [
            configuration(
                MUTATING_WEBHOOK_CONFIGURATION, DEFAULTING, DEFAULTS_PATH, reinvocationPolicy="Never"
            ),
            configuration(VALIDATING_WEBHOOK_CONFIGURATION, VALIDATING, VALIDATE_PATH),
        ]


async def _create_or_replace(client: KubeClient, res: Resource, obj: Obj) -> None:
    name = obj["metadata"]["name"]
    try:
        await client.create(res, obj)
    except errors.AlreadyExists:
        current = await client.get(res, name)
        version = current["metadata"]["resourceVersion"]
        await client.update(res, {**obj, "metadata": {**obj["metadata"], "resourceVersion": version}})


async def unregister(client: KubeClient, configurations: Iterable[tuple[Resource, Obj]]) -> None:
    for res, obj in configurations:
        try:
            await client.delete(res, obj["metadata"]["name"])
        except errors.NotFound:
            continue


# A cluster-scoped object both webhooks handle, written with dryRun (nothing is stored): defaulting gives it
# the default lifecycle, and without a tag validation refuses it.
_PROBE: Obj = {
    "apiVersion": f"{KPACK}/{VERSION}",
    "kind": "ClusterBuilder",
    "metadata": {"name": "kpack-simulator-webhook-probe"},
    "spec": {
        "tag": "registry.example.com/kpack-simulator/probe",
        "stack": {"kind": "ClusterStack", "name": "probe"},
        "serviceAccountRef": {"name": "probe", "namespace": "default"},
    },
}
_PROBE_PATH = f"/apis/{KPACK}/{VERSION}/clusterbuilders"


async def _probe(client: KubeClient, obj: Obj) -> tuple[int, Obj]:
    status, _, raw = await client.request("POST", _PROBE_PATH, params={"dryRun": "All"}, body=obj)
    try:
        decoded: Obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        decoded = {"message": raw.decode(errors="replace")}
    return status, decoded


async def wait_called(client: KubeClient, within: float = 30.0) -> None:
    """Until the API server calls both webhooks: it loads new configurations in the background, so a
    write right after registering them may still go unadmitted. (Nothing announces that moment: a dry-run
    write is retried until both answer.)"""
    deadline = time.monotonic() + within
    invalid = {**_PROBE, "spec": {**_PROBE["spec"], "tag": ""}}
    last = ""
    while True:
        status, created = await _probe(client, _PROBE)
        if status == 404:
            raise RegistrationFailed(f"kpack's CRDs are not installed: {created.get('message', '')}")
        defaulted = status == 201 and (created.get("spec") or {}).get("lifecycle", {}).get("name")
        if defaulted:
            status, refused = await _probe(client, invalid)
            if status == 400 and f'"{VALIDATING}" denied' in refused.get("message", ""):
                return
            last = f"validation not called yet ({status}: {refused.get('message', '')})"
        else:
            last = f"defaulting not called yet ({status}: {created.get('message', '')})"
        if time.monotonic() > deadline:
            raise RegistrationFailed(
                f"kube-apiserver did not call kpack's webhooks within {within:g} s: {last}"
            )
        await anyio.sleep(0.1)


@asynccontextmanager
async def registered(
    client: KubeClient, server: WebhookServer, *, within: float = 30.0
) -> AsyncIterator[None]:
    """The webhook configurations for ``server`` in the cluster, in use, for the duration of the block."""
    configurations = server.configurations()
    try:
        for res, obj in configurations:
            try:
                await _create_or_replace(client, res, obj)
            except errors.NotFound as exc:
                raise RegistrationFailed(
                    f"the API server does not serve {res.qualified} ({exc.message.strip()}); the emulator runs "
                    "kpack's webhooks in process instead: devcluster --kpack"
                ) from None
        await wait_called(client, within)
        log.info("kpack's webhooks registered: %s, %s", DEFAULTING, VALIDATING)
        yield
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await unregister(client, configurations)
            log.info("kpack's webhook configurations removed")
