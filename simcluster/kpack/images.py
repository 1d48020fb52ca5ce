"""kpack's Image reconciler (``pkg/reconciler/image``, ``pkg/buildchange``), ported.

The service under test reacts to exactly what this produces: which Builds appear, with which names,
labels, annotations, tags and ``lastBuild``, and how the Image status (generations, conditions) moves, so
these follow kpack (kpack.md §3.1 to §3.6, §3.8, §3.9, §2.1, §2.3) rather than an idea of it.

Differences from kpack: the cache PersistentVolumeClaim is not created (the emulator serves no PVCs; its
name still goes into ``status.buildCacheName`` and the Build), and a simulator knob can make the reconciler
skip a build it would create (``sim.kpack.io/skip-build-generation`` or ``skip_next_build``), the way kpack
sometimes decides no build is needed when one is (Korifi recovers from that with ``additionalBuildNeeded``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.kube import errors
from service.kube import resources as r
from service.kube.conditions import condition_of, is_true
from service.registry.reference import try_parse_reference
from service.runtime import Request, Result, by_labels, index_value
from simcluster.kpack import apis, gotypes
from simcluster.kpack.base import (
    KPACK_API_VERSION,
    Obj,
    Shared,
    condition,
    controller_ref,
    generation_observed,
    go_json,
    log,
)
from simcluster.kpack.gotypes import Field, Struct
from simcluster.kpack.options import ANNOTATION_SKIP_BUILD
from simcluster.kpack.refs import build_tags, child_name
from simcluster.kpack.validation import Context, default_image, need_volume_cache

BUILD_NUMBER = "image.kpack.io/buildNumber"
IMAGE_LABEL = "image.kpack.io/image"
# Builds by their Image (namespace and image label), so a reconcile does not scan every Build.
BUILDS_BY_IMAGE = "kpack-sim-builds-by-image"
builds_by_image = by_labels(IMAGE_LABEL, namespaced=True)
IMAGE_GENERATION = "image.kpack.io/imageGeneration"
REASON = "image.kpack.io/reason"
CHANGES = "image.kpack.io/buildChanges"
BUILDER_NAME = "image.kpack.io/builderName"
BUILDER_KIND = "image.kpack.io/builderKind"
BUILD_NEEDED = "image.kpack.io/additionalBuildNeeded"
NOT_UP_TO_DATE = "Builder is not up to date. The latest stack and buildpacks may not be in use."

CONFIG = Struct(
    "buildchange.Config",
    [
        Field("env", gotypes.Slice(apis.ENV_VAR), True),
        Field("resources", apis.RESOURCE_REQUIREMENTS, True),
        Field("services", apis.SERVICES, True),
        Field("cnbBindings", apis.CNB_BINDINGS, True),
        Field("source", apis.SOURCE_CONFIG, True),
    ],
)
_BUILD_SPEC = apis.BUILD.field_type("spec")
_BUILD_STATUS = apis.BUILD.field_type("status")


class DecisionError(Exception):
    pass


# ------------------------------------------------------------------ builds, builders, resolvers
def build_condition(build: Obj | None) -> Obj | None:
    return condition_of(build, "Succeeded")


def is_running(build: Obj | None) -> bool:
    c = build_condition(build)
    return build is not None and (c is None or c.get("status") == "Unknown")


def is_success(build: Obj | None) -> bool:
    return is_true(build, "Succeeded")


def is_failure(build: Obj | None) -> bool:
    c = build_condition(build)
    return c is not None and c.get("status") == "False"


def image_generation(build: Obj | None) -> int:
    try:
        return int(((build or {}).get("metadata") or {}).get("labels", {}).get(IMAGE_GENERATION, "0"))
    except (TypeError, ValueError):
        return 0


def built_image(build: Obj | None) -> str:
    return ((build or {}).get("status") or {}).get("latestImage", "") if is_success(build) else ""


def build_stack(build: Obj | None) -> str:
    return (((build or {}).get("status") or {}).get("stack") or {}).get("id", "") if is_success(build) else ""


def build_counter(build: Obj | None) -> int:
    if build is None:
        return 0
    value = (build["metadata"].get("labels") or {}).get(BUILD_NUMBER, "")
    try:
        return int(value, 10)
    except ValueError:
        raise DecisionError(
            f'error parsing the image build number: strconv.ParseInt: parsing "{value}": invalid syntax'
        ) from None


def builder_ready(builder: Obj) -> bool:
    return is_true(builder, "Ready") and generation_observed(builder)


def builder_up_to_date(builder: Obj) -> bool:
    return is_true(builder, "UpToDate") and generation_observed(builder)


def resolver_ready(resolver: Obj) -> bool:
    return is_true(resolver, "Ready") and generation_observed(resolver)


def builder_error(builder: Obj) -> str:
    meta = builder["metadata"]
    text = f"Error: Builder '{meta['name']}' is not ready in namespace '{meta.get('namespace', '')}'"
    message = (condition_of(builder, "Ready") or {}).get("message", "")
    return f"{text}; Message: {message}" if message else text


def builder_ready_condition(builder: Obj) -> Obj:
    if not builder_ready(builder):
        return condition("BuilderReady", "False", "BuilderNotReady", builder_error(builder))
    return condition("BuilderReady", "True", "BuilderReady")


def builder_up_to_date_condition(builder: Obj) -> Obj:
    if not builder_up_to_date(builder):
        return condition("BuilderUpToDate", "False", "BuilderNotUpToDate", NOT_UP_TO_DATE)
    return condition("BuilderUpToDate", "True", "BuilderUpToDate")


def running_conditions(build: Obj, builder: Obj) -> list[Obj]:
    c = build_condition(build)
    message = c.get("message", "") if c is not None else f"Build '{build['metadata']['name']}' is executing"
    return [
        condition("Ready", "Unknown", "BuildRunning", message),
        builder_ready_condition(builder),
        builder_up_to_date_condition(builder),
    ]


def resolved_source(resolver: Obj) -> Obj:
    """``ResolvedSource().SourceConfig()`` of a resolver's status, as a Go value."""
    source = gotypes.decode(apis.RESOLVED_SOURCE_CONFIG, ((resolver.get("status") or {}).get("source")) or {})
    out: Obj = gotypes.decode(apis.SOURCE_CONFIG, {})
    if source["git"] is not None:
        g = source["git"]
        out["git"] = {
            "url": g["url"],
            "revision": g["revision"],
            "initializeSubmodules": g["initializeSubmodules"],
        }
        out["subPath"] = g["subPath"]
    elif source["blob"] is not None:
        b = source["blob"]
        out["blob"] = {"url": b["url"], "auth": b["auth"], "stripComponents": b["stripComponents"]}
        out["subPath"] = b["subPath"]
    elif source["registry"] is not None:
        reg = source["registry"]
        out["registry"] = {"image": reg["image"], "imagePullSecrets": reg["imagePullSecrets"]}
        out["subPath"] = reg["subPath"]
    return out


def _identifier(value: str) -> tuple[str | None, str | None]:
    ref = try_parse_reference(value)
    return (None, f"could not parse reference: {value}") if ref is None else (ref.identifier, None)


class ImageController:
    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        # skip_next_build: image key -> the generation whose builds are skipped (None: the next one)
        self.skip: dict[tuple[str, str], int | None] = {}

    def skip_next_build(self, namespace: str, name: str) -> None:
        """Make the reconciler skip the next build it would create for this Image for a reason other than
        ``TRIGGER`` (and any other at that generation): its status then shows the new generation observed
        but not built, as after kpack decided no build was needed."""
        self.skip[(namespace, name)] = None

    # ------------------------------------------------------------------ event mapping
    def images_using(self, builder: Obj) -> list[Request]:
        kind = builder.get("kind", "")
        meta = builder["metadata"]
        out = []
        for image in self.shared.list("images", meta.get("namespace") or None):
            ref = (image.get("spec") or {}).get("builder") or {}
            if ref.get("kind") == kind and ref.get("name") == meta["name"]:
                out.append(Request(image["metadata"]["namespace"], image["metadata"]["name"]))
        return out

    # ------------------------------------------------------------------ reconcile
    async def reconcile(self, request: Request) -> Result | None:
        stored = self.shared.get("images", request.namespace, request.name)
        if stored is None:
            return None
        image = gotypes.decode(apis.IMAGE, stored)
        default_image(image, Context())
        try:
            status = await self._reconcile(image, stored)
        except (DecisionError, errors.ApiError) as exc:
            log.info("image %s: %s", request, exc)
            return Result(requeue=True)
        if status is not None:
            await self.shared.write_status(r.IMAGE, apis.IMAGE, stored, status)
        return None

    def _builder(self, image: Obj) -> Obj | None:
        ref = image["spec"]["builder"]
        if ref["kind"] == "ClusterBuilder":
            return self.shared.get("clusterbuilders", None, ref["name"])
        if ref["kind"] == "Builder":
            return self.shared.get("builders", image["metadata"]["namespace"], ref["name"])
        raise DecisionError(f"unknown builder type: {ref['kind']}")

    def _builds(self, image: Obj) -> list[Obj]:
        meta = image["metadata"]
        builds = self.shared.by_index("builds", BUILDS_BY_IMAGE, index_value(meta["namespace"], meta["name"]))

        def key(b: Obj) -> tuple[str, int, str]:
            number = (b["metadata"].get("labels") or {}).get(BUILD_NUMBER, "")
            return (
                b["metadata"].get("creationTimestamp", ""),
                int(number) if number.isdigit() else 0,
                b["metadata"]["name"],
            )

        return sorted(builds, key=key)

    async def _reconcile(self, image: Obj, stored: Obj) -> Obj | None:
        status: Obj = image["status"]
        spec = image["spec"]
        builder = self._builder(image)
        if builder is None:
            status["conditions"] = [
                condition(
                    "Ready",
                    "False",
                    "BuilderNotFound",
                    f"Error: Unable to find builder '{spec['builder']['name']}' in namespace "
                    f"'{spec['builder']['namespace']}'.",
                )
            ]
            return status
        builds = self._builds(image)
        last = builds[-1] if builds else None
        if last is not None and is_running(last):
            status["conditions"] = running_conditions(last, builder)
            return status
        cache_name = child_name(image["metadata"]["name"], "-cache") if need_volume_cache(spec) else ""
        resolver = await self._source_resolver(image, stored)
        status = await self._reconcile_build(image, last, resolver, builder, cache_name)
        await self._delete_old_builds(image, builds)
        return status

    async def _source_resolver(self, image: Obj, stored: Obj) -> Obj:
        meta = image["metadata"]
        name = child_name(meta["name"], "-source")
        desired_spec = gotypes.encode(
            apis.SOURCE_RESOLVER_SPEC,
            {"serviceAccount": image["spec"]["serviceAccountName"], "source": image["spec"]["source"]},
        )
        labels = dict(stored["metadata"].get("labels") or {})
        existing = self.shared.get("sourceresolvers", meta["namespace"], name)
        if existing is None:
            body = {
                "apiVersion": KPACK_API_VERSION,
                "kind": "SourceResolver",
                "metadata": {
                    "name": name,
                    "namespace": meta["namespace"],
                    "ownerReferences": [controller_ref(stored)],
                    "labels": labels,
                },
                "spec": desired_spec,
            }
            existing = await self.shared.client.create(apis.SOURCE_RESOLVER_RESOURCE, body)
        current_spec = gotypes.roundtrip(apis.SOURCE_RESOLVER_SPEC, existing.get("spec") or {})
        if current_spec == desired_spec and (existing["metadata"].get("labels") or {}) == labels:
            return existing
        updated = {**existing, "metadata": {**existing["metadata"], "labels": labels}, "spec": desired_spec}
        return await self.shared.client.update(apis.SOURCE_RESOLVER_RESOURCE, updated)

    # ------------------------------------------------------------------ the build decision
    def _changes(
        self, image: Obj, last: Obj | None, resolver: Obj, builder: Obj
    ) -> list[tuple[str, Any, Any]]:
        changes: list[tuple[str, Any, Any]] = []
        last_spec = gotypes.decode(_BUILD_SPEC, last.get("spec") or {}) if last is not None else None
        last_status = gotypes.decode(_BUILD_STATUS, last.get("status") or {}) if last is not None else None
        if last is not None and BUILD_NEEDED in (last["metadata"].get("annotations") or {}):
            when = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S %z")
            changes.append(("TRIGGER", "", f"A new build was manually triggered on {when}"))
        resolver_git = ((resolver.get("status") or {}).get("source") or {}).get("git")
        if last_spec is not None and last_spec["source"]["git"] is not None and resolver_git is not None:
            old_rev, new_rev = last_spec["source"]["git"]["revision"], resolver_git.get("revision", "")
            if old_rev != new_rev:
                changes.append(("COMMIT", old_rev, new_rev))
        build = image["spec"]["build"]
        old: Obj = gotypes.decode(CONFIG, {})
        if last_spec is not None:
            old = {k: last_spec[k] for k in ("env", "resources", "services", "cnbBindings", "source")}
        new = {
            "env": build["env"] if build else None,
            "resources": build["resources"] if build else gotypes.decode(apis.RESOURCE_REQUIREMENTS, {}),
            "services": build["services"] if build else None,
            "cnbBindings": build["cnbBindings"] if build else None,
            "source": resolved_source(resolver),
        }
        if _without_revision(gotypes.encode(CONFIG, old)) != _without_revision(gotypes.encode(CONFIG, new)):
            changes.append(("CONFIG", gotypes.encode(CONFIG, old), gotypes.encode(CONFIG, new)))
        if last_status is not None and is_success(last):
            builder_status = builder.get("status") or {}
            known = {(m.get("id"), m.get("version")) for m in builder_status.get("builderMetadata") or []}
            removed = [
                {"id": m["id"], "version": m["version"]}
                for m in last_status["buildMetadata"] or []
                if (m["id"], m["version"]) not in known
            ]
            if removed:
                changes.append(("BUILDPACK", sorted(removed, key=lambda m: m["id"]), None))
            old_digest, old_err = _identifier(last_status["stack"]["runImage"])
            new_digest, new_err = _identifier((builder_status.get("stack") or {}).get("runImage", ""))
            if old_err or new_err:
                joined = "; ".join(e for e in (old_err, new_err) if e)
                raise DecisionError(
                    "error determining if an image build is needed: error determining if build is required for "
                    f"reason 'STACK': {joined}"
                )
            if old_digest != new_digest:
                changes.append(("STACK", old_digest, new_digest))
            new_lifecycle = (builder_status.get("lifecycle") or {}).get("version", "")
            if last_status["lifecycleVersion"] != new_lifecycle:
                changes.append(("LIFECYCLE", last_status["lifecycleVersion"], new_lifecycle))
        return changes

    def _skipping(self, image: Obj, reasons: list[str], last: Obj | None) -> bool:
        if last is None or "TRIGGER" in reasons:
            return False
        meta = image["metadata"]
        generation = meta.get("generation", 0)
        if (meta.get("annotations") or {}).get(ANNOTATION_SKIP_BUILD) == str(generation):
            return True
        key = (meta["namespace"], meta["name"])
        if key not in self.skip:
            return False
        bound = self.skip[key]
        if bound is None:
            self.skip[key] = generation
            return True
        if bound == generation:
            return True
        del self.skip[key]
        return False

    async def _reconcile_build(
        self, image: Obj, last: Obj | None, resolver: Obj, builder: Obj, cache_name: str
    ) -> Obj:
        current = build_counter(last)
        meta = image["metadata"]
        decision = "Unknown"
        changes: list[tuple[str, Any, Any]] = []
        if resolver_ready(resolver) and builder_ready(builder):
            changes = self._changes(image, last, resolver, builder)
            decision = "True" if changes else "False"
        reasons = [c[0] for c in changes]
        if decision == "True" and self._skipping(image, reasons, last):
            log.info(
                "image %s/%s: skipping a %s build (simulator knob)", meta["namespace"], meta["name"], reasons
            )
            decision = "False"
        latest_image = built_image(last) if is_success(last) else image["status"]["latestImage"]
        if decision == "True":
            number = current + 1
            body = self._build(
                image, resolver, builder, last, ",".join(reasons), _changes_json(changes), number
            )
            try:
                created = await self.shared.client.create(r.BUILD, body)
            except errors.ApiError as exc:
                raise DecisionError(
                    f"error creating build '{body['metadata']['name']}' in namespace '{meta['namespace']}': {exc.message}"
                ) from None
            status = {
                "conditions": [
                    condition(
                        "Ready",
                        "Unknown",
                        "BuildRunning",
                        f"Build '{created['metadata']['name']}' is executing",
                    ),
                    condition("BuilderReady", "True", "BuilderReady"),
                    builder_up_to_date_condition(builder),
                ],
                "buildCounter": number,
                "buildCacheName": cache_name,
                "latestBuildRef": created["metadata"]["name"],
                "latestBuildReason": ",".join(reasons),
                "latestImage": latest_image,
                "latestStack": "",
                "latestBuildImageGeneration": meta.get("generation", 0),
            }
        else:
            status = {
                "conditions": self._no_build_conditions(decision, builder, last, resolver),
                "latestBuildRef": last["metadata"]["name"] if last else "",
                "latestBuildReason": ((last or {}).get("metadata", {}).get("annotations") or {}).get(
                    REASON, ""
                ),
                "latestBuildImageGeneration": image_generation(last),
                "latestImage": latest_image,
                "latestStack": build_stack(last),
                "buildCounter": current,
                "buildCacheName": cache_name,
            }
        decoded: Obj = gotypes.decode(apis.IMAGE_STATUS, status)
        return decoded

    @staticmethod
    def _no_build_conditions(decision: str, builder: Obj, build: Obj | None, resolver: Obj) -> list[Obj]:
        if not builder_ready(builder):
            ready = condition("Ready", "False", "BuilderNotReady", builder_error(builder))
        elif decision == "Unknown" and not resolver_ready(resolver):
            name = resolver["metadata"]["name"]
            ready = condition(
                "Ready", "Unknown", "ResolverNotReady", f"Error: SourceResolver '{name}' is not ready"
            )
        elif decision == "Unknown":
            ready = condition("Ready", "Unknown", "UnknownState", "Error: Build status unknown")
        elif is_success(build):
            ready = condition("Ready", "True", "UpToDate", (build_condition(build) or {}).get("message", ""))
        else:
            assert build is not None
            c = build_condition(build)
            message = c.get("message", "") if c is not None else "unknown error"
            meta = build["metadata"]
            ready = condition(
                "Ready",
                c.get("status", "Unknown") if c is not None else "Unknown",
                "BuildFailed",
                f"Error: Build '{meta['name']}' in namespace '{meta['namespace']}' failed: {message}",
            )
        return [ready, builder_ready_condition(builder), builder_up_to_date_condition(builder)]

    def _build(
        self,
        image: Obj,
        resolver: Obj,
        builder: Obj,
        last: Obj | None,
        reasons: str,
        changes: str,
        number: int,
    ) -> Obj:
        """``Image.Build``: the Build kpack creates."""
        stored = self.shared.get("images", image["metadata"]["namespace"], image["metadata"]["name"]) or {}
        meta = stored.get("metadata") or image["metadata"]
        spec, status = image["spec"], image["status"]
        build = spec["build"]
        builder_status = builder.get("status") or {}
        cache: Obj = {"volume": None, "registry": None}
        if (
            spec["cache"] is not None
            and spec["cache"]["registry"] is not None
            and spec["cache"]["registry"]["tag"]
        ):
            cache["registry"] = dict(spec["cache"]["registry"])
        if need_volume_cache(spec):
            cache["volume"] = {"persistentVolumeClaimName": status["buildCacheName"]}
        last_build: Obj | None = None
        if last is not None:
            if is_failure(last):
                last_build = gotypes.decode(_BUILD_SPEC, last.get("spec") or {})["lastBuild"]
            else:
                last_status = last.get("status") or {}
                last_build = {
                    "image": built_image(last),
                    "cache": {"image": last_status.get("latestCacheImage", "") if is_success(last) else ""},
                    "stackId": build_stack(last),
                }
        number_str = str(number)
        build_spec = {
            "tags": build_tags(
                spec["tag"],
                spec["additionalTags"] or [],
                number,
                spec["imageTaggingStrategy"],
                datetime.now(UTC),
            )
            or None,
            "builder": {"image": builder_status.get("latestImage", "")},
            "runImage": {"image": (builder_status.get("stack") or {}).get("runImage", "")},
            "serviceAccountName": spec["serviceAccountName"],
            "source": resolved_source(resolver),
            "cache": cache,
            "services": build["services"] if build else None,
            "cnbBindings": build["cnbBindings"] if build else None,
            "env": build["env"] if build else None,
            "projectDescriptorPath": spec["projectDescriptorPath"],
            "resources": build["resources"] if build else gotypes.decode(apis.RESOURCE_REQUIREMENTS, {}),
            "lastBuild": last_build,
            "notary": spec["notary"],
            "cosign": spec["cosign"],
            "defaultProcess": spec["defaultProcess"],
            "tolerations": build["tolerations"] if build else None,
            "nodeSelector": build["nodeSelector"] if build else None,
            "affinity": build["affinity"] if build else None,
            "runtimeClassName": build["runtimeClassName"] if build else None,
            "schedulerName": build["schedulerName"] if build else "",
            "priorityClassName": "",
            "activeDeadlineSeconds": build["buildTimeout"] if build else None,
            "creationTime": build["creationTime"] if build else "",
        }
        return {
            "apiVersion": KPACK_API_VERSION,
            "kind": "Build",
            "metadata": {
                "name": child_name(meta["name"], f"-build-{number_str}"),
                "namespace": meta["namespace"],
                "ownerReferences": [controller_ref(stored or image)],
                "labels": {
                    **(meta.get("labels") or {}),
                    BUILD_NUMBER: number_str,
                    IMAGE_LABEL: meta["name"],
                    IMAGE_GENERATION: str(meta.get("generation", 0)),
                },
                "annotations": {
                    **(meta.get("annotations") or {}),
                    REASON: reasons,
                    CHANGES: changes,
                    BUILDER_NAME: builder["metadata"]["name"],
                    BUILDER_KIND: builder.get("kind", ""),
                },
            },
            "spec": _BUILD_SPEC.encode(build_spec),
        }

    async def _delete_old_builds(self, image: Obj, builds: list[Obj]) -> None:
        spec = image["spec"]
        failed = [b for b in builds if is_failure(b)]
        succeeded = [b for b in builds if is_success(b)]
        for group, limit, what in (
            (failed, spec["failedBuildHistoryLimit"], "failed"),
            (succeeded, spec["successBuildHistoryLimit"], "successful"),
        ):
            if len(group) > limit:
                oldest = group[0]["metadata"]
                try:
                    await self.shared.client.delete(r.BUILD, oldest["name"], oldest["namespace"])
                except errors.NotFound:
                    pass
                except errors.ApiError as exc:
                    raise DecisionError(f"failed deleting {what} build: {exc.message}") from None


def _without_revision(config: Obj) -> Obj:
    git = (config.get("source") or {}).get("git")
    if git is None:
        return config
    return {**config, "source": {**config["source"], "git": {**git, "revision": ""}}}


def _changes_json(changes: list[tuple[str, Any, Any]]) -> str:
    """The ``image.kpack.io/buildChanges`` annotation: Go's ``json.Marshal`` of ``[]GenericChange``."""
    return (
        go_json([{"reason": reason, "old": old, "new": new} for reason, old, new in changes])
        if changes
        else ""
    )
