"""CustomResourceDefinitions: what makes one acceptable, and serving the kind it defines.

kube-apiserver's apiextensions part checks a CRD when it is written and its controllers start serving
the kind and report it Established shortly after. The emulator serves the kind in the same synchronous
call that stores the CRD (the status is written with it), so a client that saw its create succeed can use
the kind at once, as on a cluster where the controllers were quick; nothing on the event loop can see the
CRD without its kind. A deleted CRD's objects and kind go in the background, with the other finalizers
(``lifecycle``).
"""

from __future__ import annotations

from collections.abc import Mapping

from simcluster import schema as schemas
from simcluster.kinds import Kind, Obj, kind_from_crd
from simcluster.store import Store

CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")


def crd_causes(crd: Obj, kinds: Mapping[tuple[str, str], Kind]) -> list[schemas.Cause]:
    """What is wrong with a CRD (``kinds``: the kinds served now, which a CRD must not redefine)."""
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
                f'Invalid value: "{crd["metadata"].get("name")}": must be spec.names.plural+"."+spec.group',
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
    existing = kinds.get((group, plural))
    if existing is not None and not existing.custom:
        causes.append(
            schemas.Cause(
                "FieldValueInvalid",
                "spec.names.plural",
                f'Invalid value: "{plural}": is a built-in resource',
            )
        )
    return causes


def establish(store: Store, crd: Obj, now: str) -> None:
    """Serve what a CRD describes and report it Established, as the apiextensions controllers do; ``now``
    is the server's time (its clock may disagree with the machine's), for the conditions' stamps."""
    if crd["metadata"].get("deletionTimestamp"):
        return
    kind = kind_from_crd(crd)
    store.register(kind)
    spec = crd["spec"]
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
