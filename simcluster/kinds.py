"""What the emulator serves: one ``Kind`` per stored resource, with its served versions and API rules."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.kube import resources as r
from service.kube.resources import Resource
from service.kube.selectors import FieldSelector, SelectorError, parse_field_selector

Obj = dict[str, Any]

# Field selectors, as kube-apiserver serves them: each kind's field label conversion function says which
# labels a selector may use (others are 400 "field label not supported"), and its ToSelectableFields says
# where each label's value comes from. A label maps to the paths tried in order; the first non-empty wins.
FieldPaths = dict[str, tuple[tuple[str, ...], ...]]

OBJECT_META_FIELDS: FieldPaths = {
    "metadata.name": (("metadata", "name"),),
    "metadata.namespace": (("metadata", "namespace"),),
}
_NAMESPACE_FIELDS: FieldPaths = {
    "metadata.name": (("metadata", "name"),),
    "status.phase": (("status", "phase"),),
}
_SECRET_FIELDS: FieldPaths = {**OBJECT_META_FIELDS, "type": (("type",),)}
_EVENT_FIELDS: FieldPaths = {
    **OBJECT_META_FIELDS,
    **{
        f"involvedObject.{f}": (("involvedObject", f),)
        for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
    },
    "reason": (("reason",),),
    "reportingComponent": (("reportingComponent",),),  # core/v1 serialises ReportingController so
    "source": (("source", "component"), ("reportingComponent",)),
    "type": (("type",),),
}
# A path of one element starting with "=" is a literal: the value when no path before it finds one (Go
# formats a bool field that JSON omits when false as "false").
_POD_FIELDS: FieldPaths = {
    **OBJECT_META_FIELDS,
    "spec.nodeName": (("spec", "nodeName"),),
    "spec.restartPolicy": (("spec", "restartPolicy"),),
    "spec.schedulerName": (("spec", "schedulerName"),),
    "spec.serviceAccountName": (("spec", "serviceAccountName"),),
    "spec.hostNetwork": (("spec", "hostNetwork"), ("=false",)),
    "status.phase": (("status", "phase"),),
    "status.podIP": (("status", "podIP"),),
    "status.nominatedNodeName": (("status", "nominatedNodeName"),),
}


def _field_value(obj: Obj, paths: tuple[tuple[str, ...], ...]) -> str:
    for path in paths:
        if len(path) == 1 and path[0].startswith("="):
            return path[0][1:]
        value: Any = obj
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool):
            return "true" if value else "false"
        if value not in (None, ""):
            return value if isinstance(value, str) else str(value)
    return ""


@dataclass(frozen=True, slots=True)
class KindFieldSelector(FieldSelector):
    """A field selector over any of a kind's selectable fields, not only ``metadata.*``."""

    paths: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = ()
    # each term with the paths of its label, resolved once (matching runs per object and per watch event)
    _resolved: tuple[tuple[tuple[tuple[str, ...], ...], bool, str], ...] = field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        paths = dict(self.paths)
        object.__setattr__(
            self, "_resolved", tuple((paths[label], equal, value) for label, equal, value in self.terms)
        )

    def matches(self, obj: Any) -> bool:
        return all((_field_value(obj, paths) == value) == equal for paths, equal, value in self._resolved)


@dataclass(slots=True)
class Version:
    name: str
    schema: dict[str, Any] | None = None
    status: bool = False  # has the /status subresource
    printer_columns: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Kind:
    group: str
    plural: str
    kind: str
    namespaced: bool
    versions: dict[str, Version]
    storage_version: str
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    custom: bool = False  # defined by a CustomResourceDefinition
    returns_deleted_object: bool = False  # DELETE answers with the object rather than a Status
    graceful_delete: bool = False  # DELETE marks the object (deletionTimestamp) before removing it
    unconditional_update: bool = False  # PUT without metadata.resourceVersion is allowed
    defaults: Callable[[Obj], None] | None = None  # built-in defaulting on create
    # What decoding a written object does before anything else looks at it, on every write (kube-apiserver's
    # conversion from the wire version to the internal one).
    decode: Callable[[Obj], None] | None = None
    field_paths: FieldPaths = field(default_factory=lambda: OBJECT_META_FIELDS)

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def uses_generation(self) -> bool:
        # Every custom resource carries metadata.generation; of the built-in kinds served here only
        # CustomResourceDefinition and Pod (since pod generation tracking, v1.33) do (1 on create, +1 on
        # every spec change).
        return self.custom or self.key in (
            ("apiextensions.k8s.io", "customresourcedefinitions"),
            ("", "pods"),
        )

    def field_selector(self, text: str | None) -> FieldSelector:
        """Parse a ``fieldSelector`` for this kind (SelectorError on a label it does not support)."""
        try:
            selector = parse_field_selector(text, self.field_paths)
        except SelectorError as exc:
            unsupported = str(exc).removeprefix("field label not supported: ")
            if self.custom or self.field_paths is not OBJECT_META_FIELDS or unsupported == str(exc):
                raise
            # A built-in kind without a field label conversion of its own gets apimachinery's default
            # one (DefaultMetaV1FieldSelectorConversion), which words the refusal differently.
            raise SelectorError(
                f'"{unsupported}" is not a known field selector: only "metadata.name", "metadata.namespace"'
            ) from None
        labels = sorted({label for label, _, _ in selector.terms})
        if all(self.field_paths[label] == OBJECT_META_FIELDS.get(label) for label in labels):
            return selector  # only metadata.name / metadata.namespace: the plain selector reads them directly
        return KindFieldSelector(selector.terms, tuple((label, self.field_paths[label]) for label in labels))

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def resource(self, version: str | None = None) -> Resource:
        v = self.versions[version or self.storage_version]
        return Resource(
            self.group,
            v.name,
            self.plural,
            self.kind,
            self.namespaced,
            v.status,
            self.singular,
            self.short_names,
        )


def _namespace_defaults(obj: Obj) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {})["phase"] = "Active"
    obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]


def _secret_defaults(obj: Obj) -> None:
    obj.setdefault("type", "Opaque")


def _secret_decode(obj: Obj) -> None:
    """``stringData`` is write-only: merged into ``data`` (base64), overwriting its keys, and never stored
    (kube-apiserver's Convert_v1_Secret_To_core_Secret)."""
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict) and string_data:
        current = obj.get("data")
        data: Obj = current if isinstance(current, dict) else {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


def _storage_class_defaults(obj: Obj) -> None:
    obj.setdefault("reclaimPolicy", "Delete")
    obj.setdefault("volumeBindingMode", "Immediate")


def _image_pull_policy(image: str) -> str:
    """core/v1's default: ``Always`` for ``:latest`` or no tag (a digest counts as a tag), else
    ``IfNotPresent``."""
    name = image.rpartition("@")[0] if "@" in image else image
    tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
    return "IfNotPresent" if "@" in image or (tag and tag != "latest") else "Always"


def _pod_defaults(obj: Obj) -> None:
    """What kube-apiserver's defaulting and pod strategy add on create that a reader may rely on: the
    spec's scheduling and restart defaults, the containers' termination message and pull policy, and a
    fresh status (``Pending``, the QoS class) whatever the client sent. (Admission plugins kube-apiserver
    also runs, such as ServiceAccount's token volume and DefaultTolerationSeconds, are not emulated.)"""
    spec = obj.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    # The ServiceAccount admission plugin's default (it also refuses a pod whose service account does not
    # exist, and mounts its token: not emulated).
    spec["serviceAccountName"] = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccount"] = spec["serviceAccountName"]  # the deprecated alias, kept in step
    resources = False
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or ():
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("imagePullPolicy", _image_pull_policy(str(c.get("image", ""))))
            c.setdefault("resources", {})
            resources = resources or bool(c["resources"])
    obj["status"] = {"phase": "Pending", "qosClass": "Burstable" if resources else "BestEffort"}


def _crd_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("conversion", {"strategy": "None"})
    names = spec.setdefault("names", {})
    if "kind" in names:
        names.setdefault("listKind", f"{names['kind']}List")
    if "plural" in names:
        names.setdefault("singular", str(names.get("kind", "")).lower())


def _built_in(res: Resource, *, status: bool = False, unconditional_update: bool = True, **kw: Any) -> Kind:
    return Kind(
        res.group,
        res.plural,
        res.kind,
        res.namespaced,
        {res.version: Version(res.version, status=status)},
        res.version,
        res.singular,
        res.short_names,
        unconditional_update=unconditional_update,
        **kw,
    )


def built_in_kinds() -> list[Kind]:
    return [
        _built_in(
            r.NAMESPACE,
            status=True,
            returns_deleted_object=True,
            defaults=_namespace_defaults,
            field_paths=_NAMESPACE_FIELDS,
        ),
        _built_in(r.SERVICE_ACCOUNT, returns_deleted_object=True),
        _built_in(r.SECRET, defaults=_secret_defaults, decode=_secret_decode, field_paths=_SECRET_FIELDS),
        _built_in(r.CONFIG_MAP),
        _built_in(r.EVENT, field_paths=_EVENT_FIELDS),
        _built_in(r.STORAGE_CLASS, returns_deleted_object=True, defaults=_storage_class_defaults),
        _built_in(r.LEASE),
        # An unscheduled pod is deleted at once (its grace period is 0 without a node), and the emulator
        # has no nodes: every pod delete is immediate, answered with the object, as kube-apiserver does.
        _built_in(
            r.POD,
            status=True,
            returns_deleted_object=True,
            graceful_delete=True,
            defaults=_pod_defaults,
            field_paths=_POD_FIELDS,
        ),
        # CRDs, like custom resources, need metadata.resourceVersion on update.
        _built_in(
            r.CUSTOM_RESOURCE_DEFINITION,
            status=True,
            returns_deleted_object=True,
            unconditional_update=False,
            defaults=_crd_defaults,
        ),
    ]


def kind_from_crd(crd: Obj) -> Kind:
    """The served kind a (validated) CustomResourceDefinition describes."""
    spec = crd["spec"]
    names = spec["names"]
    versions: dict[str, Version] = {}
    storage = ""
    for v in spec["versions"]:
        if v.get("storage"):
            storage = v["name"]
        if not v.get("served", True) and not v.get("storage"):
            continue
        versions[v["name"]] = Version(
            v["name"],
            ((v.get("schema") or {}).get("openAPIV3Schema")),
            "status" in (v.get("subresources") or {}),
            list(v.get("additionalPrinterColumns") or []),
        )
    return Kind(
        spec["group"],
        names["plural"],
        names["kind"],
        spec.get("scope", "Namespaced") == "Namespaced",
        versions,
        storage,
        names.get("singular", names["kind"].lower()),
        tuple(names.get("shortNames") or ()),
        tuple(names.get("categories") or ()),
        custom=True,
    )
