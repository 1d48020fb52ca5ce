"""Deletion and what follows it: delete options, finalizers, and the emulated controllers that finish
deletions in the background (garbage collector, namespace controller, CRD finalizer).

A delete that finalizers hold is graceful: the object is marked (deletionTimestamp) and goes when its last
finalizer is removed. The system finalizers (``orphan``, ``foregroundDeletion``, the namespace
controller's ``kubernetes``, the CRD cleanup) and owner references are worked by ``Controllers``, which
plays kube-controller-manager's part: it keeps the owner/dependent graph as every write is stored, queues
the objects a write may concern, and later works the queue in a pass of its own. It writes through the
cluster's verbs, admitted as the users the real controllers write as, so webhooks and the watch see its
writes as they would a real cluster's. Each pass is synchronous, so it is atomic on the event loop: no
request interleaves with a half-finished collection, and each of its writes is one atomic cluster call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from service.kube import errors
from simcluster import schema as schemas
from simcluster.apiextensions import CRD_KEY
from simcluster.kinds import Kind, Obj
from simcluster.patches import merge_patch
from simcluster.store import ObjKey

if TYPE_CHECKING:
    from simcluster.cluster import Cluster

log = logging.getLogger("simcluster.cluster")  # one logger for the whole emulated cluster

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"
NAMESPACE_FINALIZER = "kubernetes"

# The identities kube-controller-manager's controllers (and the apiextensions finalizer) write as.
CONTROLLER_USERS = {
    "garbage-collector": "system:serviceaccount:kube-system:generic-garbage-collector",
    "namespace-controller": "system:serviceaccount:kube-system:namespace-controller",
    "apiextensions-controller": "system:apiserver",
}


@dataclass(slots=True)
class DeleteOptions:
    """A delete's options: its ``DeleteOptions`` body, with the query's ``propagationPolicy`` and dryRun."""

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


def gc_finalizers(finalizers: list[str], policy: str | None) -> list[str]:
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


def namespace_blocks(kind: Kind, obj: Obj) -> bool:
    """A Namespace stays while its spec.finalizers (the namespace controller's) are set."""
    return kind.key == ("", "namespaces") and bool((obj.get("spec") or {}).get("finalizers"))


_DANGLING: Obj = {"metadata": {}}  # marks an owner reference whose owner does not exist


class Controllers:
    """The emulated kube-controller-manager (garbage collector, namespace controller) and the
    apiextensions CRD finalizer, over one cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.by_uid: dict[str, ObjKey] = {}
        self.dependents: dict[str, set[ObjKey]] = {}  # owner uid -> the objects that name it
        # Work for the background controllers: objects to look at, and a signal that there are some.
        self.pending: set[ObjKey] = set()
        self.work = anyio.Event()

    # ----------------------------------------------------------------- the graph, as writes are stored
    def stored(self, kind: Kind, obj: Obj, old: Obj | None) -> None:
        """``obj`` was stored in place of ``old``: follow its owner references, and queue it when they are
        new or it is being deleted."""
        meta = obj["metadata"]
        okey: ObjKey = (kind.group, kind.plural, meta.get("namespace", ""), meta["name"])
        if old is not None:
            for ref in old["metadata"].get("ownerReferences") or ():
                self.dependents.get(ref.get("uid", ""), set()).discard(okey)
        self.by_uid[meta["uid"]] = okey
        refs = meta.get("ownerReferences") or ()
        for ref in refs:
            self.dependents.setdefault(ref.get("uid", ""), set()).add(okey)
        if refs and (old is None or old["metadata"].get("ownerReferences") != refs):
            self.wants(okey)  # the collector verifies every new set of owner references
        if meta.get("deletionTimestamp"):
            self.wants(okey)

    def removed(self, kind: Kind, obj: Obj) -> None:
        """``obj`` is no longer stored: its dependents, its owners and its terminating namespace may have
        work to do."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        okey: ObjKey = (kind.group, kind.plural, *key)
        self.by_uid.pop(meta["uid"], None)
        for ref in meta.get("ownerReferences") or ():
            deps = self.dependents.get(ref.get("uid", ""))
            if deps is not None:
                deps.discard(okey)
                if not deps:
                    self.dependents.pop(ref.get("uid", ""), None)
        for dep in self.dependents.get(meta["uid"], ()):
            self.wants(dep)
        for ref in meta.get("ownerReferences") or ():
            owner = self.by_uid.get(ref.get("uid", ""))
            if owner is not None:
                self.wants(owner)
        if kind.namespaced:
            ns = self.cluster.objects[("", "namespaces")].get(("", key[0]))
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                self.wants(("", "namespaces", "", key[0]))

    def wants(self, okey: ObjKey) -> None:
        """Look at ``okey`` on the next pass."""
        self.pending.add(okey)
        self.work.set()

    # ----------------------------------------------------------------- the background pass
    def run_once(self) -> bool:
        """One pass of the garbage collector and the namespace/CRD finalizers; True if it changed anything."""
        self.work = anyio.Event()
        pending, self.pending = self.pending, set()
        changed = False
        for okey in sorted(pending):
            try:
                changed |= self._gc_one(okey)
            except errors.ApiError as exc:  # e.g. an admission webhook refused the controller's write
                log.warning("emulated controllers: %s: %s", "/".join(okey), exc)
        return changed

    def _gc_one(self, okey: ObjKey) -> bool:
        """Work the system finalizers of ``okey`` if it is being deleted, then collect it (or drop its
        references to dead owners) if an owner is gone."""
        found = self.cluster.obj_at(okey)
        if found is None:
            return False
        kind, obj = found
        meta = obj["metadata"]
        changed = False
        if meta.get("deletionTimestamp"):
            changed |= self._finalize(kind, obj)
            found = self.cluster.obj_at(okey)
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
            if waiting and any(self.cluster.obj_at(d) for d in self.dependents.get(meta["uid"], ())):
                policy = "Foreground"
            try:
                self.cluster.delete(
                    kind,
                    kind.storage_version,
                    meta.get("namespace"),
                    meta["name"],
                    DeleteOptions(policy, precondition_uid=meta["uid"]),
                    user=CONTROLLER_USERS["garbage-collector"],
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
        owner_kind = self.cluster.kind_named(str(ref.get("apiVersion", "")), str(ref.get("kind", "")))
        if owner_kind is None:
            return None
        if owner_kind.namespaced and not kind.namespaced:
            return None
        ns = meta.get("namespace", "") if owner_kind.namespaced else ""
        owner = self.cluster.objects[owner_kind.key].get((ns, str(ref.get("name", ""))))
        if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
            return _DANGLING
        return owner

    def _finalize(self, kind: Kind, obj: Obj) -> bool:
        """Work the system finalizers of an object that is being deleted."""
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        uid = meta["uid"]
        deps = [d for d in sorted(self.dependents.get(uid, ())) if self.cluster.obj_at(d)]
        if ORPHAN in finalizers:
            for dep in deps:
                found = self.cluster.obj_at(dep)
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
                found = self.cluster.obj_at(dep)
                if found is None:
                    continue
                dobj = found[1]
                ref: Obj = next(
                    (r for r in dobj["metadata"].get("ownerReferences") or [] if r.get("uid") == uid), {}
                )
                if ref.get("blockOwnerDeletion"):
                    blocking = True
                if not dobj["metadata"].get("deletionTimestamp"):
                    self.wants(dep)
            if blocking:
                return False
            finalizers.remove(FOREGROUND)
            self._system_patch(kind, obj, {"metadata": {"finalizers": finalizers}}, "garbage-collector")
            return True
        if kind.key == ("", "namespaces") and namespace_blocks(kind, obj):
            return self._finalize_namespace(obj)
        if kind.key == CRD_KEY and CRD_CLEANUP in finalizers:
            return self._finalize_crd(obj)
        return False

    def _finalize_namespace(self, ns_obj: Obj) -> bool:
        ns = ns_obj["metadata"]["name"]
        deleted = False
        for kind in [k for k in self.cluster.kinds.values() if k.namespaced]:
            for (ons, oname), obj in list(self.cluster.objects[kind.key].items()):
                if ons == ns and not obj["metadata"].get("deletionTimestamp"):
                    self.cluster.delete(
                        kind, kind.storage_version, ns, oname, user=CONTROLLER_USERS["namespace-controller"]
                    )
                    deleted = True
        if any(
            o == ns
            for k in self.cluster.kinds.values()
            if k.namespaced
            for (o, _) in self.cluster.objects[k.key]
        ):
            return deleted  # objects with finalizers of their own hold the namespace until they go
        spec = dict(ns_obj.get("spec") or {})
        spec["finalizers"] = [f for f in spec.get("finalizers") or [] if f != NAMESPACE_FINALIZER]
        kind = self.cluster.kinds[("", "namespaces")]
        self._system_patch(kind, ns_obj, {"spec": spec}, "namespace-controller")
        return True

    def _finalize_crd(self, crd: Obj) -> bool:
        spec = crd.get("spec") or {}
        kind = self.cluster.kinds.get((spec.get("group", ""), (spec.get("names") or {}).get("plural", "")))
        if kind is not None and self.cluster.objects[kind.key]:
            for (ons, oname), obj in list(self.cluster.objects[kind.key].items()):
                if not obj["metadata"].get("deletionTimestamp"):
                    self.cluster.delete(
                        kind,
                        kind.storage_version,
                        ons or None,
                        oname,
                        user=CONTROLLER_USERS["apiextensions-controller"],
                    )
            if self.cluster.objects[kind.key]:
                return True
        if kind is not None:
            self.cluster.unregister(kind.group, kind.plural)
        finalizers = [f for f in crd["metadata"].get("finalizers") or [] if f != CRD_CLEANUP]
        crd_kind = self.cluster.kinds[CRD_KEY]
        self._system_patch(
            crd_kind, crd, {"metadata": {"finalizers": finalizers}}, "apiextensions-controller"
        )
        return True

    def _system_patch(self, kind: Kind, obj: Obj, patch: Obj, manager: str) -> None:
        """Merge ``patch`` into the stored ``obj`` as the controller ``manager`` (status through /status)."""
        user = CONTROLLER_USERS.get(manager, f"system:serviceaccount:kube-system:{manager}")
        namespace, name = obj["metadata"].get("namespace"), obj["metadata"]["name"]
        if kind.versions[kind.storage_version].status and "status" in patch:
            self._system_write(kind, namespace, name, patch, manager, user, "status")
            patch = {k: v for k, v in patch.items() if k != "status"}
            if not patch:
                return
        self._system_write(kind, namespace, name, patch, manager, user, None)

    def _system_write(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch: Obj,
        manager: str,
        user: str,
        subresource: str | None,
    ) -> None:
        current = self.cluster.find(kind, namespace, name)
        if current is None:
            return
        self.cluster.update(
            kind,
            kind.storage_version,
            namespace,
            name,
            merge_patch(current, patch),
            subresource=subresource,
            manager=manager,
            raw_body=patch,
            user=user,
        )
