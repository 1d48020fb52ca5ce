"""Least privilege, proven on the real kube-apiserver: the service runs as the ServiceAccount the Helm chart
makes (a TokenRequest token), bound only to the RBAC the chart renders (Helm's own SDK renders it here).

``BEHAVIOURS`` names, for every verb the chart grants, the behaviour that needs it. With the chart's RBAC
the scenario below does all of them; with the chart's RBAC minus any one verb, kube-apiserver answers 403
Forbidden to exactly that request and the named behaviour does not happen. tests/test_chart.py checks that
the chart grants exactly the permissions listed here, so a new rule needs a behaviour and a test.

(The whole reconcilers' suite also runs as this identity: test_suites_on_the_real_server.py.)

The scenario plays Korifi and kpack as the cluster's administrator, in namespaces of its own, with one
in-process OCI registry; objects a behaviour must find already in place are created before the service
starts, so that each behaviour is triggered by the state, not by timing.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import pytest

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import load_kubeconfig
from service.reconcilers import korifi as k
from service.registry.client import RegistryClient
from simcluster.crds import bundled_crd_dirs, read_documents
from simcluster.demo import create_space
from simcluster.registry import RunningRegistry, running_registry
from tests.controlplane.cluster import ControlPlane, apply_crds
from tests.controlplane.identity import (
    Identity,
    Permission,
    install_identity,
    permissions,
    release_name,
    remove_identity,
    render_chart,
    wait_authorized,
    without,
)
from tests.helpers import eventually
from tests.reconcilers.conftest import running_controllers, service_config

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

Obj = dict[str, Any]
KORIFI, KPACK = "korifi.cloudfoundry.org", "kpack.io"

# Every verb the chart grants, and the behaviour of the service that needs it.
BEHAVIOURS: dict[Permission, str] = {
    ("ClusterRole", KORIFI, "buildworkloads", "list"): "the workloads' cache fills",
    ("ClusterRole", KORIFI, "buildworkloads", "watch"): "the workloads' cache follows changes",
    ("ClusterRole", KORIFI, "buildworkloads", "patch"): "a workload gets its finalizer and generation label",
    (
        "ClusterRole",
        KORIFI,
        "buildworkloads/status",
        "patch",
    ): "a workload's conditions and droplet are written",
    ("ClusterRole", KORIFI, "builderinfos", "list"): "the BuilderInfo's cache fills",
    ("ClusterRole", KORIFI, "builderinfos", "watch"): "the BuilderInfo's cache follows changes",
    ("ClusterRole", KORIFI, "builderinfos/status", "patch"): "the BuilderInfo mirrors the ClusterBuilder",
    ("ClusterRole", KPACK, "clusterbuilders", "list"): "the ClusterBuilders' cache fills",
    ("ClusterRole", KPACK, "clusterbuilders", "watch"): "the ClusterBuilders' cache follows changes",
    ("ClusterRole", KPACK, "clusterbuilders", "get"): "a ClusterBuilder the cache lacks is confirmed",
    ("ClusterRole", KPACK, "buildpacks", "list"): "a workload names a namespace Buildpack's buildpack",
    ("ClusterRole", KPACK, "buildpacks", "watch"): "the Buildpacks' cache follows changes",
    ("ClusterRole", KPACK, "clusterbuildpacks", "list"): "a workload names a ClusterBuildpack's buildpack",
    ("ClusterRole", KPACK, "clusterbuildpacks", "watch"): "the ClusterBuildpacks' cache follows changes",
    ("ClusterRole", KPACK, "builders", "list"): "the Builders' cache fills",
    ("ClusterRole", KPACK, "builders", "watch"): "the Builders' cache follows changes",
    ("ClusterRole", KPACK, "builders", "get"): "a Builder the cache lacks is confirmed",
    ("ClusterRole", KPACK, "builders", "create"): "a custom Builder is made for a buildpack list",
    ("ClusterRole", KPACK, "builders", "patch"): "a custom Builder records another workload using it",
    # (delete: an unused custom Builder is collected, docs/builders.md; and OwnerReferencesPermissionEnforcement
    # wants it of whoever sets an owner reference, which is what a missing grant shows first)
    ("ClusterRole", KPACK, "builders", "delete"): "a custom Builder is made owned by its workloads",
    ("ClusterRole", KPACK, "images", "list"): "the Images' cache fills",
    ("ClusterRole", KPACK, "images", "watch"): "the Images' cache follows changes",
    ("ClusterRole", KPACK, "images", "get"): "an Image the cache lacks is confirmed",
    ("ClusterRole", KPACK, "images", "create"): "an app's kpack Image is made",
    ("ClusterRole", KPACK, "images", "patch"): "an app's kpack Image follows its latest workload",
    # (and the volume cache of one is replaced where its class cannot grow it: storageclasses list)
    ("ClusterRole", KPACK, "images", "delete"): "an app's Image is made owned by its workloads",
    ("ClusterRole", KPACK, "builds", "list"): "the Builds' cache fills",
    ("ClusterRole", KPACK, "builds", "watch"): "the Builds' cache follows changes",
    ("ClusterRole", KPACK, "builds", "get"): "a Build the cache lacks is confirmed",
    ("ClusterRole", KPACK, "builds", "patch"): "a Build gets the droplet-deletion finalizer",
    ("ClusterRole", KPACK, "builds", "delete"): "a deleted workload's Builds are deleted",
    ("ClusterRole", KPACK, "builds/status", "patch"): "a canceled build's kpack Build is marked finished",
    ("ClusterRole", "", "pods", "get"): "a canceled build's pod is confirmed gone",
    ("ClusterRole", "", "pods", "delete"): "a canceled build's pod is deleted",
    ("ClusterRole", "", "secrets", "get"): "a space's pull secret is found, and droplets are read with it",
    ("ClusterRole", "", "serviceaccounts", "list"): "the builder ServiceAccounts' cache fills",
    ("ClusterRole", "", "serviceaccounts", "watch"): "the builder ServiceAccounts' cache follows changes",
    ("ClusterRole", "", "serviceaccounts", "get"): "a deleted droplet's registry credentials are found",
    ("ClusterRole", "storage.k8s.io", "storageclasses", "list"): "the cache volume's StorageClass is read",
    ("ClusterRole", "", "events", "create"): "events are recorded on workloads",
    ("ClusterRole", "", "events", "patch"): "a repeated event is counted",
    ("Role", "coordination.k8s.io", "leases", "get"): "leader election reads the Lease",
    ("Role", "coordination.k8s.io", "leases", "create"): "leader election creates the Lease",
    ("Role", "coordination.k8s.io", "leases", "update"): "the leader renews the Lease",
}

SERVICE_ACCOUNT = "builder-service-account"
PREFIX = "registry.example/cf/"
ORDER = ["repo/my-buildpack", "repo/another-buildpack"]
RESOLVED = ["lp/space-buildpack@1.0.0", "lp/cluster-buildpack"]  # from a Buildpack, a ClusterBuildpack


# OwnerReferencesPermissionEnforcement's refusal (the admission plugin, not the authorizer, says it).
OWNER_REFERENCE_REFUSAL = "cannot set an ownerRef on a resource you can't delete"


@dataclass(frozen=True)
class Refusal:
    """kube-apiserver's refusals when one permission is missing: the authorizer's (``User "..." cannot
    <verb> resource ...``, the scope follows), and for ``delete`` also the admission plugin's refusal to
    set owner references on an object of that resource (``images.kpack.io "x" is forbidden: cannot set an
    ownerRef ...``)."""

    permission: Permission
    user: str

    @property
    def first(self) -> str:
        """The text the test waits for: the authorizer's, but for Builders and Images, which the plugin
        asks first (the service never deletes an Image; it deletes a custom Builder only after its users,
        which it cannot make without the right, are gone)."""
        _, _, resource, verb = self.permission
        if verb == "delete" and resource in ("builders", "images"):
            return OWNER_REFERENCE_REFUSAL
        return self.authorizer

    def explains(self, line: str) -> bool:
        _, group, resource, verb = self.permission
        if self.first in line:
            return True
        if verb == "delete" and resource == "builders" and self.authorizer in line:
            return True  # the collection of an unused custom Builder (docs/builders.md)
        return verb == "delete" and OWNER_REFERENCE_REFUSAL in line and f'{resource}.{group} "' in line

    @property
    def authorizer(self) -> str:
        _, group, resource, verb = self.permission
        return f'User "{self.user}" cannot {verb} resource "{resource}" in API group "{group}"'


class Captured(logging.Handler):
    """Every log record of the service, as text (message, exception and structured fields)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        extras = {
            k: v
            for k, v in record.__dict__.items()
            if k not in logging.LogRecord("", 0, "", 0, "", (), None).__dict__
        }
        line = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            line += f" | {record.exc_info[1]!r}"
        self.lines.append(f"{line} {extras}")

    def find(self, text: str) -> str | None:
        return next((line for line in self.lines if text in line), None)


@contextlib.contextmanager
def captured_logs() -> Any:
    handler = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# ---------------------------------------------------------------------------------------- the scenario
@dataclass
class Scenario:
    """Korifi's and kpack's side of every behaviour, in a space of its own."""

    admin: KubeClient
    registry: RunningRegistry
    images: RegistryClient
    space: str = field(default_factory=lambda: f"lp-{uuid.uuid4().hex[:8]}")
    root: str = field(default_factory=lambda: f"lp-cf-{uuid.uuid4().hex[:6]}")
    cluster_builder: str = field(default_factory=lambda: f"lp-cb-{uuid.uuid4().hex[:6]}")
    cluster_buildpack: str = field(default_factory=lambda: f"lp-cbp-{uuid.uuid4().hex[:6]}")

    # ------------------------------------------------------------------ helpers
    async def create(self, resource: r.Resource, obj: Obj) -> Obj:
        return await self.admin.create(resource, obj, obj["metadata"].get("namespace"))

    async def get(self, resource: r.Resource, name: str) -> Obj | None:
        try:
            return await self.admin.get(resource, name, self.space if resource.namespaced else None)
        except errors.NotFound:
            return None

    def workload_body(self, name: str, app: str, *, source: str = "PACKAGE_IMAGE", **spec: Any) -> Obj:
        return {
            "apiVersion": k.KORIFI_API_VERSION,
            "kind": "BuildWorkload",
            "metadata": {"name": name, "namespace": self.space, "labels": {k.APP_GUID_LABEL: app}},
            "spec": {
                "buildRef": {"name": name},
                "source": {
                    "registry": {
                        "image": source,
                        "imagePullSecrets": [{"name": "image-registry-credentials"}],
                    }
                },
                "builderName": k.BUILDER_NAME,
                **spec,
            },
        }

    async def workload(self, name: str, app: str, **spec: Any) -> Obj:
        return await self.create(r.BUILD_WORKLOAD, self.workload_body(name, app, **spec))

    async def in_flight(self, name: str, app: str) -> None:
        """A workload the service finds already started on generation 1 (labelled, Succeeded=Unknown)."""
        body = self.workload_body(name, app)
        body["metadata"]["labels"][k.IMAGE_GENERATION_LABEL] = "1"
        body["metadata"]["finalizers"] = [k.BUILD_WORKLOAD_FINALIZER]
        await self.create(r.BUILD_WORKLOAD, body)
        condition = {
            "type": k.SUCCEEDED,
            "status": "Unknown",
            "reason": k.BUILD_RUNNING,
            "message": k.BUILD_RUNNING_MESSAGE,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        await self.admin.patch_status(
            r.BUILD_WORKLOAD, name, {"status": {"conditions": [condition]}}, self.space
        )

    async def image(self, app: str, *, builder: Obj, size: str = "1024Mi", status: Obj | None = None) -> None:
        """An app's kpack Image, as the service would have made it, with kpack's status."""
        await self.create(
            r.IMAGE,
            {
                "apiVersion": k.KPACK_API_VERSION,
                "kind": "Image",
                "metadata": {"name": app, "namespace": self.space, "labels": {k.APP_GUID_LABEL: app}},
                "spec": {
                    "tag": f"{PREFIX}{app}-droplets",
                    "builder": builder,
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "source": {"registry": {"image": "PACKAGE_IMAGE"}},
                    "cache": {"volume": {"size": size}},
                },
            },
        )
        if status is not None:
            await self.admin.patch_status(r.IMAGE, app, {"status": status}, self.space)

    # ------------------------------------------------------------------ before the service starts
    async def prepare(self) -> None:
        await create_space(self.admin, self.space, self.registry.url, service_account=SERVICE_ACCOUNT)
        await self.create(
            r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.root}}
        )
        await self.create(
            r.CLUSTER_BUILDER,
            {
                "apiVersion": k.KPACK_API_VERSION,
                "kind": "ClusterBuilder",
                "metadata": {"name": self.cluster_builder},
                "spec": {
                    "tag": f"{PREFIX}builder",
                    "stack": {"kind": "ClusterStack", "name": "stack"},
                    "store": {"kind": "ClusterStore", "name": "store"},
                    "serviceAccountRef": {"name": "kpack-service-account", "namespace": "cf"},
                },
            },
        )
        await self.admin.patch_status(
            r.CLUSTER_BUILDER,
            self.cluster_builder,
            {
                "status": {
                    "order": [{"group": [{"id": bp}]} for bp in ORDER],
                    "stack": {"id": "io.buildpacks.stacks.jammy", "runImage": "run"},
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            },
        )
        await self.create(
            r.BUILDER_INFO,
            {
                "apiVersion": k.KORIFI_API_VERSION,
                "kind": "BuilderInfo",
                "metadata": {"name": k.BUILDER_INFO_NAME, "namespace": self.root},
                "spec": {},
            },
        )
        # What a workload may name besides the ClusterBuilder's order, as kpack has read it.
        for resource, name, namespace, bp_id in (
            (r.BUILDPACK, "space-buildpack", self.space, "lp/space-buildpack"),
            (r.CLUSTER_BUILDPACK, self.cluster_buildpack, None, "lp/cluster-buildpack"),
        ):
            created = await self.create(
                resource,
                {
                    "apiVersion": k.KPACK_API_VERSION,
                    "kind": resource.kind,
                    "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
                    "spec": {"image": f"{PREFIX}{name}"},
                },
            )
            await self.admin.patch_status(
                resource,
                name,
                {
                    "status": {
                        "observedGeneration": created["metadata"]["generation"],
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "buildpacks": [{"id": bp_id, "version": "1.0.0"}],
                    }
                },
                namespace,
            )
        default = {"kind": "ClusterBuilder", "name": self.cluster_builder}
        ready_at_1 = {"conditions": [{"type": "Ready", "status": "True"}], "observedGeneration": 1}
        # Started workloads whose objects the caches lack, so the service confirms with a read:
        await self.in_flight("ghost", "ghost")  # its Image is gone (images get): it begins again
        await self.image("lost", builder=default, status={**ready_at_1, "latestBuildRef": "no-such-build"})
        await self.in_flight("lost", "lost")  # kpack's latest Build is unknown (builds get)
        await self.image(
            "nocb", builder={"kind": "ClusterBuilder", "name": "no-such-cluster-builder"}, status=ready_at_1
        )
        await self.in_flight("nocb", "nocb")  # its ClusterBuilder is unknown (clusterbuilders get)
        await self.image("nob", builder={"kind": "Builder", "name": "no-such-builder"}, status=ready_at_1)
        await self.in_flight("nob", "nob")  # its Builder is unknown (builders get)
        await self.running_build("cancel")  # a cancel is asked for while it runs
        # An Image whose volume cache is smaller than the service's setting, and no StorageClass that can
        # grow it: its volume is replaced (storageclasses list).
        await self.image("resize", builder=default, size="512Mi")

    async def running_build(self, app: str) -> None:
        """A workload whose kpack Build runs in a pod, and a cancel asked for (docs/builds.md): the service
        marks the Build finished (builds/status), deletes its pod and confirms it gone (pods)."""
        await self.image(app, builder={"kind": "ClusterBuilder", "name": self.cluster_builder})
        await self.in_flight(app, app)
        await self.admin.merge_patch(
            r.BUILD_WORKLOAD, app, {"metadata": {"annotations": {k.CANCEL_ANNOTATION: "true"}}}, self.space
        )
        build, pod = f"{app}-build-1", f"{app}-build-1-build-pod"
        await self.create(
            r.BUILD,
            {
                "apiVersion": k.KPACK_API_VERSION,
                "kind": "Build",
                "metadata": {
                    "name": build,
                    "namespace": self.space,
                    "labels": {
                        k.KPACK_IMAGE_LABEL: app,
                        k.KPACK_IMAGE_GENERATION_LABEL: "1",
                        k.KPACK_BUILD_NUMBER_LABEL: "1",
                    },
                },
                "spec": {"tags": [f"{PREFIX}{app}-droplets"]},
            },
        )
        await self.admin.patch_status(
            r.BUILD,
            build,
            {"status": {"conditions": [{"type": "Succeeded", "status": "Unknown"}], "podName": pod}},
            self.space,
        )
        await self.create(
            r.POD,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": self.space},
                "spec": {
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "automountServiceAccountToken": False,
                    "restartPolicy": "Never",
                    "containers": [{"name": "completion", "image": "registry.example/lifecycle"}],
                },
            },
        )

    # ------------------------------------------------------------------ with the service running
    async def drive(self) -> None:
        """Everything else, each strand on its own: a strand whose behaviour is refused stops there."""
        async with anyio.create_task_group() as tg:
            for strand in (
                self.succeed_and_delete,
                self.patch_image,
                self.custom_builders,
                self.resolved_buildpacks,
                self.repeat_event,
            ):
                tg.start_soon(strand)
            await self.workload("resize", "resize")

    async def wait(self, check: Callable[[], Awaitable[Any]], what: str) -> Any:
        return await eventually(check, within=60, what=what)

    async def generation_of(self, name: str) -> str:
        async def labelled() -> str | None:
            obj = await self.get(r.BUILD_WORKLOAD, name)
            return ((obj or {}).get("metadata", {}).get("labels") or {}).get(k.IMAGE_GENERATION_LABEL)

        generation: str = await self.wait(labelled, f"{name} labelled with its Image generation")
        return generation

    async def succeed_and_delete(self) -> None:
        """A build succeeds (droplet read with the space's credentials), then its workload is deleted."""
        await self.workload("ok", "ok")
        generation = await self.generation_of("ok")
        repo = f"{self.registry.host}/droplets/ok"
        metadata = {"processes": [{"type": "web", "command": "run"}]}
        config = {"config": {"Labels": {k.BUILD_METADATA_LABEL: orjson.dumps(metadata).decode()}}}
        digest = await self.images.push_image(f"{repo}:latest", config, [uuid.uuid4().bytes])
        await self.create(
            r.BUILD,
            {
                "apiVersion": k.KPACK_API_VERSION,
                "kind": "Build",
                "metadata": {
                    "name": "ok-build-1",
                    "namespace": self.space,
                    "labels": {
                        k.KPACK_IMAGE_LABEL: "ok",
                        k.KPACK_IMAGE_GENERATION_LABEL: generation,
                        k.KPACK_BUILD_NUMBER_LABEL: "1",
                        k.BUILD_WORKLOAD_LABEL: "ok",  # kpack copies the Image's labels
                    },
                },
                "spec": {"tags": [f"{PREFIX}ok-droplets"]},
            },
        )
        await self.admin.patch_status(
            r.BUILD,
            "ok-build-1",
            {
                "status": {
                    "conditions": [{"type": "Succeeded", "status": "True"}],
                    "latestImage": f"{repo}@{digest}",
                    "stack": {"id": "io.buildpacks.stacks.jammy"},
                }
            },
            self.space,
        )
        await self.wait(lambda: self.succeeded("ok", "True"), "ok Succeeded=True")
        await self.wait(lambda: self.build_finalized("ok-build-1"), "the Build's finalizer")
        await self.admin.delete(r.BUILD_WORKLOAD, "ok", self.space)

    async def build_finalized(self, name: str) -> bool:
        build = await self.get(r.BUILD, name)
        return k.KPACK_BUILD_FINALIZER in ((build or {}).get("metadata", {}).get("finalizers") or ())

    async def succeeded(self, name: str, status: str) -> Obj | None:
        obj = await self.get(r.BUILD_WORKLOAD, name)
        for condition in ((obj or {}).get("status") or {}).get("conditions") or ():
            if condition["type"] == k.SUCCEEDED and condition["status"] == status:
                return dict(condition)
        return None

    async def patch_image(self) -> None:
        """The app's second workload, with another source image: the Image follows it."""
        await self.workload("two-a", "two")
        await self.wait(lambda: self.get(r.IMAGE, "two"), "the Image of app two")
        await self.workload("two-b", "two", source="PACKAGE_IMAGE_2")

    async def custom_builders(self) -> None:
        """Two apps name the same buildpacks: one Builder, which records both workloads."""
        await self.workload("custom-a", "custom-a", buildpacks=["repo/my-buildpack"])
        await self.wait(
            lambda: self.get(r.BUILDER, k.builder_name(["repo/my-buildpack"])), "the custom Builder"
        )
        await self.workload("custom-b", "custom-b", buildpacks=["repo/my-buildpack"])

    async def resolved_buildpacks(self) -> None:
        """A workload names buildpacks of a namespace Buildpack and of a ClusterBuildpack."""
        await self.workload("resolved", "resolved", buildpacks=RESOLVED)

    async def repeat_event(self) -> None:
        """The same outcome twice on one workload (its conditions cleared by hand in between)."""
        await self.workload("again", "again")
        await self.wait(lambda: self.succeeded("again", "Unknown"), "again Succeeded=Unknown")
        await self.wait(lambda: self.event_count("again", k.BUILD_RUNNING), "the BuildRunning event")
        await self.admin.patch_status(r.BUILD_WORKLOAD, "again", {"status": {"conditions": []}}, self.space)

    async def event_count(self, workload: str, reason: str) -> int:
        events = (await self.admin.list(r.EVENT, self.space))["items"]
        return sum(
            e.get("count") or 1
            for e in events
            if e["involvedObject"]["name"] == workload and e["reason"] == reason
        )

    # ------------------------------------------------------------------ every behaviour, done
    async def verify(self) -> None:
        """What the chart's full RBAC must let the service do: each behaviour of BEHAVIOURS."""
        image_of = self.get
        await self.wait(lambda: self.get_deleted(r.BUILD_WORKLOAD, "ok"), "ok finalized and gone")
        await self.wait(lambda: self.get_deleted(r.BUILD, "ok-build-1"), "ok's Build deleted")

        async def patched() -> bool:
            image = await image_of(r.IMAGE, "two")
            return ((image or {}).get("spec") or {}).get("source", {}).get("registry", {}).get(
                "image"
            ) == "PACKAGE_IMAGE_2"

        await self.wait(patched, "app two's Image follows its second workload")

        async def owned_twice() -> bool:
            builder = await self.get(r.BUILDER, k.builder_name(["repo/my-buildpack"]))
            owners = {o["name"] for o in ((builder or {}).get("metadata") or {}).get("ownerReferences") or ()}
            return owners == {"custom-a", "custom-b"}

        await self.wait(owned_twice, "the custom Builder owned by both workloads")
        await self.wait(
            lambda: self.get(r.BUILDER, k.builder_name(RESOLVED)), "the Builder of resolved buildpacks"
        )

        async def resized() -> bool:
            image = await self.get(r.IMAGE, "resize")
            return ((image or {}).get("spec") or {}).get("cache", {}).get("volume", {}).get(
                "size"
            ) == "1024Mi"

        await self.wait(resized, "app resize's Image with the service's cache size")
        await self.wait(lambda: self.counted("again"), "the repeated BuildRunning event counted twice")
        await self.wait(lambda: self.get(r.IMAGE, "ghost"), "ghost's Image made again")
        for name in ("lost", "nocb", "nob"):
            await self.wait(
                lambda name=name: self.ready_says(name, "not found"), f"{name}: its object confirmed missing"
            )

        async def mirrored() -> bool:
            info = await self.admin.get(r.BUILDER_INFO, k.BUILDER_INFO_NAME, self.root)
            return any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (info.get("status") or {}).get("conditions") or ()
            )

        await self.wait(mirrored, "the BuilderInfo Ready")
        await self.wait(
            lambda: self.reason_is("cancel", "False", k.BUILD_CANCELED),
            "cancel Succeeded=False/BuildCanceled",
        )
        await self.wait(lambda: self.get_deleted(r.POD, "cancel-build-1-build-pod"), "the canceled pod gone")

    async def reason_is(self, name: str, status: str, reason: str) -> bool:
        condition = await self.succeeded(name, status)
        return condition is not None and condition.get("reason") == reason

    async def get_deleted(self, resource: r.Resource, name: str) -> bool:
        return await self.get(resource, name) is None

    async def counted(self, workload: str) -> bool:
        return await self.event_count(workload, k.BUILD_RUNNING) >= 2

    async def ready_says(self, name: str, text: str) -> bool:
        """Whether a condition of the workload (Ready for an error, Succeeded for a failure) says ``text``."""
        obj = await self.get(r.BUILD_WORKLOAD, name)
        conditions = ((obj or {}).get("status") or {}).get("conditions") or ()
        return any(
            text in (c.get("message") or "").lower()
            for c in conditions
            if c["type"] != k.SUCCEEDED or c["status"] == "False"
        )

    async def cleanup(self) -> None:
        with anyio.CancelScope(shield=True):
            for resource, name in (
                (r.NAMESPACE, self.space),
                (r.NAMESPACE, self.root),
                (r.CLUSTER_BUILDER, self.cluster_builder),
                (r.CLUSTER_BUILDPACK, self.cluster_buildpack),
            ):
                with contextlib.suppress(errors.NotFound):
                    await self.admin.delete(resource, name)


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture
async def admin(real_control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    async with KubeClient(await load_kubeconfig(str(real_control_plane.kubeconfig)), timeout=10) as client:
        await apply_crds(client, read_documents(bundled_crd_dirs()))
        yield client


@asynccontextmanager
async def the_service_as(identity: Identity, scenario: Scenario) -> AsyncIterator[None]:
    """The service (as ``run`` assembles it) with the identity's token, electing a leader in the release
    namespace, for the block."""
    config = service_config(
        cluster_builder_name=scenario.cluster_builder,
        builder_service_account=SERVICE_ACCOUNT,
        container_repository_prefix=PREFIX,
        build_cache_mb=1024,
        cf_root_namespace=scenario.root,
        leader_elect=True,
        leader_election_namespace=identity.namespace,
        leader_election_id=f"lease-{uuid.uuid4().hex[:6]}",
        lease_duration=4.0,
        renew_deadline=3.0,
        retry_period=0.5,
    )
    async with (
        KubeClient(identity.cluster, timeout=5.0) as client,
        running_controllers(client, config, scenario.images),
    ):
        yield


@pytest.fixture
async def scenario(admin: KubeClient) -> AsyncIterator[Scenario]:
    async with running_registry() as registry, RegistryClient(timeout=5.0) as images:
        s = Scenario(admin, registry, images)
        try:
            await s.prepare()
            yield s
        finally:
            await s.cleanup()


async def chart_identity(
    admin: KubeClient, cp: ControlPlane, missing: Permission | None = None
) -> tuple[Identity, list[Obj]]:
    documents = render_chart(release_name(), f"lp-release-{uuid.uuid4().hex[:6]}")
    granted = permissions(documents)
    if missing is not None:
        documents = without(documents, missing)
    identity = await install_identity(admin, cp, documents)
    await wait_authorized(admin, identity, granted - {missing} if missing else granted, missing)
    return identity, documents


# ---------------------------------------------------------------------------------------- the tests
async def test_the_chart_grants_what_every_behaviour_needs(
    admin: KubeClient, real_control_plane: ControlPlane, scenario: Scenario
) -> None:
    identity, documents = await chart_identity(admin, real_control_plane)
    try:
        with captured_logs() as logs:
            async with the_service_as(identity, scenario):
                await scenario.drive()
                await scenario.verify()
        assert logs.find("is forbidden") is None, logs.find("is forbidden")
    finally:
        await remove_identity(admin, identity, documents)


@pytest.mark.parametrize("permission", list(BEHAVIOURS), ids=lambda p: f"{p[2]}-{p[3]}")
async def test_without_one_permission_its_behaviour_fails_with_403(
    admin: KubeClient, real_control_plane: ControlPlane, scenario: Scenario, permission: Permission
) -> None:
    identity, documents = await chart_identity(admin, real_control_plane, permission)
    refusal = Refusal(permission, identity.user)
    try:
        with captured_logs() as logs:
            async with the_service_as(identity, scenario), anyio.create_task_group() as tg:
                tg.start_soon(scenario.drive)  # strands the refusal blocks never finish: cancelled below
                refused = await eventually(
                    lambda: logs.find(refusal.first), within=60, what=f"403 for {BEHAVIOURS[permission]}"
                )
                tg.cancel_scope.cancel()
        assert "forbidden" in refused.lower(), refused
        # No other permission was refused: the chart grants each of them, and the removed one alone fails.
        # (Other refusals are not about permissions: e.g. Events in an earlier test's namespace, which
        # kube-controller-manager is still emptying, are refused because the namespace is terminating.)
        about_permissions = (f'User "{identity.user}" cannot', OWNER_REFERENCE_REFUSAL)
        others = [
            line
            for line in logs.lines
            if any(text in line for text in about_permissions) and not refusal.explains(line)
        ]
        assert not others, others[:3]
    finally:
        await remove_identity(admin, identity, documents)
