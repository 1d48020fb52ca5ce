"""kpack's Builder and ClusterBuilder reconcilers.

An Image builds only once its builder is ready with its generation observed, and every Build copies the
builder's image, run image, lifecycle and buildpacks, which later decide STACK, BUILDPACK and LIFECYCLE
rebuilds; so builder status has to be kpack's: ``spec.order`` resolved against Buildpacks,
ClusterBuildpacks and the ClusterStore (kpack.md §6), the builder validated, and the status of §1.3 and
§1.9, including the error paths that keep the last good image (``Ready`` stays True, ``UpToDate`` turns
False) and kpack's messages.

The builder image is not pushed anywhere: its digest is derived from what went into it, so a changed
order, stack run image or lifecycle gives a new ``latestImage``, and the run image keeps the stack's
digest under ``<builder tag>-run-image`` as kpack's relocation does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from service.kube import errors
from service.kube import resources as r
from service.kube.conditions import is_true
from service.runtime import Request, Result
from simcluster.kpack import apis, gotypes
from simcluster.kpack.base import Obj, Shared, condition, go_json, log
from simcluster.kpack.options import ANNOTATION_NEVER_READY
from simcluster.kpack.refs import digest_of, fake_digest, parse_tag
from simcluster.kpack.validation import DEFAULT_LIFECYCLE

_SEMVER = re.compile(
    r"^v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?$"
)
_SUPPORTED_PLATFORM_APIS = ("0.3", "0.4", "0.5", "0.6", "0.7", "0.8")
_RELAXED_MIXIN_MIN_PLATFORM_API = "0.7"
_ANY_STACK_MIN_API = "0.5"


class BuilderError(Exception):
    """A reconcile error; its text goes into the ``UpToDate`` condition."""


def semver_key(version: str) -> tuple[Any, ...] | None:
    """Masterminds semver v3 ``NewVersion`` (lenient: ``v1``, ``1.2``), as a sort key; None if invalid."""
    m = _SEMVER.match(version)
    if m is None:
        return None
    major, minor, patch = int(m[1]), int((m[2] or ".0")[1:]), int((m[3] or ".0")[1:])
    pre = m[5]
    if pre is None:
        return (major, minor, patch, 1, ())
    parts: list[tuple[int, int | str]] = []
    for p in pre.split("."):
        if p.isdigit():
            if len(p) > 1 and p[0] == "0":
                return None  # leading zeros are invalid in numeric prerelease identifiers
            parts.append((0, int(p)))
        else:
            parts.append((1, p))
    return (major, minor, patch, 0, tuple(parts))


def _api_at_least(api: str, minimum: str) -> bool:
    a, b = semver_key(api), semver_key(minimum)
    return a is not None and b is not None and a >= b


@dataclass
class Resolver:
    """kpack's ``buildpackResolver`` over the cached objects' ``status.buildpacks``."""

    store: Obj | None
    buildpacks: list[Obj]  # namespaced Buildpacks (none for a ClusterBuilder)
    cluster_buildpacks: list[Obj]

    @staticmethod
    def _entries(obj: Obj | None) -> list[Obj]:
        return [b for b in ((obj or {}).get("status") or {}).get("buildpacks") or [] if isinstance(b, dict)]

    def _matching(self, bp_id: str, objs: Iterable[Obj]) -> list[Obj]:
        return [b for o in objs for b in self._entries(o) if b.get("id") == bp_id]

    @staticmethod
    def _named(name: str, objs: list[Obj]) -> Obj | None:
        return next((o for o in objs if o["metadata"]["name"] == name), None)

    def _root(self, ref: Obj) -> Obj:
        if ref["kind"] == "Buildpack":
            obj = self._named(ref["name"], self.buildpacks)
            if obj is None:
                raise BuilderError(f"no buildpack with name '{ref['name']}'")
        elif ref["kind"] == "ClusterBuildpack":
            obj = self._named(ref["name"], self.cluster_buildpacks)
            if obj is None:
                raise BuilderError(f"no cluster buildpack with name '{ref['name']}'")
        else:
            raise BuilderError("kind must be either Buildpack or ClusterBuildpack")
        entries = self._entries(obj)
        used = {g.get("id") for b in entries for o in b.get("order") or [] for g in o.get("group") or []}
        roots = [b for b in entries if b.get("id") not in used]
        if len(roots) != 1:
            raise BuilderError(f"unexpected number of root buildpacks: {len(roots)}")
        return roots[0]

    def resolve(self, ref: Obj) -> Obj:
        kind, bp_id, name, version = ref["kind"], ref["id"], ref["name"], ref["version"]
        if kind == "Buildpack" and bp_id:
            obj = self._named(name, self.buildpacks)
            if obj is None:
                raise BuilderError(f"buildpack not found: {name}")
            matching = self._matching(bp_id, [obj])
        elif kind == "ClusterBuildpack" and bp_id:
            obj = self._named(name, self.cluster_buildpacks)
            if obj is None:
                raise BuilderError(f"cluster buildpack not found: {name}")
            matching = self._matching(bp_id, [obj])
        elif kind:
            matching = [self._root(ref)]
        elif bp_id:
            matching = [
                *self._matching(bp_id, self.buildpacks),
                *self._matching(bp_id, self.cluster_buildpacks),
                *self._matching(bp_id, [self.store] if self.store else []),
            ]
        elif ref["image"]:
            raise BuilderError("using images in builders not currently supported")
        else:
            raise BuilderError("invalid buildpack reference")
        if not matching:
            raise BuilderError(f"could not find buildpack with id '{bp_id}'")
        if not version:
            keyed = []
            for b in matching:
                key = semver_key(b.get("version", ""))
                if key is None:
                    raise BuilderError(
                        f"cannot find buildpack '{b.get('id')}' with latest version due to invalid semver "
                        f"'{b.get('version', '')}'"
                    )
                keyed.append((key, b))
            return sorted(keyed, key=lambda kb: kb[0])[-1][1]  # stable: the last of equals wins
        for b in matching:
            if b.get("version") == version:
                return b
        raise BuilderError(f"could not find buildpack with id '{bp_id}' and version '{version}'")

    def fetch(self, bp: Obj, layers: dict[tuple[str, str], Obj]) -> None:
        """Collect the layers of ``bp`` and, for a meta-buildpack, of its order (resolved again by id and
        version across every source)."""
        for entry in bp.get("order") or []:
            for child in entry.get("group") or []:
                ref = {
                    "kind": "",
                    "id": child.get("id", ""),
                    "name": "",
                    "version": child.get("version", ""),
                    "image": "",
                }
                self.fetch(self.resolve(ref), layers)
        layers[(bp.get("id", ""), bp.get("version", ""))] = bp


@dataclass
class BuilderImage:
    """What the simulator remembers of a builder image it "built", for the builds that use it."""

    stack_id: str
    lifecycle_version: str
    order: list[Obj]
    metadata: list[Obj]  # builderMetadata
    children: dict[str, list[tuple[str, str, bool]]] = field(default_factory=dict)  # id@version -> order

    def detected(self, buildpack_id: str | None) -> list[Obj]:
        """The buildpacks a build "detects": the first order group (or the first naming ``buildpack_id``),
        meta-buildpacks expanded into their required children, as ``buildMetadata`` entries."""
        groups = [e.get("group") or [] for e in self.order]
        group = (
            next((g for g in groups if any(b.get("id") == buildpack_id for b in g)), None)
            if buildpack_id
            else None
        )
        if group is None:
            group = groups[0] if groups else []
        by_key = {(m["id"], m["version"]): m for m in self.metadata}
        out: list[Obj] = []

        def add(bp_id: str, version: str) -> None:
            for child_id, child_version, optional in self.children.get(f"{bp_id}@{version}", []):
                if not optional:
                    add(child_id, child_version)
            m = by_key.get((bp_id, version))
            if m is not None and m not in out:
                out.append(m)

        for b in group:
            add(b.get("id", ""), b.get("version", ""))
        return out


def builder_image_from_status(status: Obj) -> BuilderImage:
    return BuilderImage(
        stack_id=(status.get("stack") or {}).get("id", ""),
        lifecycle_version=(status.get("lifecycle") or {}).get("version", ""),
        order=list(status.get("order") or []),
        metadata=list(status.get("builderMetadata") or []),
    )


def resolve_builder_ref(tag: str, kind: str, namespace: str, name: str) -> str:
    """``resolveBuilderRef``: a tag of ``latest`` (or none) becomes ``clusterbuilder-<name>`` or
    ``builder-<namespace>-<name>``; otherwise the tag as written, fully qualified."""
    ref = parse_tag(tag)
    if ref is None:
        raise BuilderError(f"could not parse reference: {tag}")
    if ref.tag == "latest":
        suffix = f"clusterbuilder-{name}" if kind == "ClusterBuilder" else f"builder-{namespace}-{name}"
        return f"{ref.repository.name}:{suffix}"
    return ref.name


def _validate_buildpack(
    bp: Obj, buildpack_apis: list[str], stack_id: str, mixins: list[str], relaxed: bool
) -> None:
    if bp.get("order"):
        return  # meta-buildpacks are not validated
    api = bp.get("api", "")
    if api not in buildpack_apis:
        raise BuilderError(f"unsupported buildpack api: {api}, expecting: {', '.join(buildpack_apis)}")
    stacks = bp.get("stacks") or []
    if not stacks:
        return
    for s in stacks:
        if s.get("id") == stack_id or (s.get("id") == "*" and _api_at_least(api, _ANY_STACK_MIN_API)):
            missing = [m for m in s.get("mixins") or [] if not _mixin_present(mixins, m, relaxed)]
            if missing:
                raise BuilderError(f"stack missing mixin(s): {', '.join(missing)}")
            return
    raise BuilderError(f"stack {stack_id} is not supported")


def _mixin_present(mixins: list[str], mixin: str, relaxed: bool) -> bool:
    if not relaxed:
        return mixin in mixins
    if mixin.startswith(("build:", "run:")):
        return mixin in mixins or mixin.split(":", 1)[1] in mixins
    return mixin in mixins or (f"build:{mixin}" in mixins and f"run:{mixin}" in mixins)


class BuilderControllers:
    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    # ------------------------------------------------------------------ event mapping
    def builders_using(self, plural: str, field_name: str, name: str, default: str = "") -> list[Request]:
        """The builders of kind ``plural`` whose ``spec.<field_name>.name`` is ``name``."""
        out = []
        for b in self.shared.list(plural):
            ref = ((b.get("spec") or {}).get(field_name) or {}).get("name") or default
            if ref == name:
                out.append(Request(b["metadata"].get("namespace", ""), b["metadata"]["name"]))
        return out

    def all_builders(self, plural: str, namespace: str | None = None) -> list[Request]:
        return [
            Request(b["metadata"].get("namespace", ""), b["metadata"]["name"])
            for b in self.shared.list(plural, namespace)
        ]

    # ------------------------------------------------------------------ reconcile
    async def builder(self, request: Request) -> Result | None:
        return await self._reconcile("builders", request)

    async def cluster_builder(self, request: Request) -> Result | None:
        return await self._reconcile("clusterbuilders", request)

    def _never_ready(self, plural: str, obj: Obj) -> bool:
        meta = obj["metadata"]
        key = meta["name"] if plural == "clusterbuilders" else f"{meta.get('namespace')}/{meta['name']}"
        return (
            key in self.shared.options.unready_builders
            or (meta.get("annotations") or {}).get(ANNOTATION_NEVER_READY) == "true"
        )

    async def _reconcile(self, plural: str, request: Request) -> Result | None:
        obj = self.shared.get(plural, request.namespace or None, request.name)
        if obj is None:
            return None
        top = apis.CLUSTER_BUILDER if plural == "clusterbuilders" else apis.BUILDER
        res = r.CLUSTER_BUILDER if plural == "clusterbuilders" else r.BUILDER
        status_type = top.field_type("status")
        status = gotypes.decode(status_type, obj.get("status") or {})
        if self._never_ready(plural, obj):
            self._error_status(status, "the kpack simulator keeps this builder from becoming ready")
            await self.shared.write_status(res, top, obj, status)
            return None
        try:
            record = await self._build(
                plural, obj, gotypes.decode(top.field_type("spec"), obj.get("spec") or {})
            )
        except BuilderError as exc:
            self._error_status(status, str(exc))
            await self.shared.write_status(res, top, obj, status)
            log.info("%s %s: %s", plural, request, exc)
            return Result(requeue=True)
        status.update(record)
        status["conditions"] = [condition("Ready", "True"), condition("UpToDate", "True")]
        await self.shared.write_status(res, top, obj, status)
        return None

    @staticmethod
    def _error_status(status: Obj, message: str) -> None:
        """``BuilderStatus.ErrorCreate``: the other fields keep their last values."""
        ready = (
            condition("Ready", "True")
            if status["latestImage"]
            else condition("Ready", "False", "NoLatestImage", "Builder has no latestImage")
        )
        status["observedGeneration"] = 0
        status["conditions"] = [ready, condition("UpToDate", "False", "ReconcileFailed", message)]

    async def _service_account(self, namespace: str, name: str) -> None:
        try:
            await self.shared.client.get(r.SERVICE_ACCOUNT, name, namespace)
        except errors.NotFound:
            raise BuilderError(f'serviceaccounts "{name}" not found') from None

    async def _build(self, plural: str, obj: Obj, spec: Obj) -> Obj:
        cluster = plural == "clusterbuilders"
        meta = obj["metadata"]
        namespace = meta.get("namespace", "")
        store = None
        if spec["store"]["name"]:
            store = self.shared.get("clusterstores", None, spec["store"]["name"])
            if store is None:
                raise BuilderError(f'clusterstore.kpack.io "{spec["store"]["name"]}" not found')
        cluster_buildpacks = sorted(
            self.shared.list("clusterbuildpacks"), key=lambda o: o["metadata"]["name"]
        )
        buildpacks = (
            []
            if cluster
            else sorted(self.shared.list("buildpacks", namespace), key=lambda o: o["metadata"]["name"])
        )
        stack_name = spec["stack"]["name"]
        stack = self.shared.get("clusterstacks", None, stack_name)
        if stack is None:
            raise BuilderError(f'clusterstack.kpack.io "{stack_name}" not found')
        if not is_true(stack, "Ready"):
            raise BuilderError(
                f"stack {stack_name} is not ready"
                if cluster
                else f"Error: clusterstack '{stack_name}' is not ready"
            )
        lifecycle_name = spec["lifecycle"]["name"] or DEFAULT_LIFECYCLE
        lifecycle = self.shared.get("clusterlifecycles", None, lifecycle_name)
        if lifecycle is None:
            raise BuilderError(f'clusterlifecycle.kpack.io "{lifecycle_name}" not found')
        if not is_true(lifecycle, "Ready"):
            raise BuilderError(f"Error: clusterlifecycle '{lifecycle_name}' is not ready")
        if cluster:
            await self._service_account(
                spec["serviceAccountRef"]["namespace"], spec["serviceAccountRef"]["name"]
            )
        else:
            await self._service_account(
                namespace, spec["serviceAccountName"] or spec["serviceAccount"] or "default"
            )
        builder_ref = resolve_builder_ref(
            spec["tag"], "ClusterBuilder" if cluster else "Builder", namespace, meta["name"]
        )

        stack_status = stack.get("status") or {}
        stack_id = stack_status.get("id", "")
        run_latest = (stack_status.get("runImage") or {}).get("latestImage", "")
        run_image = f"{builder_ref}-run-image@{digest_of(run_latest)}"
        lc = lifecycle.get("status") or {}
        lc_apis = lc.get("apis") or {}
        platform_apis = [
            *((lc_apis.get("platform") or {}).get("deprecated") or []),
            *((lc_apis.get("platform") or {}).get("supported") or []),
        ]
        buildpack_apis = [
            *((lc_apis.get("buildpack") or {}).get("deprecated") or []),
            *((lc_apis.get("buildpack") or {}).get("supported") or []),
        ]

        resolver = Resolver(store, buildpacks, cluster_buildpacks)
        layers: dict[tuple[str, str], Obj] = {}
        order = []
        for entry in spec["order"] or []:
            group = []
            for ref in entry["group"] or []:
                bp = resolver.resolve(ref)
                resolver.fetch(bp, layers)
                item: Obj = {
                    "id": bp.get("id", ""),
                    "version": bp.get("version", ""),
                    "optional": ref["optional"],
                }
                group.append(item)
            order.append({"group": group})

        if not any(api in platform_apis for api in _SUPPORTED_PLATFORM_APIS):
            raise BuilderError(
                f"unsupported platform apis in kpack lifecycle: {', '.join(platform_apis)}, expecting one of: "
                f"{', '.join(_SUPPORTED_PLATFORM_APIS)}"
            )
        relaxed = any(_api_at_least(api, _RELAXED_MIXIN_MIN_PLATFORM_API) for api in platform_apis)
        ordered = sorted(layers.values(), key=lambda b: f"{b.get('id')}@{b.get('version')}", reverse=True)
        ordered.sort(key=lambda b: b.get("size", 0), reverse=True)
        mixins = list(stack_status.get("mixins") or [])
        for bp in ordered:
            try:
                _validate_buildpack(bp, buildpack_apis, stack_id, mixins, relaxed)
            except BuilderError as exc:
                raise BuilderError(
                    f"validating buildpack {bp.get('id')}@{bp.get('version')}: {exc}"
                ) from None
        metadata = [
            {"id": b.get("id", ""), "version": b.get("version", ""), "homepage": b.get("homepage", "")}
            for b in ordered
        ]
        lifecycle_status = {
            "image": {"latestImage": "", "image": ""},
            "version": lc.get("version", ""),
            "api": lc.get("api") or {},
            "apis": lc_apis,
        }
        contents = {
            "order": order,
            "layers": [[b.get("id"), b.get("version"), b.get("digest")] for b in ordered],
            "runImage": run_image,
            "stack": stack_id,
            "lifecycle": lifecycle_status,
            "labels": spec["additionalLabels"],
        }
        latest_image = f"{builder_ref}@{fake_digest('builder', go_json(contents))}"
        image = BuilderImage(
            stack_id,
            lc.get("version", ""),
            order,
            metadata,
            {
                f"{b.get('id')}@{b.get('version')}": [
                    (g.get("id", ""), g.get("version", ""), bool(g.get("optional")))
                    for o in b.get("order") or []
                    for g in o.get("group") or []
                ]
                for b in ordered
            },
        )
        self.shared.builder_images[latest_image] = image
        store_generation = ((store or {}).get("status") or {}).get("observedGeneration", 0) if store else 0
        record = {
            "latestImage": latest_image,
            "stack": {"runImage": run_image, "id": stack_id},
            "lifecycle": lifecycle_status,
            "builderMetadata": metadata,
            "order": order,
            "observedStackGeneration": stack_status.get("observedGeneration", 0),
            "observedStoreGeneration": store_generation,
            "os": "linux",
            "signaturePaths": None,
        }
        decoded: Obj = gotypes.decode(apis.BUILDER_STATUS, record)
        return {k: decoded[k] for k in record}
