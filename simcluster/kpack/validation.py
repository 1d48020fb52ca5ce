"""kpack's ``SetDefaults`` and ``Validate`` for each admitted kind, ported from ``pkg/apis/build/v1alpha2``
and ``pkg/apis/core/v1alpha1`` (0.17.1). (One module, past 600 lines, because it follows those Go files
function for function, so that a reader can compare them side by side.)

They work on decoded Go values (``gotypes``: every struct field present, nil as ``None``), so the code
reads like kpack's and keeps its quirks: the ClusterBuilder's early return and ``spec.``-less paths, the
object-reference check that forgets a missing name once the kind is right, the nil history limits that
only a defaulted object avoids, and the volume-cache rules that apply only when both objects have a size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.kube import quantity
from service.kube.names import label_value_errors
from simcluster.kpack import fielderror as fe
from simcluster.kpack.fielderror import FieldError
from simcluster.kpack.refs import is_reference, parse_tag

Obj = dict[str, Any]
FE = FieldError | None

KPACK_CONTROLLER = "system:serviceaccount:kpack:controller"
DEFAULT_LIFECYCLE = "default-lifecycle"
K8S_OS_LABEL = "kubernetes.io/os"
_SERVICE_NAME = re.compile(r"^[a-z0-9\-\.]{1,253}$")


class WebhookPanic(Exception):
    """What would be a nil dereference in kpack's Go code (the webhook request then fails as a whole)."""


def _no_storage_class() -> tuple[bool, bool]:
    return False, False


@dataclass
class Context:
    """What knative's webhook puts into the context of ``SetDefaults`` and ``Validate``.

    ``storage_class`` answers (a default StorageClass exists, it allows volume expansion); it is asked
    once, and only if defaulting or validation needs to know (an Image's volume cache)."""

    operation: str = "CREATE"
    old: Obj | None = None  # the baseline (the stored object, decoded) on UPDATE
    subresource: str | None = None
    user: str = ""
    storage_class: Callable[[], tuple[bool, bool]] = _no_storage_class
    reject_env_secret_key_refs: bool = False  # kpack 0.17.2 behaviour
    _storage: tuple[bool, bool] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def in_update(self) -> bool:
        return self.operation == "UPDATE" and self.old is not None

    def _storage_class(self) -> tuple[bool, bool]:
        if self._storage is None:
            self._storage = self.storage_class()
        return self._storage

    @property
    def has_default_storage_class(self) -> bool:
        return self._storage_class()[0]

    @property
    def is_expandable(self) -> bool:
        return self._storage_class()[1]


# ------------------------------------------------------------------ shared helpers (pkg/apis/validate)
def field_not_empty(value: str, path: str) -> FE:
    return fe.missing(path) if value == "" else None


def validate_tag(value: str) -> FE:
    if value == "":
        return fe.missing("tag")
    if parse_tag(value) is None:
        return fe.invalid(value, "tag")
    return None


def validate_tags(tags: list[str] | None, path: str) -> FE:
    errs: FE = None
    for i, tag in enumerate(tags or []):
        if parse_tag(tag) is None:
            errs = fe.also(errs, fe.invalid(tag, "").via_index(i).via_field(path))
    return errs


def validate_image_ref(value: str) -> FE:
    if value == "":
        return fe.missing("image")
    if not is_reference(value):
        return fe.invalid(value, "image")
    return None


def immutable(original: object, current: object, path: str) -> FE:
    if original != current:
        return FieldError("Immutable field changed", [path], f"got: {current}, want: {original}")
    return None


def created_by_controller(ctx: Context) -> bool:
    return ctx.user == KPACK_CONTROLLER


# ------------------------------------------------------------------ sources, services, bindings
def validate_source(source: Obj) -> FE:
    present = [k for k in ("git", "blob", "registry") if source.get(k) is not None]
    if not present:
        return fe.missing_one_of("git", "blob", "registry")
    if len(present) != 1:
        return fe.multiple_one_of(*present)
    errs: FE = None
    git, blob, registry = source["git"], source["blob"], source["registry"]
    if git is not None:
        errs = fe.also(
            errs,
            fe.via(
                fe.also(field_not_empty(git["url"], "url"), field_not_empty(git["revision"], "revision")),
                "git",
            ),
        )
    if blob is not None:
        if blob["auth"] not in ("", "helper", "secret"):
            blob_err: FE = fe.invalid(blob["auth"], "auth", "must be one of '', 'helper', or 'secret'")
        else:
            strip = (
                fe.generic(f"expected positive integer got {blob['stripComponents']}", "stripComponents")
                if blob["stripComponents"] < 0
                else None
            )
            blob_err = fe.also(field_not_empty(blob["url"], "url"), strip)
        errs = fe.also(errs, fe.via(blob_err, "blob"))
    if registry is not None:
        errs = fe.also(errs, fe.via(validate_image_ref(registry["image"]), "registry"))
    return errs


def validate_services(services: list[Obj] | None) -> FE:
    errs: FE = None
    names: dict[str, int] = {}
    for i, s in enumerate(services or []):
        if s["name"] in names:
            n = names[s["name"]]
            errs = fe.also(
                errs, fe.generic(f'duplicate service name "{s["name"]}"', f"[{n}].name", f"[{i}].name")
            )
        names[s["name"]] = i
        if s["name"] == "":
            errs = fe.also(errs, fe.missing("name").via_index(i))
        elif not _SERVICE_NAME.match(s["name"]):
            errs = fe.also(errs, fe.invalid(s["name"], "name").via_index(i))
        if s["kind"] == "":
            errs = fe.also(errs, fe.missing("kind").via_index(i))
    return errs


def _validate_binding(b: Obj) -> FE:
    errs: FE = None
    if b["name"] == "":
        errs = fe.also(errs, fe.missing("name"))
    elif not _SERVICE_NAME.match(b["name"]):
        errs = fe.also(errs, fe.invalid(b["name"], "name"))
    if b["metadataRef"] is None:
        errs = fe.also(errs, fe.missing("metadataRef"))
    elif b["metadataRef"]["name"] == "":
        errs = fe.also(errs, fe.missing("metadataRef.name"))
    if b["secretRef"] is not None and b["secretRef"]["name"] == "":
        errs = fe.also(errs, fe.missing("secretRef.name"))
    return errs


def validate_cnb_bindings(ctx: Context, bindings: list[Obj] | None) -> FE:
    if not created_by_controller(ctx) and bindings:
        return fe.generic(
            "use of this field has been deprecated in v1alpha2, please use v1alpha1 for CNB bindings", ""
        )
    errs: FE = None
    names: dict[str, int] = {}
    for i, b in enumerate(bindings or []):
        if b["name"] in names:
            n = names[b["name"]]
            errs = fe.also(
                errs, fe.generic(f'duplicate binding name "{b["name"]}"', f"[{n}].name", f"[{i}].name")
            )
        names[b["name"]] = i
        errs = fe.also(errs, fe.via_index(_validate_binding(b), i))
    return errs


def validate_notary(ctx: Context, notary: Obj | None) -> FE:
    if not created_by_controller(ctx) and notary is not None:
        return fe.generic(
            "use of this field has been deprecated in v1alpha2, please use v1alpha1 for notary image signing",
            "",
        )
    if notary is None or notary["v1"] is None:
        return None
    v1 = notary["v1"]
    return fe.via(
        fe.also(
            field_not_empty(v1["url"], "url"), field_not_empty(v1["secretRef"]["name"], "secretRef.name")
        ),
        "v1",
    )


def validate_env(ctx: Context, env: list[Obj] | None) -> FE:
    if not ctx.reject_env_secret_key_refs:
        return None
    errs: FE = None
    for i, var in enumerate(env or []):
        if var["valueFrom"] is not None and var["valueFrom"]["secretKeyRef"] is not None:
            errs = fe.also(
                errs,
                fe.generic(
                    "secretKeyRef is not supported for build environment variables",
                    f"[{i}].valueFrom.secretKeyRef",
                ),
            )
    return errs


def validate_cosign(cosign: Obj | None) -> FE:
    if cosign is None:
        return None
    errs: FE = None
    for i, item in enumerate(cosign["annotations"] or []):
        err = fe.also(field_not_empty(item["name"], "name"), field_not_empty(item["value"], "value"))
        errs = fe.also(errs, fe.via(fe.via_index(err, i), "annotations"))
    return errs


def validate_node_selector(selector: dict[str, str] | None) -> FE:
    if selector and K8S_OS_LABEL in selector:
        return fe.invalid_key_name(K8S_OS_LABEL, "nodeSelector", "os is determined automatically")
    return None


# ------------------------------------------------------------------ Image
def default_image(img: Obj, ctx: Context) -> None:
    spec = img["spec"]
    if spec["serviceAccountName"] == "":
        spec["serviceAccountName"] = "default"
    if spec["imageTaggingStrategy"] == "":
        spec["imageTaggingStrategy"] = "BuildNumber"
    if spec["failedBuildHistoryLimit"] is None:
        spec["failedBuildHistoryLimit"] = 10
    if spec["successBuildHistoryLimit"] is None:
        spec["successBuildHistoryLimit"] = 10
    if spec["cache"] is None and ctx.has_default_storage_class:
        spec["cache"] = {"volume": {"size": quantity.parse("2G"), "storageClassName": ""}, "registry": None}


def need_volume_cache(spec: Obj) -> bool:
    cache = spec["cache"]
    return cache is not None and cache["volume"] is not None and cache["volume"]["size"] is not None


def _validate_image_build(ctx: Context, build: Obj | None) -> FE:
    if build is None:
        return None
    if build["nodeSelector"] and K8S_OS_LABEL in build["nodeSelector"]:
        return fe.invalid_key_name(K8S_OS_LABEL, "nodeSelector", "os is determined automatically")
    created = build["creationTime"]
    if created not in ("", "now") and not re.fullmatch(r"[+-]?[0-9]+", created):
        return fe.invalid(created, "creationTime")
    return fe.also(
        fe.via(validate_services(build["services"]), "services"),
        fe.via(validate_cnb_bindings(ctx, build["cnbBindings"]), "cnbBindings"),
        fe.via(validate_env(ctx, build["env"]), "env"),
    )


def _validate_builder_ref(builder: Obj) -> FE:
    if builder["name"] == "":
        return fe.missing("name")
    if builder["kind"] in ("Builder", "ClusterBuilder"):
        return None
    return fe.invalid(builder["kind"], "kind")


def _validate_volume_cache(spec: Obj, ctx: Context) -> FE:
    cache = spec["cache"]
    if (
        cache is not None
        and cache["volume"] is not None
        and cache["volume"]["storageClassName"] == ""
        and not ctx.has_default_storage_class
    ):
        return fe.generic(
            "spec.cache.volume.size cannot be set without spec.cache.volume.storageClassName or a default "
            "StorageClass"
        )
    if ctx.in_update:
        assert ctx.old is not None
        old = ctx.old["spec"]
        if need_volume_cache(old) and need_volume_cache(spec):
            new_size: quantity.Quantity = spec["cache"]["volume"]["size"]
            old_size: quantity.Quantity = old["cache"]["volume"]["size"]
            if new_size.cmp(old_size) < 0:
                return FieldError(
                    "Field cannot be decreased",
                    ["cache.volume.size"],
                    f"current: {old_size}, requested: {new_size}",
                )
            return immutable(
                old["cache"]["volume"]["storageClassName"],
                spec["cache"]["volume"]["storageClassName"],
                "cache.volume.storageClassName",
            )
    return None


def _validate_same_registry(spec: Obj) -> FE:
    tag = parse_tag(spec["tag"])
    if tag is None:
        return None
    for t in spec["additionalTags"] or []:
        other = parse_tag(t)
        if other is not None and other.registry.name != tag.registry.name:
            return FieldError(
                "all additionalTags must have the same registry as tag",
                ["additionalTags"],
                f"expected registry: {tag.registry.name}, got: {other.registry.name}",
            )
    return None


def _validate_history_limits(spec: Obj) -> FE:
    failed, success = spec["failedBuildHistoryLimit"], spec["successBuildHistoryLimit"]
    if failed is None or success is None:
        raise WebhookPanic("nil build history limit")
    message = "build history limit must be greater than 0"
    if failed < 1:
        return fe.generic(message, "failedBuildHistoryLimit")
    if success < 1:
        return fe.generic(message, "successBuildHistoryLimit")
    return None


def validate_image(img: Obj, ctx: Context) -> FE:
    spec = img["spec"]
    if ctx.in_update:
        assert ctx.old is not None
        tag_err = immutable(ctx.old["spec"]["tag"], spec["tag"], "tag")
    else:
        tag_err = validate_tag(spec["tag"])
    cache = spec["cache"]
    cache_err = (
        fe.generic("only one type of cache can be specified", "volume", "registry")
        if cache is not None and cache["volume"] is not None and cache["registry"] is not None
        else None
    )
    spec_err = fe.also(
        tag_err,
        validate_tags(spec["additionalTags"], "additionalTags"),
        _validate_same_registry(spec),
        fe.via(_validate_builder_ref(spec["builder"]), "builder"),
        fe.via(validate_source(spec["source"]), "source"),
        fe.via(_validate_image_build(ctx, spec["build"]), "build"),
        fe.via(cache_err, "cache"),
        _validate_volume_cache(spec, ctx),
        fe.via(validate_notary(ctx, spec["notary"]), "notary"),
        fe.via(validate_cosign(spec["cosign"]), "cosign"),
        _validate_history_limits(spec),
    )
    name = (img.get("metadata") or {}).get("name", "")
    msgs = label_value_errors(name)
    name_err = (
        FieldError(f"invalid image name: {name}, name must be a valid label", [""], ",".join(msgs))
        if msgs
        else None
    )
    return fe.also(fe.via(spec_err, "spec"), fe.via(fe.via(name_err, "name"), "metadata"))


# ------------------------------------------------------------------ Build
def default_build(build: Obj, ctx: Context) -> None:
    if build["spec"]["serviceAccountName"] == "":
        build["spec"]["serviceAccountName"] = "default"


def _validate_build_builder(builder: Obj) -> FE:
    errs: FE = None
    if builder["image"] == "" and builder["ref"] is None:
        errs = fe.missing("image", "ref")
    if builder["image"] != "" and builder["ref"] is not None:
        errs = fe.also(errs, fe.multiple_one_of("image", "ref"))
    ref = builder["ref"]
    if ref is not None:
        errs = fe.also(
            errs,
            fe.via(
                fe.also(field_not_empty(ref["name"], "name"), field_not_empty(ref["kind"], "kind")), "ref"
            ),
        )
    if builder["image"] != "" and not is_reference(builder["image"]):
        errs = fe.also(errs, fe.invalid(builder["image"], "image"))
    return errs


def _spec_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """A go-cmp-like listing of what differs (go-cmp's own output is deliberately unstable)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _spec_diff(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    if old == new:
        return []
    return [f"-: {path}: {_show(old)}", f"+: {path}: {_show(new)}"]


def _show(value: Any) -> str:
    return str(value) if isinstance(value, quantity.Quantity) else repr(value)


def validate_build(
    build: Obj, ctx: Context, *, encoded_old: Obj | None = None, encoded_new: Obj | None = None
) -> FE:
    spec = build["spec"]
    cache = spec["cache"]
    cache_err = (
        fe.generic("only one type of cache can be specified", "volume", "registry")
        if cache is not None and cache["volume"] is not None and cache["registry"] is not None
        else None
    )
    last = spec["lastBuild"]
    last_err = validate_image_ref(last["image"]) if last is not None and last["image"] != "" else None
    immutable_err: FE = None
    if ctx.in_update and encoded_old is not None and encoded_new is not None and encoded_old != encoded_new:
        diff = "\n".join(
            [
                "  v1alpha2.BuildSpec{",
                *(f"  \t{line}" for line in _spec_diff(encoded_old, encoded_new)),
                "  }",
            ]
        )
        immutable_err = FieldError("Immutable fields changed (-old +new)", ["spec"], diff)
    spec_err = fe.also(
        fe.missing("tags") if not spec["tags"] else None,
        validate_tags(spec["tags"], "tags"),
        fe.via(cache_err, "cache"),
        fe.via(_validate_build_builder(spec["builder"]), "builder"),
        fe.via(validate_source(spec["source"]), "source"),
        fe.via(validate_services(spec["services"]), "services"),
        fe.via(last_err, "lastBuild"),
        immutable_err,
        fe.via(validate_cnb_bindings(ctx, spec["cnbBindings"]), "cnbBindings"),
        validate_node_selector(spec["nodeSelector"]),
        fe.via(validate_env(ctx, spec["env"]), "env"),
        fe.via(validate_notary(ctx, spec["notary"]), "notary"),
    )
    return fe.via(spec_err, "spec")


# ------------------------------------------------------------------ Builder, ClusterBuilder
def default_builder(builder: Obj, ctx: Context) -> None:
    spec = builder["spec"]
    if spec["serviceAccountName"] == "" and spec["serviceAccount"] == "":
        spec["serviceAccountName"] = "default"
    if spec["stack"]["kind"] == "":
        spec["stack"]["kind"] = "ClusterStack"
    if spec["store"]["kind"] == "":
        spec["store"]["kind"] = "ClusterStore"
    default_cluster_builder(builder, ctx)


def default_cluster_builder(builder: Obj, ctx: Context) -> None:
    lifecycle = builder["spec"]["lifecycle"]
    if lifecycle["name"] == "":
        lifecycle["name"] = DEFAULT_LIFECYCLE
    if lifecycle["kind"] == "":
        lifecycle["kind"] = "ClusterLifecycle"


def _validate_object_ref(ref: Obj, kinds: list[str]) -> FE:
    errs: FE = fe.missing("name") if ref["name"] == "" else None
    if ref["kind"] in kinds:
        return None  # kpack's quirk: a missing name goes unreported once the kind is acceptable
    return fe.also(errs, fe.invalid(ref["kind"], "kind", "must be one of " + ", ".join(kinds)))


def _validate_stack(stack: Obj) -> FE:
    if stack["name"] == "":
        return fe.missing("name")
    if stack["kind"] == "ClusterStack":
        return None
    return fe.invalid(stack["kind"], "kind")


def _validate_store(store: Obj) -> FE:
    if store["name"] == "" and store["kind"] == "":
        return None
    return _validate_object_ref(store, ["ClusterStore"])


def _validate_buildpack_ref(ref: Obj) -> FE:
    errs: FE = None
    if ref["name"] != "" or ref["kind"] != "":
        errs = fe.also(errs, _validate_object_ref(ref, ["Buildpack", "ClusterBuildpack"]))
    if ref["image"] != "":
        errs = fe.also(errs, fe.disallowed("image reference currently not supported"))
    elif not (ref["id"] != "" or ref["name"] != "" or ref["kind"] != ""):
        errs = fe.also(errs, fe.missing_one_of("image", "id", "name + kind"))
    return errs


def _validate_order(order: list[Obj] | None) -> FE:
    errs: FE = None
    for i, entry in enumerate(order or []):
        group_errs: FE = None
        for j, ref in enumerate(entry["group"] or []):
            group_errs = fe.also(group_errs, fe.via(fe.via_index(_validate_buildpack_ref(ref), j), "group"))
        errs = fe.also(errs, fe.via_index(group_errs, i))
    return errs


def _validate_builder_spec(spec: Obj) -> FE:
    return fe.also(
        validate_tag(spec["tag"]),
        fe.via(_validate_stack(spec["stack"]), "stack"),
        fe.via(_validate_store(spec["store"]), "store"),
        fe.via(_validate_order(spec["order"]), "order"),
    )


def validate_builder(builder: Obj, ctx: Context) -> FE:
    spec = builder["spec"]
    account = spec["serviceAccountName"] or spec["serviceAccount"]
    return fe.via(
        fe.also(_validate_builder_spec(spec), field_not_empty(account, "serviceAccountName")), "spec"
    )


def validate_cluster_builder(builder: Obj, ctx: Context) -> FE:
    spec = builder["spec"]
    if spec["serviceAccountRef"]["name"] == "":
        return fe.missing("name").via_field("spec", "serviceAccountRef")
    if spec["serviceAccountRef"]["namespace"] == "":
        return fe.missing("namespace").via_field("spec", "serviceAccountRef")
    return _validate_builder_spec(spec)  # kpack's quirk: these paths have no "spec." prefix


# ------------------------------------------------------------------ stacks, stores, buildpacks, lifecycles
def _service_account_ref(ref: Obj | None) -> FE:
    if ref is None:
        return None
    if ref["name"] == "":
        return fe.missing("name").via_field("serviceAccountRef")
    if ref["namespace"] == "":
        return fe.missing("namespace").via_field("serviceAccountRef")
    return None


def validate_cluster_stack(stack: Obj, ctx: Context) -> FE:
    spec = stack["spec"]
    sa = _service_account_ref(spec["serviceAccountRef"])
    if sa is not None:
        return sa.via_field("spec")
    return fe.via(
        fe.also(
            field_not_empty(spec["id"], "id"),
            fe.via(validate_image_ref(spec["buildImage"]["image"]), "buildImage"),
            fe.via(validate_image_ref(spec["runImage"]["image"]), "runImage"),
        ),
        "spec",
    )


def validate_cluster_store(store: Obj, ctx: Context) -> FE:
    spec = store["spec"]
    sa = _service_account_ref(spec["serviceAccountRef"])
    if sa is not None:
        return sa.via_field("spec")
    if not spec["sources"]:
        return fe.missing("sources").via_field("spec")
    errs: FE = None
    for i, source in enumerate(spec["sources"]):
        if not is_reference(source["image"]):
            errs = fe.also(
                errs, fe.invalid("{" + source["image"] + "}", "").via_index(i).via_field("sources")
            )
    return fe.via(errs, "spec")


def default_buildpack(bp: Obj, ctx: Context) -> None:
    if bp["spec"]["serviceAccountName"] == "":
        bp["spec"]["serviceAccountName"] = "default"


def validate_buildpack(bp: Obj, ctx: Context) -> FE:
    return fe.via(validate_image_ref(bp["spec"]["image"]), "spec")


def validate_cluster_buildpack(bp: Obj, ctx: Context) -> FE:
    spec = bp["spec"]
    sa = _service_account_ref(spec["serviceAccountRef"])
    if sa is not None:
        return sa.via_field("spec")
    return fe.via(validate_image_ref(spec["image"]), "spec")


def validate_cluster_lifecycle(lifecycle: Obj, ctx: Context) -> FE:
    spec = lifecycle["spec"]
    sa = _service_account_ref(spec["serviceAccountRef"])
    if sa is not None:
        return sa.via_field("spec")
    return fe.via(field_not_empty(spec["image"], "image"), "spec")


def _no_defaults(obj: Obj, ctx: Context) -> None:
    pass


DEFAULTERS = {
    "images": default_image,
    "builds": default_build,
    "builders": default_builder,
    "clusterbuilders": default_cluster_builder,
    "clusterstacks": _no_defaults,
    "clusterstores": _no_defaults,
    "buildpacks": default_buildpack,
    "clusterbuildpacks": _no_defaults,
    "clusterlifecycles": _no_defaults,
}
VALIDATORS = {
    "images": validate_image,
    "builders": validate_builder,
    "clusterbuilders": validate_cluster_builder,
    "clusterstacks": validate_cluster_stack,
    "clusterstores": validate_cluster_store,
    "buildpacks": validate_buildpack,
    "clusterbuildpacks": validate_cluster_buildpack,
    "clusterlifecycles": validate_cluster_lifecycle,
}
