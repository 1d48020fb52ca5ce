"""Admission: the emulated cluster's webhooks (in-process hooks) and the NamespaceLifecycle plugin.

Webhooks are plain synchronous functions, called inside the write they admit, so a write with its
admission stays one atomic step on the event loop: a hook cannot await, and the cluster it may read is the
one the write started from. ``Cluster``'s verbs decide where each phase runs (mutating hooks on the
request object before name generation and the optimistic lock, validating hooks on the final object after
them); this module holds what a hook is, which kinds it is for, and how its failure reads to the client
(as with ``failurePolicy: Fail``).

Which hooks match a kind is worked out once per kind and kept until the installed hooks change, so a
write of a kind no hook matches neither builds an ``AdmissionRequest`` nor copies an object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.kube import errors
from simcluster import store
from simcluster.kinds import Kind, Obj
from simcluster.validation import details

log = logging.getLogger("simcluster.cluster")  # one logger for the whole emulated cluster


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """What an admission hook is told about a write: the fields of an ``AdmissionReview`` request."""

    operation: str  # CREATE, UPDATE or DELETE
    kind: Kind
    version: str  # the API version of the request (a hook with matchPolicy Exact checks it)
    namespace: str  # "" for cluster-scoped kinds
    name: str  # "" on a create that asks for generateName (names are generated after mutation)
    subresource: str | None  # None or "status"
    user: str  # the authenticated (or impersonated) user
    dry_run: bool
    old: (
        Obj | None
    )  # the stored object on UPDATE and DELETE, as seen through ``version`` (a copy; do not modify)


MutateFunc = Callable[[AdmissionRequest, Obj], None]
ValidateFunc = Callable[[AdmissionRequest, Obj | None], None]


@dataclass(frozen=True, slots=True)
class AdmissionRule:
    """Which kinds a hook is called for, as a webhook configuration's ``rules`` name them: API groups
    (``""`` is core) and resources (plurals), ``"*"`` matching any. A kind's subresources (``/status``) go
    with it."""

    api_groups: tuple[str, ...] = ("*",)
    resources: tuple[str, ...] = ("*",)

    def matches(self, kind: Kind) -> bool:
        return ("*" in self.api_groups or kind.group in self.api_groups) and (
            "*" in self.resources or kind.plural in self.resources
        )


EVERY_KIND: tuple[AdmissionRule, ...] = (AdmissionRule(),)


@dataclass(frozen=True, eq=False)
class AdmissionHook:
    """An admission webhook, in process. ``mutate`` may change the request object in place (CREATE and
    UPDATE); ``validate`` sees a copy of the final object (``None`` on DELETE). Either refuses by raising an
    ``errors.ApiError``, which the client receives as is; any other exception is a failed webhook call
    (failurePolicy Fail): 500 ``InternalError``.

    ``rules`` say which kinds the hook is called for (every kind by default; none if empty): writes of
    other kinds neither call it nor pay for building its request. Versions, operations, namespaces and
    subresources the hook decides for itself."""

    name: str
    mutate: MutateFunc | None = None
    validate: ValidateFunc | None = None
    rules: tuple[AdmissionRule, ...] = EVERY_KIND

    def applies_to(self, kind: Kind) -> bool:
        return any(rule.matches(kind) for rule in self.rules)


class Webhooks:
    """The installed hooks, in installation order, and which of them each kind's writes call."""

    def __init__(self) -> None:
        self.hooks: list[AdmissionHook] = []
        self._by_kind: dict[tuple[str, str], tuple[AdmissionHook, ...]] = {}  # (group, plural)

    def add(self, hook: AdmissionHook) -> None:
        """Install a webhook; mutating hooks run in the order they were added."""
        self.hooks.append(hook)
        self._by_kind.clear()

    def remove(self, hook: AdmissionHook) -> None:
        if hook in self.hooks:
            self.hooks.remove(hook)
            self._by_kind.clear()

    def for_kind(self, kind: Kind) -> tuple[AdmissionHook, ...]:
        """The installed hooks whose rules match ``kind``, in installation order (cached per kind)."""
        hooks = self._by_kind.get(kind.key)
        if hooks is None:
            hooks = self._by_kind[kind.key] = tuple(h for h in self.hooks if h.applies_to(kind))
        return hooks


def _call_hook(hook: AdmissionHook, fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except errors.ApiError:
        raise
    except Exception as exc:
        log.exception("admission webhook %s failed", hook.name)
        raise errors.InternalError(
            f'Internal error occurred: failed calling webhook "{hook.name}": {exc}'
        ) from exc


def mutating_admission(hooks: tuple[AdmissionHook, ...], request: AdmissionRequest, obj: Obj) -> None:
    """The mutating phase: each hook in turn may change ``obj`` in place."""
    for hook in hooks:
        if hook.mutate is not None:
            _call_hook(hook, hook.mutate, request, obj)
    if not isinstance(obj.get("metadata"), dict):
        raise errors.BadRequest("metadata must be an object")


def validating_admission(
    hooks: tuple[AdmissionHook, ...], request: AdmissionRequest, obj: Obj | None
) -> None:
    """The validating phase: each hook sees its own copy of the final object."""
    for hook in hooks:
        if hook.validate is not None:
            _call_hook(hook, hook.validate, request, None if obj is None else store.fresh(obj))


def namespace_lifecycle(
    kind: Kind, namespace: str | None, meta: Obj, namespaces: Mapping[tuple[str, str], Obj]
) -> str:
    """The NamespaceLifecycle admission plugin: a create needs a namespace that exists and is not
    being terminated. (Other verbs are not checked: they just do not find their object.) Returns the
    namespace the object goes in ("" for a cluster-scoped kind)."""
    if not kind.namespaced:
        return ""
    if not namespace:
        raise errors.MethodNotAllowed(
            "the server does not allow this method on the requested resource", details={}
        )
    ns = namespaces.get(("", namespace))
    if ns is None:
        raise errors.NotFound(
            f'namespaces "{namespace}" not found', details={"name": namespace, "kind": "namespaces"}
        )
    if ns["metadata"].get("deletionTimestamp"):
        # admission names the object before name generation: its name, else its generateName
        name = meta.get("name") or meta.get("generateName") or "Unknown"
        raise errors.Forbidden(
            f'{kind.qualified} "{name}" is forbidden: unable to create new content in namespace '
            f"{namespace} because it is being terminated",
            details={
                **details(kind, name),
                "causes": [
                    {
                        "reason": "NamespaceTerminating",
                        "message": f"namespace {namespace} is being terminated",
                        "field": "metadata.namespace",
                    }
                ],
            },
        )
    return namespace
