"""Small operations on Kubernetes objects as plain dicts, in the manner of controller-runtime's
``controllerutil``: metadata, owner references and finalizers. (Conditions are in ``conditions``, merge
diffs in ``patches``.) One place for them, so that no reconciler keeps private copies.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def meta(obj: Obj) -> Obj:
    """The object's metadata, created empty if missing (for building objects in place)."""
    value: Obj = obj.setdefault("metadata", {})
    return value


def labels(obj: Obj) -> dict[str, str]:
    """A copy of the object's labels."""
    return dict((obj.get("metadata") or {}).get("labels") or {})


def generation(obj: Obj) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def is_deleting(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def set_owner_reference(obj: Obj, owner: Obj) -> None:
    """A non-controller owner reference to ``owner``, kept alongside existing ones. As controller-runtime's
    ``SetOwnerReference``, a reference to the same group, kind and name is updated (an owner deleted and
    created again under its name gets its new uid), not added twice."""
    refs: list[Obj] = meta(obj).setdefault("ownerReferences", [])
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }
    group = ref["apiVersion"].rpartition("/")[0]
    for i, existing in enumerate(refs):
        same = (
            str(existing.get("apiVersion", "")).rpartition("/")[0],
            existing.get("kind"),
            existing.get("name"),
        )
        if same == (group, ref["kind"], ref["name"]):
            refs[i] = {**existing, **ref}
            return
    refs.append(ref)


def has_finalizer(obj: Obj, finalizer: str) -> bool:
    return finalizer in ((obj.get("metadata") or {}).get("finalizers") or ())


def add_finalizer(obj: Obj, finalizer: str) -> bool:
    """Add ``finalizer`` if missing; True if the object changed."""
    finalizers: list[str] = meta(obj).setdefault("finalizers", [])
    if finalizer in finalizers:
        return False
    finalizers.append(finalizer)
    return True


def remove_finalizer(obj: Obj, finalizer: str) -> bool:
    """Remove ``finalizer`` if present; True if the object changed."""
    finalizers: list[str] = meta(obj).get("finalizers") or []
    if finalizer not in finalizers:
        return False
    meta(obj)["finalizers"] = [f for f in finalizers if f != finalizer]
    return True
