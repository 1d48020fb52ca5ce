"""The emulated cluster's state and its API semantics, independent of HTTP.

Every method is synchronous, so each call is atomic on the event loop, as one etcd transaction is.
Stored objects are never mutated: a write stores a new dict, which lets lists, paginated snapshots
and the watch history share objects by reference.

Admission webhooks are in-process hooks (``AdmissionHook``), called where kube-apiserver calls webhooks
(only those whose rules match the written kind): after the NamespaceLifecycle check, mutating hooks in
registration order on the request object; then name generation, system fields, the status/spec split of
the subresource, metadata and schema validation (pruning, defaults); then validating hooks on the final
object (with its uid, creationTimestamp and generation), before the resourceVersion precondition of a
create and the store. Mutating hooks on an update run before the optimistic-lock check, validating hooks
after it, as in kube-apiserver's ``Store.Update``; deletes get validating hooks after their preconditions.
"""

from __future__ import annotations

import base64
import copy
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import jsonpatch
import orjson

from service.kube import errors
from service.kube.names import (
    dns1123_label_errors,
    dns1123_subdomain_errors,
    label_value_errors,
    qualified_name_errors,
)
from service.kube.selectors import EVERYTHING, FieldSelector, LabelSelector
from service.kube.timestamps import rfc3339
from simcluster import schema as schemas
from simcluster.kinds import Kind, Obj, built_in_kinds, kind_from_crd
from simcluster.watch import Event, Watcher

log = logging.getLogger("simcluster.cluster")

ObjKey = tuple[str, str, str, str]  # group, plural, namespace ("" if cluster-scoped), name

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"
NAMESPACE_FINALIZER = "kubernetes"
ANNOTATIONS_LIMIT = 256 * 1024  # apimachinery's TotalAnnotationSizeLimitB
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_SYSTEM_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")


# Who a request is from, when the caller does not say (in-process calls: tests, start-up loading).
SYSTEM_USER = "system:admin"
# The identities kube-controller-manager's controllers (and the apiextensions finalizer) write as.
_CONTROLLER_USERS = {
    "garbage-collector": "system:serviceaccount:kube-system:generic-garbage-collector",
    "namespace-controller": "system:serviceaccount:kube-system:namespace-controller",
    "apiextensions-controller": "system:apiserver",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _fresh(obj: Obj) -> Obj:
    """A deep copy the caller may mutate (orjson round trip: fast, and proves the object is JSON)."""
    out: Obj = orjson.loads(orjson.dumps(obj))
    return out


@dataclass(slots=True)
class _Snapshot:
    rv: int
    items: list[Obj]
    created: float


@dataclass(slots=True)
class DeleteOptions:
    propagation_policy: str | None = None
    precondition_uid: str | None = None
    precondition_rv: str | None = None
    dry_run: bool = False
    orphan_dependents: bool | None = None  # the deprecated field, as given

    @classmethod
    def from_body(
        cls, body: Obj | None, query_policy: str | None = None, dry_run: bool = False
    ) -> DeleteOptions:
        body = body or {}
        pre = body.get("preconditions") or {}
        policy = body.get("propagationPolicy") or query_policy
        orphan = body.get("orphanDependents")
        causes = []
        if orphan is not None and policy is not None:
            causes.append(
                schemas.Cause(
                    "FieldValueInvalid",
                    "propagationPolicy",
                    f'Invalid value: "{policy}": orphanDependents and deletionPropagation cannot be both set',
                )
            )
        if policy not in (None, "Background", "Foreground", "Orphan"):
            causes.append(
                schemas.Cause(
                    "FieldValueNotSupported",
                    "propagationPolicy",
                    f'Unsupported value: "{policy}": supported values: "Foreground", "Background", "Orphan", '
                    '"nil"',
                )
            )
        if causes:
            rendered = [c.render() for c in causes]
            text = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
            raise errors.Invalid(
                f'DeleteOptions.meta.k8s.io "" is invalid: {text}',
                details={
                    "group": "meta.k8s.io",
                    "kind": "DeleteOptions",
                    "causes": [c.as_dict() for c in causes],
                },
            )
        if policy is None and orphan is not None:
            policy = "Orphan" if orphan else "Background"
        return cls(
            policy,
            pre.get("uid"),
            pre.get("resourceVersion"),
            dry_run or bool(body.get("dryRun")),
            orphan if isinstance(orphan, bool) else None,
        )


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


class Cluster:
    """Objects, the global resourceVersion, the event history and the open watches."""

    def __init__(self, *, history_limit: int = 100_000, watch_buffer: int = 100_000) -> None:
        self.rv = 1
        self.kinds: dict[tuple[str, str], Kind] = {}
        # (group, kind name) -> the kinds so named, in registration order: how owner references are resolved
        self._kinds_by_name: dict[tuple[str, str], list[Kind]] = {}
        self.served: dict[tuple[str, str, str], Kind] = {}  # (group, version, plural) -> kind
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self.by_uid: dict[str, ObjKey] = {}
        self.dependents: dict[str, set[ObjKey]] = {}
        self.history: dict[tuple[str, str], deque[Event]] = {}
        self.history_floor: dict[tuple[str, str], int] = {}  # events up to this rv are no longer kept
        self.history_limit = history_limit
        self.compacted_rv = 0
        self.watchers: dict[tuple[str, str], set[Watcher]] = {}
        self.watch_buffer = watch_buffer
        self.snapshots: dict[str, _Snapshot] = {}
        self.snapshot_ttl = 300.0
        # Work for the background controllers (garbage collector, namespace and CRD finalizers).
        self.gc_pending: set[ObjKey] = set()
        self.work = anyio.Event()
        self.admission: list[AdmissionHook] = []
        self._hooks_by_kind: dict[tuple[str, str], tuple[AdmissionHook, ...]] = {}  # (group, plural)
        for kind in built_in_kinds():
            self.register(kind)

    # ----------------------------------------------------------------- admission
    def add_admission_hook(self, hook: AdmissionHook) -> None:
        """Install a webhook; mutating hooks run in the order they were added."""
        self.admission.append(hook)
        self._hooks_by_kind.clear()

    def remove_admission_hook(self, hook: AdmissionHook) -> None:
        if hook in self.admission:
            self.admission.remove(hook)
            self._hooks_by_kind.clear()

    def _hooks_for(self, kind: Kind) -> tuple[AdmissionHook, ...]:
        """The installed hooks whose rules match ``kind``, in installation order (cached per kind)."""
        hooks = self._hooks_by_kind.get(kind.key)
        if hooks is None:
            hooks = self._hooks_by_kind[kind.key] = tuple(h for h in self.admission if h.applies_to(kind))
        return hooks

    @staticmethod
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

    def _mutating_admission(
        self, hooks: tuple[AdmissionHook, ...], request: AdmissionRequest, obj: Obj
    ) -> None:
        for hook in hooks:
            if hook.mutate is not None:
                self._call_hook(hook, hook.mutate, request, obj)
        if not isinstance(obj.get("metadata"), dict):
            raise errors.BadRequest("metadata must be an object")

    def _validating_admission(
        self, hooks: tuple[AdmissionHook, ...], request: AdmissionRequest, obj: Obj | None
    ) -> None:
        for hook in hooks:
            if hook.validate is not None:
                self._call_hook(hook, hook.validate, request, None if obj is None else _fresh(obj))

    # ----------------------------------------------------------------- kinds
    def register(self, kind: Kind) -> None:
        old = self.kinds.get(kind.key)
        if old is not None:
            for v in old.versions:
                self.served.pop((old.group, v, old.plural), None)
            if old.kind != kind.kind:
                self._drop_kind_name(old)
        named = self._kinds_by_name.setdefault((kind.group, kind.kind), [])
        for i, k in enumerate(named):
            if k.key == kind.key:
                named[i] = kind  # a re-registered kind keeps its place
                break
        else:
            named.append(kind)
        self.kinds[kind.key] = kind
        for v in kind.versions:
            self.served[(kind.group, v, kind.plural)] = kind
        self.objects.setdefault(kind.key, {})
        self.history.setdefault(kind.key, deque())
        self.history_floor.setdefault(kind.key, self.rv)
        self.watchers.setdefault(kind.key, set())

    def unregister(self, group: str, plural: str) -> None:
        kind = self.kinds.pop((group, plural), None)
        if kind is None:
            return
        self._drop_kind_name(kind)
        for v in kind.versions:
            self.served.pop((group, v, plural), None)
        for w in self.watchers.pop(kind.key, set()):
            w.close()
        self.objects.pop(kind.key, None)
        self.history.pop(kind.key, None)
        self.history_floor.pop(kind.key, None)

    def _drop_kind_name(self, kind: Kind) -> None:
        named = self._kinds_by_name.get((kind.group, kind.kind))
        if named is not None:
            named[:] = [k for k in named if k.key != kind.key]
            if not named:
                del self._kinds_by_name[(kind.group, kind.kind)]

    def lookup(self, group: str, version: str, plural: str) -> Kind:
        kind = self.served.get((group, version, plural))
        if kind is None:
            raise errors.NotFound("the server could not find the requested resource", details={})
        return kind

    def kind_for(self, group: str, plural: str) -> Kind:
        return self.kinds[(group, plural)]

    # ----------------------------------------------------------------- reads
    def _api_version_view(self, kind: Kind, version: str | None) -> str | None:
        if version is None or version == kind.storage_version:
            return None
        return kind.api_version(version)

    def view(self, kind: Kind, version: str | None, obj: Obj) -> Obj:
        api_version = self._api_version_view(kind, version)
        return obj if api_version is None else {**obj, "apiVersion": api_version}

    def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        obj = self.objects[kind.key].get((namespace or "" if kind.namespaced else "", name))
        if obj is None:
            raise errors.NotFound(f'{kind.qualified} "{name}" not found', details=_details(kind, name))
        return obj

    def find(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        return self.objects[kind.key].get((namespace or "" if kind.namespaced else "", name))

    def _select(
        self, kind: Kind, namespace: str | None, labels: LabelSelector, fields: FieldSelector
    ) -> list[Obj]:
        bucket = self.objects[kind.key]
        name = fields.name
        if name is not None and namespace is not None:
            one = bucket.get((namespace if kind.namespaced else "", name))
            candidates: Iterable[tuple[tuple[str, str], Obj]] = [((namespace, name), one)] if one else []
        else:
            candidates = sorted(bucket.items())
        out = []
        for (ns, _), obj in candidates:
            if namespace is not None and kind.namespaced and ns != namespace:
                continue
            if not labels.empty and not labels.matches(obj["metadata"].get("labels")):
                continue
            if fields.terms and not fields.matches(obj):
                continue
            out.append(obj)
        return out

    def list_objects(
        self,
        kind: Kind,
        version: str | None,
        namespace: str | None,
        *,
        labels: LabelSelector = EVERYTHING,
        fields: FieldSelector = FieldSelector(),  # noqa: B008 - immutable
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Obj:
        if continue_token:
            snap_id, start = self._decode_continue(continue_token)
            snap = self.snapshots.get(snap_id)
            if snap is None or snap.rv < self.compacted_rv:
                raise errors.Expired(
                    "The provided continue parameter is too old to display a consistent list result. You can "
                    "start a new list without the continue parameter."
                )
            items, rv = snap.items[start:], snap.rv
        else:
            items, rv = self._select(kind, namespace, labels, fields), self.rv
            snap_id, start = "", 0
        meta: Obj = {"resourceVersion": str(rv)}
        if limit and limit > 0 and len(items) > limit:
            if not snap_id:
                self._expire_snapshots()
                snap_id = uuid.uuid4().hex
                self.snapshots[snap_id] = _Snapshot(rv, items, time.monotonic())
            meta["continue"] = self._encode_continue(snap_id, start + limit, rv)
            if labels.empty and not fields.terms:
                meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        elif snap_id:
            self.snapshots.pop(snap_id, None)
        api_version = kind.api_version(version or kind.storage_version)
        return {
            "apiVersion": api_version,
            "kind": f"{kind.kind}List",
            "metadata": meta,
            "items": [self.view(kind, version, o) for o in items],
        }

    def _expire_snapshots(self) -> None:
        horizon = time.monotonic() - self.snapshot_ttl
        for sid in [s for s, snap in self.snapshots.items() if snap.created < horizon]:
            del self.snapshots[sid]

    @staticmethod
    def _encode_continue(snap_id: str, start: int, rv: int) -> str:
        raw = orjson.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start, "id": snap_id})
        return base64.urlsafe_b64encode(raw).decode()

    @staticmethod
    def _decode_continue(token: str) -> tuple[str, int]:
        try:
            data = orjson.loads(base64.urlsafe_b64decode(token.encode()))
            return str(data["id"]), int(data["start"])
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.BadRequest(f"continue key is not valid: {exc}") from None

    # ----------------------------------------------------------------- writes
    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, kind: Kind, event_type: str, obj: Obj, prev: Obj | None, rv: int) -> None:
        ev = Event(event_type, obj, prev, rv)
        hist = self.history[kind.key]
        hist.append(ev)
        while len(hist) > self.history_limit:
            self.history_floor[kind.key] = hist.popleft().rv
        for w in list(self.watchers[kind.key]):
            w.offer(ev)
            if w.closed:
                self.watchers[kind.key].discard(w)

    def _admit_create(self, kind: Kind, namespace: str | None, meta: Obj) -> str:
        """The NamespaceLifecycle admission plugin: a create needs a namespace that exists and is not
        being terminated. (Other verbs are not checked: they just do not find their object.)"""
        if not kind.namespaced:
            return ""
        if not namespace:
            raise errors.MethodNotAllowed(
                "the server does not allow this method on the requested resource", details={}
            )
        ns = self.objects[("", "namespaces")].get(("", namespace))
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
                    **_details(kind, name),
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

    @staticmethod
    def _key_namespace(kind: Kind, namespace: str | None) -> str:
        return (namespace or "") if kind.namespaced else ""

    def _invalid(self, kind: Kind, name: str, causes: list[schemas.Cause]) -> errors.Invalid:
        rendered = [c.render() for c in causes]
        text = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
        qualified = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
        details: Obj = {"name": name, "group": kind.group, "kind": kind.kind}
        if not kind.group:
            del details["group"]
        details["causes"] = [c.as_dict() for c in causes]
        return errors.Invalid(f'{qualified} "{name}" is invalid: {text}', details=details)

    def _check_body(self, kind: Kind, version: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise errors.BadRequest(
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml"
            )
        want = kind.api_version(version)
        if kind.custom:
            if not body.get("kind"):
                raise errors.BadRequest(f"Object 'Kind' is missing in '{orjson.dumps(body)[:200].decode()}'")
            if not body.get("apiVersion"):
                raise errors.BadRequest(
                    f"Object 'apiVersion' is missing in '{orjson.dumps(body)[:200].decode()}'"
                )
        api_version, kind_name = body.setdefault("apiVersion", want), body.setdefault("kind", kind.kind)
        if api_version != want:
            raise errors.BadRequest(
                f"the API version in the data ({api_version}) does not match the expected API version ({want})"
            )
        if kind_name != kind.kind:
            raise errors.BadRequest(
                f"the kind in the data ({kind_name}) does not match the expected kind ({kind.kind})"
            )
        meta = body.get("metadata")
        if meta is None:
            body["metadata"] = {}
        elif not isinstance(meta, dict):
            raise errors.BadRequest("metadata must be an object")
        return body

    def _validate_meta(self, kind: Kind, obj: Obj, old: Obj | None) -> list[schemas.Cause]:
        meta = obj["metadata"]
        causes: list[schemas.Cause] = []

        def bad(field: str, value: Any, msg: str) -> None:
            causes.append(
                schemas.Cause(
                    "FieldValueInvalid", field, f"Invalid value: {orjson.dumps(value).decode()}: {msg}"
                )
            )

        name = meta.get("name", "")
        if old is None:
            check = dns1123_label_errors if kind.key == ("", "namespaces") else dns1123_subdomain_errors
            for msg in check(name):
                bad("metadata.name", name, msg)
        for field in ("labels", "annotations"):
            value = meta.get(field)
            if value is None:
                continue
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                causes.append(
                    schemas.Cause(
                        "FieldValueTypeInvalid",
                        f"metadata.{field}",
                        "Invalid value: must be a map of strings to strings",
                    )
                )
                continue
            for key, val in value.items():
                for msg in qualified_name_errors(key):
                    bad(f"metadata.{field}", key, msg)
                if field == "labels":
                    for msg in label_value_errors(val):
                        bad("metadata.labels", val, msg)
            size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
            if field == "annotations" and size > ANNOTATIONS_LIMIT:
                # apimachinery's ValidateAnnotationsSize: bytes of keys and values, all together
                causes.append(
                    schemas.Cause(
                        "FieldValueTooLong",
                        "metadata.annotations",
                        f"Too long: may not be more than {ANNOTATIONS_LIMIT} bytes",
                    )
                )
        finalizers = meta.get("finalizers") or []
        if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
            causes.append(
                schemas.Cause(
                    "FieldValueTypeInvalid", "metadata.finalizers", "Invalid value: must be a list of strings"
                )
            )
            finalizers = []
        for i, fin in enumerate(finalizers):
            for msg in qualified_name_errors(fin):
                bad(f"metadata.finalizers[{i}]", fin, msg)
        if old is not None and old["metadata"].get("deletionTimestamp"):
            added = [f for f in finalizers if f not in (old["metadata"].get("finalizers") or [])]
            if added:
                quoted = ", ".join(f'"{f}"' for f in added)
                causes.append(
                    schemas.Cause(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        f"Forbidden: no new finalizers can be added if the object is being deleted, found new "
                        f"finalizers []string{{{quoted}}}",
                    )
                )
        refs = meta.get("ownerReferences") or []
        controllers = 0
        for i, ref in enumerate(refs if isinstance(refs, list) else []):
            if not isinstance(ref, dict):
                bad(f"metadata.ownerReferences[{i}]", ref, "must be an object")
                continue
            for field in ("apiVersion", "kind", "name", "uid"):
                if not ref.get(field):
                    causes.append(
                        schemas.Cause(
                            "FieldValueInvalid",
                            f"metadata.ownerReferences[{i}].{field}",
                            f'Invalid value: "": {field} must not be empty',
                        )
                    )
            controllers += bool(ref.get("controller"))
        if controllers > 1:
            causes.append(
                schemas.Cause(
                    "FieldValueInvalid",
                    "metadata.ownerReferences",
                    "Invalid value: []: Only one reference can have Controller set to true",
                )
            )
        return causes

    def _managed(
        self,
        old: Obj | None,
        obj: Obj,
        manager: str,
        operation: str,
        api_version: str,
        subresource: str | None,
        body: Obj,
    ) -> list[Obj]:
        entries = (
            [e for e in (old["metadata"].get("managedFields") or []) if isinstance(e, dict)] if old else []
        )
        fields = _field_set(body, subresource)
        entry: Obj = {
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version,
            "time": rfc3339(),
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        }
        if subresource:
            entry["subresource"] = subresource
        for i, e in enumerate(entries):
            if (e.get("manager"), e.get("operation"), e.get("subresource")) == (
                manager,
                operation,
                subresource,
            ):
                entries[i] = entry
                break
        else:
            entries.append(entry)
        return entries

    def create(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        body: Any,
        *,
        manager: str = "unknown",
        dry_run: bool = False,
        user: str = SYSTEM_USER,
    ) -> Obj:
        obj = self._check_body(kind, version, _fresh(body) if isinstance(body, dict) else body)
        meta = obj["metadata"]
        if kind.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise errors.BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = self._admit_create(kind, namespace or meta.get("namespace"), meta)
        else:
            meta.pop("namespace", None)
        hooks = self._hooks_for(kind)
        if hooks:
            self._mutating_admission(
                hooks,
                AdmissionRequest(
                    "CREATE",
                    kind,
                    version,
                    meta.get("namespace", ""),
                    meta.get("name") or "",
                    None,
                    user,
                    dry_run,
                    None,
                ),
                obj,
            )
            meta = obj["metadata"]
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise self._invalid(
                    kind,
                    "",
                    [
                        schemas.Cause(
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
            bucket = self.objects[kind.key]
            while True:
                candidate = prefix + "".join(random.choices(_NAME_CHARS, k=5))
                if (meta.get("namespace", ""), candidate) not in bucket:
                    break
            meta["name"] = candidate
        name = meta["name"]
        for field in _SYSTEM_META:
            meta.pop(field, None)
        if kind.defaults:
            kind.defaults(obj)
        if kind.custom and kind.versions[version].status:
            obj.pop("status", None)
        causes = self._validate_meta(kind, obj, None)
        causes += schemas.apply_schema(obj, kind.versions[version].schema)
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            causes += self._crd_causes(obj)
        if causes:
            raise self._invalid(kind, name, causes)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339()
        if kind.uses_generation:
            meta["generation"] = 1
        if hooks:
            self._validating_admission(
                hooks,
                AdmissionRequest(
                    "CREATE", kind, version, meta.get("namespace", ""), name, None, user, dry_run, None
                ),
                obj,
            )
        if _parse_rv(meta.get("resourceVersion")):
            # etcd3 storage refuses it with a plain error: 500 and no reason
            raise UnclassifiedError("resourceVersion should not be set on objects to be created")
        meta.pop("resourceVersion", None)
        key = (meta.get("namespace", ""), name)
        if key in self.objects[kind.key]:
            raise errors.AlreadyExists(
                f'{kind.qualified} "{name}" already exists', details=_details(kind, name)
            )
        meta["managedFields"] = self._managed(
            None, obj, manager, "Update", kind.api_version(version), None, body
        )
        obj["apiVersion"] = kind.api_version(kind.storage_version)
        if dry_run:
            meta.pop("resourceVersion", None)
            return self.view(kind, version, obj)
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._establish(obj)
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        self._store(kind, obj)
        self._emit(kind, "ADDED", obj, None, rv)
        return self.view(kind, version, obj)

    def _store(self, kind: Kind, obj: Obj) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        old = self.objects[kind.key].get(key)
        okey: ObjKey = (kind.group, kind.plural, *key)
        if old is not None:
            for ref in old["metadata"].get("ownerReferences") or ():
                self.dependents.get(ref.get("uid", ""), set()).discard(okey)
        self.objects[kind.key][key] = obj
        self.by_uid[meta["uid"]] = okey
        refs = meta.get("ownerReferences") or ()
        for ref in refs:
            self.dependents.setdefault(ref.get("uid", ""), set()).add(okey)
        if refs and (old is None or old["metadata"].get("ownerReferences") != refs):
            self._gc_wants(okey)  # the collector verifies every new set of owner references
        if meta.get("deletionTimestamp"):
            self._gc_wants(okey)

    def _unstore(self, kind: Kind, obj: Obj) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        okey: ObjKey = (kind.group, kind.plural, *key)
        self.objects[kind.key].pop(key, None)
        self.by_uid.pop(meta["uid"], None)
        for ref in meta.get("ownerReferences") or ():
            deps = self.dependents.get(ref.get("uid", ""))
            if deps is not None:
                deps.discard(okey)
                if not deps:
                    self.dependents.pop(ref.get("uid", ""), None)
        for dep in self.dependents.get(meta["uid"], ()):
            self._gc_wants(dep)
        for ref in meta.get("ownerReferences") or ():
            owner = self.by_uid.get(ref.get("uid", ""))
            if owner is not None:
                self._gc_wants(owner)
        if kind.namespaced:
            ns = self.objects[("", "namespaces")].get(("", key[0]))
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                self._gc_wants(("", "namespaces", "", key[0]))

    def _gc_wants(self, okey: ObjKey) -> None:
        self.gc_pending.add(okey)
        self.work.set()

    def update(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        manager: str = "unknown",
        dry_run: bool = False,
        operation: str = "Update",
        raw_body: Obj | None = None,
        user: str = SYSTEM_USER,
    ) -> Obj:
        """PUT semantics; patches end here too, with the patched object as ``body``."""
        if subresource not in (None, "status"):
            raise errors.NotFound("the server could not find the requested resource", details={})
        if subresource == "status" and not kind.versions[version].status:
            raise errors.NotFound("the server could not find the requested resource", details={})
        obj = self._check_body(kind, version, _fresh(body) if isinstance(body, dict) else body)
        ns = self._key_namespace(kind, namespace)
        old = self.get(kind, ns, name)
        meta = obj["metadata"]
        if meta.get("name", name) != name:
            raise errors.BadRequest(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if kind.namespaced and meta.get("namespace", ns) != ns:
            raise errors.BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        hooks = self._hooks_for(kind)
        request: AdmissionRequest | None = None
        if hooks:
            old_view = _fresh(self.view(kind, version, old))
            request = AdmissionRequest(
                "UPDATE", kind, version, ns, name, subresource, user, dry_run, old_view
            )
            self._mutating_admission(hooks, request, obj)
            meta = obj["metadata"]
        given_rv = meta.get("resourceVersion")
        if given_rv:
            if given_rv != old["metadata"]["resourceVersion"]:
                raise self._conflict(kind, name)
        elif not kind.unconditional_update:
            raise self._invalid(
                kind,
                name,
                [
                    schemas.Cause(
                        "FieldValueInvalid",
                        "metadata.resourceVersion",
                        "Invalid value: 0x0: must be specified for an update",
                    )
                ],
            )
        if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
            raise self._conflict(
                kind,
                name,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in "
                f"object meta: {old['metadata']['uid']}",
            )
        has_status = kind.versions[version].status
        if subresource == "status":
            # The status subresource changes status and nothing else.
            new = _fresh(old)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
            obj = new
        else:
            for field in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ):
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
                else:
                    meta.pop(field, None)
            meta["name"] = name
            if has_status:
                if "status" in old:
                    obj["status"] = copy.deepcopy(old["status"])
                else:
                    obj.pop("status", None)
        causes = self._validate_meta(kind, obj, old)
        causes += schemas.apply_schema(obj, kind.versions[version].schema)
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            causes += self._crd_causes(obj)
        if causes:
            raise self._invalid(kind, name, causes)
        obj["apiVersion"] = kind.api_version(kind.storage_version)
        obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        obj["metadata"]["managedFields"] = old["metadata"].get("managedFields", [])
        unchanged = obj == old
        if not unchanged and kind.uses_generation and _spec_changed(old, obj, has_status):
            obj["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if request is not None:
            self._validating_admission(hooks, request, self.view(kind, version, obj))
        if unchanged:
            return self.view(kind, version, old)  # nothing changed: no write, no event, same resourceVersion
        obj["metadata"]["managedFields"] = self._managed(
            old,
            obj,
            manager,
            operation,
            kind.api_version(version),
            subresource,
            raw_body if raw_body is not None else (body if isinstance(body, dict) else {}),
        )
        if dry_run:
            return self.view(kind, version, obj)
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        if (
            obj["metadata"].get("deletionTimestamp")
            and not obj["metadata"].get("finalizers")
            and not self._namespace_blocks(kind, obj)
        ):
            # kube-apiserver deletes instead of writing: watchers see the last stored state go (at the
            # deletion's resourceVersion) and the writer gets its own object back, at the old one.
            gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(rv)}}
            self._unstore(kind, gone)
            self._emit(kind, "DELETED", gone, old, rv)
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.view(kind, version, obj)
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._establish(obj)
        self._store(kind, obj)
        self._emit(kind, "MODIFIED", obj, old, rv)
        return self.view(kind, version, obj)

    def _conflict(self, kind: Kind, name: str, why: str | None = None) -> errors.Conflict:
        why = (
            why
            or "the object has been modified; please apply your changes to the latest version and try again"
        )
        return errors.Conflict(
            f'Operation cannot be fulfilled on {kind.qualified} "{name}": {why}', details=_details(kind, name)
        )

    def patch(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        name: str,
        content_type: str,
        raw: bytes,
        *,
        subresource: str | None = None,
        manager: str = "unknown",
        dry_run: bool = False,
        user: str = SYSTEM_USER,
    ) -> Obj:
        ns = self._key_namespace(kind, namespace)
        old = self.view(kind, version, self.get(kind, ns, name))
        try:
            patch = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise errors.BadRequest(f"error decoding patch: {exc}") from None
        if content_type == "application/merge-patch+json" or (
            content_type == "application/strategic-merge-patch+json" and not kind.custom
        ):
            if not isinstance(patch, dict):
                raise errors.BadRequest(
                    "json: cannot unmarshal array into Go value of type map[string]interface {}"
                )
            patched = merge_patch(old, patch)
            raw_body = patch
        elif content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise errors.BadRequest("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            try:
                patched = jsonpatch.JsonPatch(patch).apply(_fresh(old))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
                # kube-apiserver wraps the patch library's error in a generic 422 that drops its text
                raise errors.Invalid(
                    "the server rejected our request due to an error in our request", details={}
                ) from None
            except (TypeError, KeyError, ValueError) as exc:
                raise errors.BadRequest(f"invalid JSON patch: {exc}") from None
            raw_body = patched
        else:
            supported = [
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/apply-patch+yaml",
            ]
            if not kind.custom:
                supported.insert(2, "application/strategic-merge-patch+json")
            raise errors.UnsupportedMediaType(
                f"the body of the request was in an unknown format - accepted media types include: "
                f"{', '.join(supported)}"
            )
        if not isinstance(patched, dict):
            raise errors.BadRequest("the patched object is not a JSON object")
        # The patch applies to the current object, so the result carries its resourceVersion unless the
        # patch set one: then that is a precondition (optimistic lock), as for an update.
        return self.update(
            kind,
            version,
            ns,
            name,
            patched,
            subresource=subresource,
            manager=manager,
            dry_run=dry_run,
            raw_body=raw_body if isinstance(raw_body, dict) else {},
            user=user,
        )

    # ----------------------------------------------------------------- deletion
    def delete(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        name: str,
        options: DeleteOptions | None = None,
        *,
        user: str = SYSTEM_USER,
    ) -> tuple[bool, Obj]:
        """Delete one object; returns (removed now?, the object as it is after the call)."""
        options = options or DeleteOptions()
        ns = self._key_namespace(kind, namespace)
        old = self.get(kind, ns, name)
        meta = old["metadata"]
        if options.precondition_uid and options.precondition_uid != meta["uid"]:
            raise self._conflict(
                kind,
                name,
                f"Precondition failed: UID in precondition: "
                f"{options.precondition_uid}, UID in object meta: {meta['uid']}",
            )
        if options.precondition_rv and options.precondition_rv != meta["resourceVersion"]:
            raise self._conflict(
                kind,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{options.precondition_rv}, ResourceVersion in object meta: "
                f"{meta['resourceVersion']}",
            )
        validators = tuple(h for h in self._hooks_for(kind) if h.validate is not None)
        if validators:
            self._validating_admission(
                validators,
                AdmissionRequest(
                    "DELETE",
                    kind,
                    version,
                    ns,
                    name,
                    None,
                    user,
                    options.dry_run,
                    _fresh(self.view(kind, version, old)),
                ),
                None,
            )
        finalizers = _gc_finalizers(list(meta.get("finalizers") or []), options.propagation_policy)
        if (
            kind.key == ("apiextensions.k8s.io", "customresourcedefinitions")
            and CRD_CLEANUP not in finalizers
        ):
            finalizers.append(CRD_CLEANUP)
        pending = bool(finalizers) or self._namespace_blocks(kind, old)
        if not pending:
            if options.dry_run:
                return True, self.view(kind, version, old)
            rv = self._next_rv()
            gone = {**old, "metadata": {**meta, "resourceVersion": str(rv)}}
            self._unstore(kind, gone)
            self._emit(kind, "DELETED", gone, old, rv)
            return True, self.view(kind, version, gone)
        if meta.get("deletionTimestamp") and finalizers == list(meta.get("finalizers") or []):
            return False, self.view(kind, version, old)  # already being deleted: nothing changes
        new = _fresh(old)
        new_meta = new["metadata"]
        new_meta["finalizers"] = finalizers
        if not meta.get("deletionTimestamp"):
            new_meta["deletionTimestamp"] = rfc3339()
            new_meta["deletionGracePeriodSeconds"] = 0
            if kind.uses_generation:
                new_meta["generation"] = meta.get("generation", 1) + 1
        if kind.key == ("", "namespaces"):
            new.setdefault("status", {})["phase"] = "Terminating"
        if options.dry_run:
            return False, self.view(kind, version, new)
        rv = self._next_rv()
        new_meta["resourceVersion"] = str(rv)
        self._store(kind, new)
        self._emit(kind, "MODIFIED", new, old, rv)
        return False, self.view(kind, version, new)

    def _namespace_blocks(self, kind: Kind, obj: Obj) -> bool:
        """A Namespace stays while its spec.finalizers (the namespace controller's) are set."""
        return kind.key == ("", "namespaces") and bool((obj.get("spec") or {}).get("finalizers"))

    def delete_collection(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        *,
        labels: LabelSelector = EVERYTHING,
        fields: FieldSelector = FieldSelector(),  # noqa: B008 - immutable
        options: DeleteOptions | None = None,
        user: str = SYSTEM_USER,
    ) -> Obj:
        items = []
        for obj in self._select(kind, namespace if kind.namespaced else None, labels, fields):
            m = obj["metadata"]
            try:
                _, after = self.delete(kind, version, m.get("namespace"), m["name"], options, user=user)
            except errors.NotFound:
                continue
            items.append(after)
        return {
            "apiVersion": kind.api_version(version),
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }

    # ----------------------------------------------------------------- background controllers
    def run_controllers_once(self) -> bool:
        """One pass of the garbage collector and the namespace/CRD finalizers; True if it changed anything."""
        self.work = anyio.Event()
        pending, self.gc_pending = self.gc_pending, set()
        changed = False
        for okey in sorted(pending):
            try:
                changed |= self._gc_one(okey)
            except errors.ApiError as exc:  # e.g. an admission webhook refused the controller's write
                log.warning("emulated controllers: %s: %s", "/".join(okey), exc)
        return changed

    def _obj_at(self, okey: ObjKey) -> tuple[Kind, Obj] | None:
        kind = self.kinds.get((okey[0], okey[1]))
        if kind is None:
            return None
        obj = self.objects[kind.key].get((okey[2], okey[3]))
        return (kind, obj) if obj is not None else None

    def _gc_one(self, okey: ObjKey) -> bool:
        found = self._obj_at(okey)
        if found is None:
            return False
        kind, obj = found
        meta = obj["metadata"]
        changed = False
        if meta.get("deletionTimestamp"):
            changed |= self._finalize(kind, obj)
            found = self._obj_at(okey)
            if found is None:
                return True
            kind, obj = found
            meta = obj["metadata"]
        refs = meta.get("ownerReferences") or []
        if not refs or meta.get("deletionTimestamp"):
            return changed
        solid, dangling, waiting = [], [], []
        for ref in refs:
            owner = self._resolve_owner(kind, meta, ref)
            if owner is None:
                return changed  # an owner the collector cannot look up: it leaves the object alone
            if owner is _DANGLING:
                dangling.append(ref)
            elif FOREGROUND in (owner["metadata"].get("finalizers") or []) and owner["metadata"].get(
                "deletionTimestamp"
            ):
                waiting.append(ref)
            else:
                solid.append(ref)
        if not solid and (dangling or waiting):
            # As kube-controller-manager: an object with dependents of its own whose owner waits for it
            # goes in the foreground too; otherwise a finalizer it already has decides, else background.
            policy: str | None = None
            if waiting and any(self._obj_at(d) for d in self.dependents.get(meta["uid"], ())):
                policy = "Foreground"
            try:
                self.delete(
                    kind,
                    kind.storage_version,
                    meta.get("namespace"),
                    meta["name"],
                    DeleteOptions(policy, precondition_uid=meta["uid"]),
                    user=_CONTROLLER_USERS["garbage-collector"],
                )
            except errors.ApiError:
                return changed
            return True
        if dangling or waiting:
            # A live owner keeps the object; references to dead owners, and to owners that wait for
            # their dependents (which would block them forever), are removed.
            keep = [r for r in refs if r not in dangling and r not in waiting]
            self._system_patch(kind, obj, {"metadata": {"ownerReferences": keep}}, "garbage-collector")
            return True
        return changed

    def _resolve_owner(self, kind: Kind, meta: Obj, ref: Obj) -> Obj | None:
        """The owner an ownerReference names, looked up as the garbage collector does: by kind and name (in
        the dependent's namespace when the owner's kind is namespaced), then checked by uid.

        Returns the owner, ``_DANGLING`` when there is none, or None when the reference cannot be resolved
        (an unknown kind, or a cluster-scoped object naming a namespaced owner)."""
        group, _, version = str(ref.get("apiVersion", "")).rpartition("/")
        owner_kind = next(
            (
                k
                for k in self._kinds_by_name.get((group, str(ref.get("kind", ""))), ())
                if version in k.versions
            ),
            None,
        )
        if owner_kind is None:
            return None
        if owner_kind.namespaced and not kind.namespaced:
            return None
        ns = meta.get("namespace", "") if owner_kind.namespaced else ""
        owner = self.objects[owner_kind.key].get((ns, str(ref.get("name", ""))))
        if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
            return _DANGLING
        return owner

    def _finalize(self, kind: Kind, obj: Obj) -> bool:
        """Work the system finalizers of an object that is being deleted."""
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        uid = meta["uid"]
        deps = [d for d in sorted(self.dependents.get(uid, ())) if self._obj_at(d)]
        if ORPHAN in finalizers:
            for dep in deps:
                found = self._obj_at(dep)
                if found is None:
                    continue
                dkind, dobj = found
                keep = [r for r in dobj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                self._system_patch(dkind, dobj, {"metadata": {"ownerReferences": keep}}, "garbage-collector")
            finalizers.remove(ORPHAN)
            self._system_patch(kind, obj, {"metadata": {"finalizers": finalizers}}, "garbage-collector")
            return True
        if FOREGROUND in finalizers:
            blocking = False
            for dep in deps:
                found = self._obj_at(dep)
                if found is None:
                    continue
                dobj = found[1]
                ref: Obj = next(
                    (r for r in dobj["metadata"].get("ownerReferences") or [] if r.get("uid") == uid), {}
                )
                if ref.get("blockOwnerDeletion"):
                    blocking = True
                if not dobj["metadata"].get("deletionTimestamp"):
                    self._gc_wants(dep)
            if blocking:
                return False
            finalizers.remove(FOREGROUND)
            self._system_patch(kind, obj, {"metadata": {"finalizers": finalizers}}, "garbage-collector")
            return True
        if kind.key == ("", "namespaces") and self._namespace_blocks(kind, obj):
            return self._finalize_namespace(obj)
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions") and CRD_CLEANUP in finalizers:
            return self._finalize_crd(obj)
        return False

    def _finalize_namespace(self, ns_obj: Obj) -> bool:
        ns = ns_obj["metadata"]["name"]
        deleted = False
        for kind in [k for k in self.kinds.values() if k.namespaced]:
            for (ons, oname), obj in list(self.objects[kind.key].items()):
                if ons == ns and not obj["metadata"].get("deletionTimestamp"):
                    self.delete(
                        kind, kind.storage_version, ns, oname, user=_CONTROLLER_USERS["namespace-controller"]
                    )
                    deleted = True
        if any(o == ns for k in self.kinds.values() if k.namespaced for (o, _) in self.objects[k.key]):
            return deleted  # objects with finalizers of their own hold the namespace until they go
        spec = dict(ns_obj.get("spec") or {})
        spec["finalizers"] = [f for f in spec.get("finalizers") or [] if f != NAMESPACE_FINALIZER]
        kind = self.kinds[("", "namespaces")]
        self._system_patch(kind, ns_obj, {"spec": spec}, "namespace-controller")
        return True

    def _finalize_crd(self, crd: Obj) -> bool:
        spec = crd.get("spec") or {}
        kind = self.kinds.get((spec.get("group", ""), (spec.get("names") or {}).get("plural", "")))
        if kind is not None and self.objects[kind.key]:
            for (ons, oname), obj in list(self.objects[kind.key].items()):
                if not obj["metadata"].get("deletionTimestamp"):
                    self.delete(
                        kind,
                        kind.storage_version,
                        ons or None,
                        oname,
                        user=_CONTROLLER_USERS["apiextensions-controller"],
                    )
            if self.objects[kind.key]:
                return True
        if kind is not None:
            self.unregister(kind.group, kind.plural)
        finalizers = [f for f in crd["metadata"].get("finalizers") or [] if f != CRD_CLEANUP]
        crd_kind = self.kinds[("apiextensions.k8s.io", "customresourcedefinitions")]
        self._system_patch(
            crd_kind, crd, {"metadata": {"finalizers": finalizers}}, "apiextensions-controller"
        )
        return True

    def _system_patch(self, kind: Kind, obj: Obj, patch: Obj, manager: str) -> None:
        user = _CONTROLLER_USERS.get(manager, f"system:serviceaccount:kube-system:{manager}")
        meta = obj["metadata"]
        current = self.find(kind, meta.get("namespace"), meta["name"])
        if current is None:
            return
        patched = merge_patch(current, patch)
        if kind.versions[kind.storage_version].status and "status" in patch:
            self.update(
                kind,
                kind.storage_version,
                meta.get("namespace"),
                meta["name"],
                patched,
                subresource="status",
                manager=manager,
                raw_body=patch,
                user=user,
            )
            patch = {k: v for k, v in patch.items() if k != "status"}
            if not patch:
                return
            current = self.find(kind, meta.get("namespace"), meta["name"])
            if current is None:
                return
            patched = merge_patch(current, patch)
        self.update(
            kind,
            kind.storage_version,
            meta.get("namespace"),
            meta["name"],
            patched,
            manager=manager,
            raw_body=patch,
            user=user,
        )

    # ----------------------------------------------------------------- CRDs
    def _crd_causes(self, crd: Obj) -> list[schemas.Cause]:
        causes: list[schemas.Cause] = []
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group, plural = spec.get("group", ""), names.get("plural", "")

        def req(field: str) -> None:
            causes.append(schemas.Cause("FieldValueRequired", field, "Required value"))

        for field, value in (
            ("spec.group", group),
            ("spec.names.plural", plural),
            ("spec.names.kind", names.get("kind")),
        ):
            if not value:
                req(field)
        if group and plural and crd["metadata"].get("name") != f"{plural}.{group}":
            causes.append(
                schemas.Cause(
                    "FieldValueInvalid",
                    "metadata.name",
                    f'Invalid value: "{crd["metadata"].get("name")}": must be spec.names.plural'
                    '+"."+spec.group',
                )
            )
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(
                schemas.Cause(
                    "FieldValueNotSupported",
                    "spec.scope",
                    f'Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"',
                )
            )
        versions = spec.get("versions") or []
        if not versions:
            req("spec.versions")
        if sum(1 for v in versions if v.get("storage")) != 1:
            causes.append(
                schemas.Cause(
                    "FieldValueInvalid",
                    "spec.versions",
                    "Invalid value: []: must have exactly one version marked as storage version",
                )
            )
        for i, v in enumerate(versions):
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            if schema is None:
                req(f"spec.versions[{i}].schema.openAPIV3Schema")
                continue
            for msg in schemas.structural_errors(schema, f"spec.versions[{i}].schema.openAPIV3Schema"):
                field, _, rest = msg.partition(": ")
                causes.append(schemas.Cause("FieldValueInvalid", field, rest))
        existing = self.kinds.get((group, plural))
        if existing is not None and not existing.custom:
            causes.append(
                schemas.Cause(
                    "FieldValueInvalid",
                    "spec.names.plural",
                    f'Invalid value: "{plural}": is a built-in resource',
                )
            )
        return causes

    def _establish(self, crd: Obj) -> None:
        """Serve what a CRD describes and report it Established, as the apiextensions controllers do."""
        if crd["metadata"].get("deletionTimestamp"):
            return
        kind = kind_from_crd(crd)
        self.register(kind)
        spec = crd["spec"]
        now = rfc3339()
        old_status = crd.get("status") or {}
        stored = list(old_status.get("storedVersions") or [])
        if kind.storage_version not in stored:
            stored.append(kind.storage_version)
        since = {
            c.get("type"): c.get("lastTransitionTime")
            for c in old_status.get("conditions") or []
            if isinstance(c, dict) and c.get("status") == "True"
        }
        crd["status"] = {
            "acceptedNames": dict(spec["names"]),
            "storedVersions": stored,
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": since.get("NamesAccepted") or now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": since.get("Established") or now,
                },
            ],
        }

    # ----------------------------------------------------------------- watches
    def watch(
        self,
        kind: Kind,
        version: str | None,
        namespace: str | None,
        *,
        resource_version: str | None = None,
        labels: LabelSelector = EVERYTHING,
        fields: FieldSelector = FieldSelector(),  # noqa: B008 - immutable
        send_initial: bool | None = None,
    ) -> Watcher:
        """Open a watch; its first lines (initial ADDEDs or the replayed history) are already queued."""
        w = Watcher(
            namespace=namespace if kind.namespaced else None,
            labels=labels,
            fields=fields,
            api_version=self._api_version_view(kind, version),
            max_buffer=self.watch_buffer,
        )
        if resource_version in (None, "", "0"):
            for obj in self._select(kind, w.namespace, labels, fields):
                w.offer_added(
                    obj, orjson.dumps(self.view(kind, version, obj)), int(obj["metadata"]["resourceVersion"])
                )
            w.last_rv = self.rv
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise errors.BadRequest(f'invalid resource version "{resource_version}"') from None
            oldest = max(self.history_floor[kind.key], self.compacted_rv)
            if since < oldest:
                w.error(errors.Expired(f"too old resource version: {since} ({oldest})").status())
                return w
            w.last_rv = since
            for ev in self.history[kind.key]:
                if ev.rv > since:
                    w.offer(ev)
        if not w.closed:
            self.watchers[kind.key].add(w)
        return w

    def stop_watch(self, kind: Kind, w: Watcher) -> None:
        w.close()
        self.watchers.get(kind.key, set()).discard(w)

    def open_watches(self) -> Iterator[tuple[Kind, Watcher]]:
        for key, ws in self.watchers.items():
            kind = self.kinds[key]
            for w in ws:
                yield kind, w

    def drop_watches(self) -> int:
        n = 0
        for ws in self.watchers.values():
            for w in list(ws):
                w.close()
                n += 1
            ws.clear()
        return n

    def compact(self) -> int:
        """Forget the history up to now: resuming from an older resourceVersion gets 410 Expired."""
        self.compacted_rv = self.rv
        for key in self.history:
            self.history[key].clear()
            self.history_floor[key] = self.rv
        self.snapshots.clear()
        return self.rv

    # ----------------------------------------------------------------- convenience for tests and the demo
    def ensure_namespace(self, name: str) -> Obj:
        kind = self.kinds[("", "namespaces")]
        return self.find(kind, None, name) or self.create(
            kind, "v1", None, {"metadata": {"name": name}}, manager="sim"
        )


def _gc_finalizers(finalizers: list[str], policy: str | None) -> list[str]:
    """The finalizers a delete leaves for the garbage collector (kube's deletionFinalizersForGarbageCollection):
    an explicit policy wins, else a GC finalizer already present; both are first removed, then re-added."""
    if policy is None:
        present = next((f for f in finalizers if f in (ORPHAN, FOREGROUND)), None)
        policy = {ORPHAN: "Orphan", FOREGROUND: "Foreground"}.get(present or "")
    new = [f for f in finalizers if f not in (ORPHAN, FOREGROUND)]
    if policy == "Orphan":
        new.append(ORPHAN)
    elif policy == "Foreground":
        new.append(FOREGROUND)
    return finalizers if set(new) == set(finalizers) else new


_DANGLING: Obj = {"metadata": {}}  # marks an owner reference whose owner does not exist


class UnclassifiedError(errors.ApiError):
    """A plain (non-Status) error from kube-apiserver's storage layer: 500, and a Status with no reason."""

    code, reason = 500, ""

    def status(self) -> dict[str, Any]:
        body = super().status()
        body.pop("reason", None)
        return body


def _details(kind: Kind, name: str) -> Obj:
    """StatusDetails as kube-apiserver serialises them (empty fields omitted)."""
    details: Obj = {"name": name, "group": kind.group, "kind": kind.plural}
    if not kind.group:
        del details["group"]
    return details


def _parse_rv(value: Any) -> int:
    """A resourceVersion as storage reads it: 0 when absent or unparsable."""
    try:
        return int(str(value)) if value not in (None, "") else 0
    except ValueError:
        return 0


def _spec_changed(old: Obj, new: Obj, has_status: bool) -> bool:
    skip = {"metadata", "status"} if has_status else {"metadata"}
    keys = (set(old) | set(new)) - skip
    return any(old.get(k) != new.get(k) for k in keys)


def _field_set(body: Obj, subresource: str | None) -> Obj:
    """A FieldsV1-shaped record of the fields a request set (a simplification: sets, not ownership)."""

    def tree(value: Any) -> Obj:
        if isinstance(value, dict):
            return {f"f:{k}": tree(v) for k, v in value.items()}
        return {}

    if not isinstance(body, dict):
        return {}
    parts = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
    meta = parts.get("metadata")
    if isinstance(meta, dict):
        parts["metadata"] = {
            k: v for k, v in meta.items() if k in ("labels", "annotations", "finalizers", "ownerReferences")
        }
        if not parts["metadata"]:
            del parts["metadata"]
    if subresource == "status":
        parts = {"status": parts.get("status", {})}
    return tree(parts)
