"""kpack's two admission webhooks, ``defaults.webhook.kpack.io`` and ``validation.webhook.kpack.io``, as
in-process hooks of the emulated cluster.

They behave as kpack's knative webhooks do where a client can tell: they admit the nine kpack kinds (not
SourceResolver) in ``v1alpha2`` only, on CREATE and UPDATE of the resource and of its ``/status``, skip
namespaces labelled ``webhooks.knative.dev/exclude``; the defaulter decodes the object into kpack's Go type,
applies ``SetDefaults`` and answers with the re-encoded object (the round trip of ``gotypes``), and the
validator decodes strictly and runs ``Validate`` with the stored object as the baseline of an update. Both
hooks declare rules naming those kinds, so the emulator does not call them (nor build their requests) for
writes of any other kind. A default StorageClass (annotation
``storageclass.kubernetes.io/is-default-class: "true"``) is looked up when a request needs it (an Image's
volume cache, in defaulting or validation), as kpack's informer-backed lister would see it at that moment.
Refusals are 400 ``BadRequest`` with kube-apiserver's ``admission webhook "<name>" denied the request:
<reason>`` text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.kube import errors
from service.kube.resources import KPACK, STORAGE_CLASS
from simcluster.admission import AdmissionHook, AdmissionRequest, AdmissionRule
from simcluster.cluster import Cluster
from simcluster.kpack import gotypes
from simcluster.kpack.apis import ADMITTED, BUILD_SPEC
from simcluster.kpack.validation import DEFAULTERS, VALIDATORS, Context, WebhookPanic, validate_build

Obj = dict[str, Any]

DEFAULTING = "defaults.webhook.kpack.io"
VALIDATING = "validation.webhook.kpack.io"
EXCLUDE_LABEL = "webhooks.knative.dev/exclude"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
_WEBHOOK_URL = "https://kpack-webhook.kpack.svc:443"
# The kinds both webhooks are registered for (their configurations' rules); subresources go with them.
RULES = (AdmissionRule(api_groups=(KPACK,), resources=tuple(ADMITTED)),)


def denied(webhook: str, reason: str) -> errors.BadRequest:
    return errors.BadRequest(f'admission webhook "{webhook}" denied the request: {reason}')


def _crashed(webhook: str, path: str) -> errors.InternalError:
    """What kube-apiserver answers when the webhook process dies on a request (a Go panic)."""
    inner = f'failed calling webhook "{webhook}": failed to call webhook: Post "{_WEBHOOK_URL}/{path}?timeout=10s": EOF'
    return errors.InternalError(f"Internal error occurred: {inner}", details={"causes": [{"message": inner}]})


@dataclass
class KpackWebhooks:
    """The webhooks for one cluster; ``install()`` adds them, ``uninstall()`` removes them."""

    cluster: Cluster
    reject_env_secret_key_refs: bool = False  # kpack 0.17.2; Korifi pins 0.17.1, which accepts them

    def __post_init__(self) -> None:
        self.defaulting = AdmissionHook(DEFAULTING, mutate=self.mutate, rules=RULES)
        self.validating = AdmissionHook(VALIDATING, validate=self.validate, rules=RULES)

    def install(self) -> KpackWebhooks:
        self.cluster.add_admission_hook(self.defaulting)
        self.cluster.add_admission_hook(self.validating)
        return self

    def uninstall(self) -> None:
        self.cluster.remove_admission_hook(self.defaulting)
        self.cluster.remove_admission_hook(self.validating)

    # ------------------------------------------------------------------ matching and context
    def _type_for(self, request: AdmissionRequest) -> gotypes.Struct | None:
        kind = request.kind
        if kind.group != KPACK or request.version != "v1alpha2" or kind.plural not in ADMITTED:
            return None
        if kind.namespaced and request.namespace:
            namespaces = self.cluster.kinds[("", "namespaces")]
            ns = self.cluster.find(namespaces, None, request.namespace)
            if ns is not None and EXCLUDE_LABEL in (ns["metadata"].get("labels") or {}):
                return None
        return ADMITTED[kind.plural]

    def storage_context(self) -> tuple[bool, bool]:
        """(a default StorageClass exists, it allows volume expansion)."""
        kind = self.cluster.kinds.get((STORAGE_CLASS.group, STORAGE_CLASS.plural))
        if kind is None:
            return False, False
        for sc in self.cluster.list_objects(kind, None, None)["items"]:
            if (sc["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true":
                return True, sc.get("allowVolumeExpansion") is True
        return False, False

    def _context(self, request: AdmissionRequest, old: Obj | None) -> Context:
        return Context(
            operation=request.operation,
            old=old,
            subresource=request.subresource,
            user=request.user,
            storage_class=self.storage_context,  # looked up only if the request needs it
            reject_env_secret_key_refs=self.reject_env_secret_key_refs,
        )

    # ------------------------------------------------------------------ the hooks
    def mutate(self, request: AdmissionRequest, obj: Obj) -> None:
        typ = self._type_for(request)
        if typ is None or request.operation not in ("CREATE", "UPDATE"):
            return
        try:
            new = gotypes.decode(typ, obj)
        except gotypes.DecodeError as exc:
            raise denied(DEFAULTING, f"mutation failed: cannot decode incoming new object: {exc}") from None
        old = None
        if request.old is not None:
            try:
                old = gotypes.decode(typ, request.old)
            except gotypes.DecodeError as exc:
                raise denied(
                    DEFAULTING, f"mutation failed: cannot decode incoming old object: {exc}"
                ) from None
        DEFAULTERS[request.kind.plural](new, self._context(request, old))
        encoded = gotypes.encode(typ, new)
        obj.clear()
        obj.update(encoded)

    def validate(self, request: AdmissionRequest, obj: Obj | None) -> None:
        typ = self._type_for(request)
        if typ is None or request.operation not in ("CREATE", "UPDATE") or obj is None:
            return
        try:
            new = gotypes.decode(typ, obj, disallow_unknown_fields=True)
        except gotypes.DecodeError as exc:
            raise denied(
                VALIDATING, f"decoding request failed: cannot decode incoming new object: {exc}"
            ) from None
        old = None
        if request.old is not None:
            try:
                old = gotypes.decode(typ, request.old, disallow_unknown_fields=True)
            except gotypes.DecodeError as exc:
                raise denied(
                    VALIDATING, f"decoding request failed: cannot decode incoming old object: {exc}"
                ) from None
        ctx = self._context(request, old)
        try:
            if request.kind.plural == "builds":
                err = validate_build(
                    new,
                    ctx,
                    encoded_old=None if old is None else gotypes.encode(BUILD_SPEC, old["spec"]),
                    encoded_new=gotypes.encode(BUILD_SPEC, new["spec"]),
                )
            else:
                err = VALIDATORS[request.kind.plural](new, ctx)
        except WebhookPanic:
            raise _crashed(VALIDATING, "validate") from None
        if err is not None:
            raise denied(VALIDATING, f"validation failed: {err.error()}")


def install_webhooks(cluster: Cluster, *, reject_env_secret_key_refs: bool = False) -> KpackWebhooks:
    """Install kpack's admission webhooks on ``cluster``; returns them (``.uninstall()`` removes them)."""
    return KpackWebhooks(cluster, reject_env_secret_key_refs=reject_env_secret_key_refs).install()
