"""The emulated cluster's state and its API semantics, independent of HTTP: the entry point.

Every method is synchronous, so each call is atomic on the event loop, as one etcd transaction is: a
write's checks, admission, storage and watch event happen with nothing in between. The modules a
``Cluster`` is made of keep that property: nothing in them awaits or defers part of a call.

``Cluster`` extends the storage (``store``) and the read verbs over it (``reads``), because every write
verb reads and changes that state directly; it holds the write verbs themselves, each step in the order
kube-apiserver runs it. What has state of its own is a collaborator: the admission webhooks
(``admission.Webhooks``) and the background controllers with the owner/dependent graph
(``lifecycle.Controllers``, which writes back through these verbs). What has none is a function: checks
(``validation``), server-set metadata (``metadata``), patch formats (``patches``), CRDs
(``apiextensions``).

Admission webhooks are in-process hooks (``AdmissionHook``), called where kube-apiserver calls webhooks
(only those whose rules match the written kind): after the NamespaceLifecycle check, mutating hooks in
registration order on the request object; then name generation, system fields, the status/spec split of
the subresource, metadata and schema validation (pruning, defaults); then validating hooks on the final
object (with its uid, creationTimestamp and generation), before the resourceVersion precondition of a
create and the store. Mutating hooks on an update run before the optimistic-lock check, validating hooks
after it, as in kube-apiserver's ``Store.Update``; deletes get validating hooks after their preconditions.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio

from service.kube import errors
from service.kube.selectors import EVERYTHING, FieldSelector, LabelSelector
from service.kube.timestamps import rfc3339
from simcluster import schema as schemas
from simcluster import store
from simcluster.admission import (
    EVERY_KIND,
    AdmissionHook,
    AdmissionRequest,
    AdmissionRule,
    MutateFunc,
    ValidateFunc,
    Webhooks,
    mutating_admission,
    namespace_lifecycle,
    validating_admission,
)
from simcluster.apiextensions import CRD_KEY, crd_causes, establish
from simcluster.kinds import Kind, Obj
from simcluster.lifecycle import (
    CRD_CLEANUP,
    Controllers,
    DeleteOptions,
    gc_finalizers,
    namespace_blocks,
)
from simcluster.metadata import SYSTEM_META, generate_name, managed_fields, spec_changed
from simcluster.patches import apply_patch, merge_patch
from simcluster.reads import Reads
from simcluster.store import ObjKey
from simcluster.validation import (
    UnclassifiedError,
    check_body,
    conflict,
    details,
    invalid,
    parse_rv,
    precondition_failed,
    storage_key,
    validate_meta,
)

# The cluster's API, as its callers import it (the names live in the modules above).
__all__ = [
    "EVERY_KIND",
    "SYSTEM_USER",
    "AdmissionHook",
    "AdmissionRequest",
    "AdmissionRule",
    "Cluster",
    "DeleteOptions",
    "MutateFunc",
    "UnclassifiedError",
    "ValidateFunc",
    "merge_patch",
]

# Who a request is from, when the caller does not say (in-process calls: tests, start-up loading).
SYSTEM_USER = "system:admin"


def _unmanaged(obj: Obj) -> Obj:
    """``obj`` with a metadata dict of its own, without managedFields: every write sets them anew from the
    stored object's (``managed_fields``), and they are the largest part of most objects. The rest is
    shared with ``obj``."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return obj
    return {**obj, "metadata": {key: value for key, value in meta.items() if key != "managedFields"}}


def _writable(obj: Obj) -> Obj:
    """A deep copy of ``obj`` to write, without its managedFields (``_unmanaged``)."""
    return store.fresh(_unmanaged(obj))


class Cluster(Reads):
    """The emulated cluster: its storage and reads (inherited), the write verbs, the admission webhooks
    and the background controllers."""

    def __init__(self, *, history_limit: int = 100_000, watch_buffer: int = 100_000) -> None:
        super().__init__(history_limit=history_limit, watch_buffer=watch_buffer)
        self.webhooks = Webhooks()
        self.controllers = Controllers(self)
        # Seconds this server's clock is ahead of the machine's (negative: behind). Its stamps
        # (creation, deletion, managedFields) and its answers' Date header read this clock: a cluster
        # whose nodes disagree on the time, on purpose.
        self.clock_skew = 0.0

    def time(self) -> float:
        """Now by this server's clock, as a Unix time."""
        return time.time() + self.clock_skew

    def stamp(self) -> str:
        """Now by this server's clock, as a ``metav1.Time``."""
        return rfc3339(self.time())

    @property
    def admission(self) -> list[AdmissionHook]:
        """The installed admission webhooks, in installation order."""
        return self.webhooks.hooks

    @property
    def gc_pending(self) -> set[ObjKey]:
        """The objects the background controllers will look at on their next pass."""
        return self.controllers.pending

    @property
    def work(self) -> anyio.Event:
        """Set when the background controllers have something to do."""
        return self.controllers.work

    # ----------------------------------------------------------------- admission
    def add_admission_hook(self, hook: AdmissionHook) -> None:
        """Install a webhook; mutating hooks run in the order they were added."""
        self.webhooks.add(hook)

    def remove_admission_hook(self, hook: AdmissionHook) -> None:
        self.webhooks.remove(hook)

    # ----------------------------------------------------------------- writes
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
        obj = check_body(kind, version, store.fresh(body) if isinstance(body, dict) else body)
        meta = obj["metadata"]
        if kind.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise errors.BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace_lifecycle(
                kind, namespace or meta.get("namespace"), meta, self.objects[("", "namespaces")]
            )
        else:
            meta.pop("namespace", None)
        hooks = self.webhooks.for_kind(kind)
        if hooks:
            mutating_admission(
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
                raise invalid(
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
            meta["name"] = generate_name(prefix, meta.get("namespace", ""), self.objects[kind.key])
        name = meta["name"]
        for field in SYSTEM_META:
            meta.pop(field, None)
        if kind.decode:
            kind.decode(obj)
        if kind.defaults:
            kind.defaults(obj)
        if kind.custom and kind.versions[version].status:
            obj.pop("status", None)
        causes = validate_meta(kind, obj, None)
        causes += schemas.apply_schema(obj, kind.versions[version].schema)
        if kind.key == CRD_KEY:
            causes += crd_causes(obj, self.kinds)
        if causes:
            raise invalid(kind, name, causes)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = self.stamp()
        if kind.uses_generation:
            meta["generation"] = 1
        if hooks:
            validating_admission(
                hooks,
                AdmissionRequest(
                    "CREATE", kind, version, meta.get("namespace", ""), name, None, user, dry_run, None
                ),
                obj,
            )
        if parse_rv(meta.get("resourceVersion")):
            # etcd3 storage refuses it with a plain error: 500 and no reason
            raise UnclassifiedError("resourceVersion should not be set on objects to be created")
        meta.pop("resourceVersion", None)
        key = (meta.get("namespace", ""), name)
        if key in self.objects[kind.key]:
            raise errors.AlreadyExists(
                f'{kind.qualified} "{name}" already exists', details=details(kind, name)
            )
        meta["managedFields"] = managed_fields(
            None, manager, "Update", kind.api_version(version), None, body, self.stamp()
        )
        obj["apiVersion"] = kind.api_version(kind.storage_version)
        if dry_run:
            meta.pop("resourceVersion", None)
            return self.view(kind, version, obj)
        if kind.key == CRD_KEY:
            establish(self, obj, self.stamp())
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        self._store(kind, obj)
        self._emit(kind, "ADDED", obj, None, rv)
        return self.view(kind, version, obj)

    def _store(self, kind: Kind, obj: Obj) -> None:
        """Store ``obj``; the controllers' owner graph follows (call ``_emit`` next, in the same step)."""
        self.controllers.stored(kind, obj, self._put(kind, obj))

    def _unstore(self, kind: Kind, obj: Obj) -> None:
        """Remove ``obj`` (its last state); the controllers' owner graph follows."""
        self._remove(kind, obj)
        self.controllers.removed(kind, obj)

    @staticmethod
    def _key_namespace(kind: Kind, namespace: str | None) -> str:
        return (namespace or "") if kind.namespaced else ""

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
        hooks = self.webhooks.for_kind(kind)
        # A status write keeps only the body's status, copied where it is taken (below): unless a mutating
        # hook may change the rest first, the rest is only read, so it is not copied.
        status_only = subresource == "status" and not hooks and isinstance(body, dict)
        if status_only:
            obj = check_body(kind, version, dict(body))
        else:
            obj = check_body(kind, version, _writable(body) if isinstance(body, dict) else body)
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
        request: AdmissionRequest | None = None
        if hooks:
            old_view = store.fresh(self.view(kind, version, old))
            request = AdmissionRequest(
                "UPDATE", kind, version, ns, name, subresource, user, dry_run, old_view
            )
            mutating_admission(hooks, request, obj)
            meta = obj["metadata"]
        given_rv = meta.get("resourceVersion")
        if given_rv:
            if given_rv != old["metadata"]["resourceVersion"]:
                raise conflict(kind, name)
        elif not kind.unconditional_update:
            raise invalid(
                kind,
                name,
                [
                    schemas.Cause(
                        "FieldValueInvalid",
                        "metadata.resourceVersion",
                        "Invalid value: 0: must be specified for an update",
                    )
                ],
                by_resource=True,
            )
        if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
            # storage's own precondition, worded as etcd3's store reports it
            raise conflict(
                kind,
                name,
                f"StorageError: invalid object, Code: 4, Key: {storage_key(kind, ns, name)}, "
                f"ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: UID in precondition: "
                f"{meta['uid']}, UID in object meta: {old['metadata']['uid']}",
            )
        has_status = kind.versions[version].status
        ratchet = old if self.schema_applied(kind, version, old) else None
        if subresource == "status":
            # The status subresource changes status and nothing else. The old status is not copied only
            # to be replaced; the new one is taken as it is when ``obj`` is a deep copy, and copied here
            # when ``status_only`` made it a shallow one.
            rest = {key: value for key, value in old.items() if key != "status"}
            # When the stored object already went through this schema, the walk below skips the rest
            # whole, so it is shared, not copied (stored objects are never mutated); only its metadata
            # gets new values (resourceVersion, managedFields), in a dict of its own.
            new = _unmanaged(rest) if ratchet is not None and not hooks else _writable(rest)
            if "status" in obj:
                new["status"] = store.fresh(obj["status"]) if status_only else obj["status"]
            else:
                new.pop("status", None)
            obj = new
        else:
            if kind.decode:
                kind.decode(obj)
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
                    obj["status"] = store.fresh(old["status"])
                else:
                    obj.pop("status", None)
        causes = validate_meta(kind, obj, old)
        causes += schemas.apply_schema(obj, kind.versions[version].schema, ratchet)
        if kind.key == CRD_KEY:
            causes += crd_causes(obj, self.kinds)
        if causes:
            raise invalid(kind, name, causes)
        obj["apiVersion"] = kind.api_version(kind.storage_version)
        obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        obj["metadata"]["managedFields"] = old["metadata"].get("managedFields", [])
        unchanged = obj == old
        if not unchanged and kind.uses_generation and spec_changed(old, obj, has_status):
            obj["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if request is not None:
            validating_admission(hooks, request, self.view(kind, version, obj))
        if unchanged:
            return self.view(kind, version, old)  # nothing changed: no write, no event, same resourceVersion
        obj["metadata"]["managedFields"] = managed_fields(
            old,
            manager,
            operation,
            kind.api_version(version),
            subresource,
            raw_body if raw_body is not None else (body if isinstance(body, dict) else {}),
            self.stamp(),
        )
        if dry_run:
            return self.view(kind, version, obj)
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        if (
            obj["metadata"].get("deletionTimestamp")
            and not obj["metadata"].get("finalizers")
            and not namespace_blocks(kind, obj)
        ):
            # kube-apiserver deletes instead of writing: watchers see the last stored state go (at the
            # deletion's resourceVersion) and the writer gets its own object back, at the old one.
            gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(rv)}}
            self._unstore(kind, gone)
            self._emit(kind, "DELETED", gone, old, rv)
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.view(kind, version, obj)
        if kind.key == CRD_KEY:
            establish(self, obj, self.stamp())
        self._store(kind, obj)
        self._emit(kind, "MODIFIED", obj, old, rv)
        return self.view(kind, version, obj)

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
        patched, raw_body = apply_patch(kind, old, content_type, raw)
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
            raw_body=raw_body,
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
            raise precondition_failed(kind, name, "uid", options.precondition_uid, meta["uid"])
        if options.precondition_rv and options.precondition_rv != meta["resourceVersion"]:
            raise precondition_failed(
                kind, name, "resourceVersion", options.precondition_rv, meta["resourceVersion"]
            )
        validators = tuple(h for h in self.webhooks.for_kind(kind) if h.validate is not None)
        if validators:
            validating_admission(
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
                    store.fresh(self.view(kind, version, old)),
                ),
                None,
            )
        finalizers = gc_finalizers(list(meta.get("finalizers") or []), options.propagation_policy)
        if kind.key == CRD_KEY and CRD_CLEANUP not in finalizers:
            finalizers.append(CRD_CLEANUP)
        pending = bool(finalizers) or namespace_blocks(kind, old)
        if not pending:
            if options.dry_run:
                return True, self.view(kind, version, old)
            if kind.graceful_delete:
                # A graceful deletion with no grace left (an unscheduled pod): the object is first marked
                # (one MODIFIED event, the generation bumped), then removed, in the same request.
                marked = store.fresh(old)
                marked["metadata"]["deletionTimestamp"] = self.stamp()
                marked["metadata"]["deletionGracePeriodSeconds"] = 0
                if kind.uses_generation:
                    marked["metadata"]["generation"] = meta.get("generation", 1) + 1
                rv = self._next_rv()
                marked["metadata"]["resourceVersion"] = str(rv)
                self._store(kind, marked)
                self._emit(kind, "MODIFIED", marked, old, rv)
                old, meta = marked, marked["metadata"]
            rv = self._next_rv()
            gone = {**old, "metadata": {**meta, "resourceVersion": str(rv)}}
            self._unstore(kind, gone)
            self._emit(kind, "DELETED", gone, old, rv)
            return True, self.view(kind, version, gone)
        if meta.get("deletionTimestamp") and finalizers == list(meta.get("finalizers") or []):
            return False, self.view(kind, version, old)  # already being deleted: nothing changes
        new = store.fresh(old)
        new_meta = new["metadata"]
        new_meta["finalizers"] = finalizers
        if not meta.get("deletionTimestamp"):
            new_meta["deletionTimestamp"] = self.stamp()
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
        return self.controllers.run_once()

    # ----------------------------------------------------------------- convenience for tests and the demo
    def ensure_namespace(self, name: str) -> Obj:
        kind = self.kinds[("", "namespaces")]
        return self.find(kind, None, name) or self.create(
            kind, "v1", None, {"metadata": {"name": name}}, manager="sim"
        )
