"""What the emulator serves: one ``Kind`` per stored resource, with its served versions and API rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.kube import resources as r
from service.kube.resources import Resource

Obj = dict[str, Any]


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
    unconditional_update: bool = False  # PUT without metadata.resourceVersion is allowed
    defaults: Callable[[Obj], None] | None = None  # built-in defaulting on create

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def uses_generation(self) -> bool:
        # Every custom resource carries metadata.generation; of the built-in kinds served here only
        # CustomResourceDefinition does (1 on create, +1 on every spec change).
        return self.custom or self.key == ("apiextensions.k8s.io", "customresourcedefinitions")

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


def _storage_class_defaults(obj: Obj) -> None:
    obj.setdefault("reclaimPolicy", "Delete")
    obj.setdefault("volumeBindingMode", "Immediate")


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
        _built_in(r.NAMESPACE, status=True, returns_deleted_object=True, defaults=_namespace_defaults),
        _built_in(r.SERVICE_ACCOUNT, returns_deleted_object=True),
        _built_in(r.SECRET, defaults=_secret_defaults),
        _built_in(r.CONFIG_MAP),
        _built_in(r.EVENT),
        _built_in(r.STORAGE_CLASS, returns_deleted_object=True, defaults=_storage_class_defaults),
        _built_in(r.LEASE),
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
