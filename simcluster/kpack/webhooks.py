"""kpack's two admission webhooks, ``defaults.webhook.kpack.io`` and ``validation.webhook.kpack.io``: one
implementation (``KpackAdmission``) with two ways in — in-process hooks of the emulated cluster
(``KpackWebhooks``, here) and AdmissionReview over HTTPS for a real kube-apiserver (``webhook_server``).

They behave as kpack's knative webhooks do where a client can tell: they admit the nine kpack kinds (not
SourceResolver) in ``v1alpha2`` only, on CREATE and UPDATE of the resource and of its ``/status``, skip
namespaces labelled ``webhooks.knative.dev/exclude``; the defaulter decodes the object into kpack's Go type,
applies ``SetDefaults`` and answers with the re-encoded object (the round trip of ``gotypes``), and the
validator decodes strictly and runs ``Validate`` with the stored object as the baseline of an update. A
default StorageClass (annotation ``storageclass.kubernetes.io/is-default-class: "true"``) is looked up when a
request needs it (an Image's volume cache, in defaulting or validation), as kpack's informer-backed lister
would see it at that moment. Refusals are 400 ``BadRequest`` with kube-apiserver's ``admission webhook
"<name>" denied the request: <reason>`` text (``Denied``; a webhook server answers the reason, and the API
server adds the rest).

Which requests reach the hooks is the API server's business on a real cluster (the configurations' rules
and namespace selector); in the emulator ``KpackWebhooks`` declares rules naming the kinds, so the emulator
does not call them (nor build their requests) for writes of any other kind, and checks the namespace
label itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
VERSION = "v1alpha2"
OPERATIONS = ("CREATE", "UPDATE")
EXCLUDE_LABEL = "webhooks.knative.dev/exclude"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
_WEBHOOK_URL = "https://kpack-webhook.kpack.svc:443"
# The kinds both webhooks are registered for (their configurations' rules); subresources go with them.
RULES = (AdmissionRule(api_groups=(KPACK,), resources=tuple(ADMITTED)),)


class Denied(errors.BadRequest):
    """A webhook's refusal as the client gets it; ``answer`` is the message the webhook itself sends (the
    API server puts its ``admission webhook ... denied the request:`` in front)."""

    def __init__(self, webhook: str, answer: str) -> None:
        super().__init__(f'admission webhook "{webhook}" denied the request: {answer}')
        self.webhook = webhook
        self.answer = answer


def denied(webhook: str, reason: str) -> Denied:
    return Denied(webhook, reason)


def _crashed(webhook: str, path: str) -> errors.InternalError:
    """What kube-apiserver answers when the webhook process dies on a request (a Go panic)."""
    inner = f'failed calling webhook "{webhook}": failed to call webhook: Post "{_WEBHOOK_URL}/{path}?timeout=10s": EOF'
    return errors.InternalError(f"Internal error occurred: {inner}", details={"causes": [{"message": inner}]})


def default_storage_class(classes: Iterable[Obj]) -> tuple[bool, bool]:
    """(a default StorageClass is among ``classes``, it allows volume expansion)."""
    for sc in classes:
        if (sc["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true":
            return True, sc.get("allowVolumeExpansion") is True
    return False, False


@dataclass(frozen=True)
class Review:
    """What the webhooks read of an admission request (the fields of AdmissionReview v1's ``request``)."""

    operation: str  # CREATE, UPDATE, ...
    group: str
    version: str
    resource: str  # the plural
    subresource: str | None  # None or "status"
    user: str
    old: Obj | None  # the stored object on UPDATE


@dataclass
class KpackAdmission:
    """kpack's defaulting and validation, whoever calls them. ``storage_class`` answers
    ``default_storage_class`` for the cluster at the moment of the request (asked only when needed)."""

    storage_class: Callable[[], tuple[bool, bool]]
    reject_env_secret_key_refs: bool = False  # kpack 0.17.2; Korifi pins 0.17.1, which accepts them

    def type_for(self, review: Review) -> gotypes.Struct | None:
        """kpack's Go type for the request's kind, or None when the webhooks do not handle the request."""
        if (
            review.group != KPACK
            or review.version != VERSION
            or review.operation not in OPERATIONS
            or review.resource not in ADMITTED
        ):
            return None
        return ADMITTED[review.resource]

    def _context(self, review: Review, old: Obj | None) -> Context:
        return Context(
            operation=review.operation,
            old=old,
            subresource=review.subresource,
            user=review.user,
            storage_class=self.storage_class,
            reject_env_secret_key_refs=self.reject_env_secret_key_refs,
        )

    def default(self, review: Review, obj: Obj) -> Obj | None:
        """The defaulted object (re-encoded: Go's round trip included), or None when not handled. Raises
        ``Denied`` for an object kpack's types cannot decode."""
        typ = self.type_for(review)
        if typ is None:
            return None
        try:
            new = gotypes.decode(typ, obj)
        except gotypes.DecodeError as exc:
            raise denied(DEFAULTING, f"mutation failed: cannot decode incoming new object: {exc}") from None
        old = None
        if review.old is not None:
            try:
                old = gotypes.decode(typ, review.old)
            except gotypes.DecodeError as exc:
                raise denied(
                    DEFAULTING, f"mutation failed: cannot decode incoming old object: {exc}"
                ) from None
        DEFAULTERS[review.resource](new, self._context(review, old))
        encoded: Obj = gotypes.encode(typ, new)
        return encoded

    def validate(self, review: Review, obj: Obj | None) -> None:
        """Raises ``Denied`` with kpack's message, or ``WebhookPanic`` where kpack's webhook crashes."""
        typ = self.type_for(review)
        if typ is None or obj is None:
            return
        try:
            new = gotypes.decode(typ, obj, disallow_unknown_fields=True)
        except gotypes.DecodeError as exc:
            raise denied(
                VALIDATING, f"decoding request failed: cannot decode incoming new object: {exc}"
            ) from None
        old = None
        if review.old is not None:
            try:
                old = gotypes.decode(typ, review.old, disallow_unknown_fields=True)
            except gotypes.DecodeError as exc:
                raise denied(
                    VALIDATING, f"decoding request failed: cannot decode incoming old object: {exc}"
                ) from None
        ctx = self._context(review, old)
        if review.resource == "builds":
            err = validate_build(
                new,
                ctx,
                encoded_old=None if old is None else gotypes.encode(BUILD_SPEC, old["spec"]),
                encoded_new=gotypes.encode(BUILD_SPEC, new["spec"]),
            )
        else:
            err = VALIDATORS[review.resource](new, ctx)
        if err is not None:
            raise denied(VALIDATING, f"validation failed: {err.error()}")


@dataclass
class KpackWebhooks:
    """The webhooks as hooks of an emulated cluster; ``install()`` adds them, ``uninstall()`` removes them."""

    cluster: Cluster
    reject_env_secret_key_refs: bool = False  # kpack 0.17.2; Korifi pins 0.17.1, which accepts them

    def __post_init__(self) -> None:
        # Late-bound, so that the lookup can be replaced on the instance (tests count the lookups).
        self.admission = KpackAdmission(lambda: self.storage_context(), self.reject_env_secret_key_refs)
        self.defaulting = AdmissionHook(DEFAULTING, mutate=self.mutate, rules=RULES)
        self.validating = AdmissionHook(VALIDATING, validate=self.validate, rules=RULES)

    def install(self) -> KpackWebhooks:
        self.cluster.add_admission_hook(self.defaulting)
        self.cluster.add_admission_hook(self.validating)
        return self

    def uninstall(self) -> None:
        self.cluster.remove_admission_hook(self.defaulting)
        self.cluster.remove_admission_hook(self.validating)

    def storage_context(self) -> tuple[bool, bool]:
        """(a default StorageClass exists, it allows volume expansion)."""
        kind = self.cluster.kinds.get((STORAGE_CLASS.group, STORAGE_CLASS.plural))
        if kind is None:
            return False, False
        return default_storage_class(self.cluster.list_objects(kind, None, None)["items"])

    def review(self, request: AdmissionRequest) -> Review | None:
        """The request as the webhooks see it; None where the configurations' namespace selector would
        keep it from them (a namespace labelled ``webhooks.knative.dev/exclude``)."""
        kind = request.kind
        if kind.namespaced and request.namespace:
            namespaces = self.cluster.kinds[("", "namespaces")]
            ns = self.cluster.find(namespaces, None, request.namespace)
            if ns is not None and EXCLUDE_LABEL in (ns["metadata"].get("labels") or {}):
                return None
        return Review(
            operation=request.operation,
            group=kind.group,
            version=request.version,
            resource=kind.plural,
            subresource=request.subresource,
            user=request.user,
            old=request.old,
        )

    def mutate(self, request: AdmissionRequest, obj: Obj) -> None:
        review = self.review(request)
        if review is None or self.admission.type_for(review) is None:
            return
        encoded = self.admission.default(review, obj)
        if encoded is not None:
            obj.clear()
            obj.update(encoded)

    def validate(self, request: AdmissionRequest, obj: Obj | None) -> None:
        review = self.review(request)
        if review is None or self.admission.type_for(review) is None:
            return
        try:
            self.admission.validate(review, obj)
        except WebhookPanic:
            raise _crashed(VALIDATING, "validate") from None


def install_webhooks(cluster: Cluster, *, reject_env_secret_key_refs: bool = False) -> KpackWebhooks:
    """Install kpack's admission webhooks on ``cluster``; returns them (``.uninstall()`` removes them)."""
    return KpackWebhooks(cluster, reject_env_secret_key_refs=reject_env_secret_key_refs).install()
