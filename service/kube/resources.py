"""Descriptors of the API resources the service and its simulated cluster use."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """``plural.group`` as kube-apiserver names the resource in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        parts = [self.prefix]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
            if subresource:
                parts.append(subresource)
        return "/".join(parts)


KORIFI = "korifi.cloudfoundry.org"
KPACK = "kpack.io"

BUILD_WORKLOAD = Resource(KORIFI, "v1alpha1", "buildworkloads", "BuildWorkload", True, True, "buildworkload")
BUILDER_INFO = Resource(KORIFI, "v1alpha1", "builderinfos", "BuilderInfo", True, True, "builderinfo")

IMAGE = Resource(KPACK, "v1alpha2", "images", "Image", True, True, "image", ("cnbimage", "cnbimages"))
BUILD = Resource(
    KPACK, "v1alpha2", "builds", "Build", True, True, "build", ("cnbbuild", "cnbbuilds", "bld", "blds")
)
BUILDER = Resource(KPACK, "v1alpha2", "builders", "Builder", True, True, "builder", ("bldr", "bldrs"))
CLUSTER_BUILDER = Resource(
    KPACK,
    "v1alpha2",
    "clusterbuilders",
    "ClusterBuilder",
    False,
    True,
    "clusterbuilder",
    ("clstbldr", "clstbldrs"),
)
CLUSTER_STORE = Resource(
    KPACK, "v1alpha2", "clusterstores", "ClusterStore", False, True, "clusterstore", ("clststr", "clststrs")
)
CLUSTER_STACK = Resource(
    KPACK, "v1alpha2", "clusterstacks", "ClusterStack", False, True, "clusterstack", ("clststk", "clststks")
)
CLUSTER_BUILDPACK = Resource(
    KPACK,
    "v1alpha2",
    "clusterbuildpacks",
    "ClusterBuildpack",
    False,
    True,
    "clusterbuildpack",
    ("clstbp", "clstbps"),
)
BUILDPACK = Resource(KPACK, "v1alpha2", "buildpacks", "Buildpack", True, True, "buildpack", ("bp", "bps"))

NAMESPACE = Resource("", "v1", "namespaces", "Namespace", False, True, "namespace", ("ns",))
SERVICE_ACCOUNT = Resource(
    "", "v1", "serviceaccounts", "ServiceAccount", True, False, "serviceaccount", ("sa",)
)
SECRET = Resource("", "v1", "secrets", "Secret", True, False, "secret")
CONFIG_MAP = Resource("", "v1", "configmaps", "ConfigMap", True, False, "configmap", ("cm",))
EVENT = Resource("", "v1", "events", "Event", True, False, "event", ("ev",))
POD = Resource("", "v1", "pods", "Pod", True, True, "pod", ("po",))
STORAGE_CLASS = Resource(
    "storage.k8s.io", "v1", "storageclasses", "StorageClass", False, False, "storageclass", ("sc",)
)
LEASE = Resource("coordination.k8s.io", "v1", "leases", "Lease", True, False, "lease")
CUSTOM_RESOURCE_DEFINITION = Resource(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    "CustomResourceDefinition",
    False,
    True,
    "customresourcedefinition",
    ("crd", "crds"),
)

# Reviews: created (and answered) only, never stored; cluster-scoped. Not served by the emulator.
TOKEN_REVIEW = Resource(
    "authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, False, "tokenreview"
)
SUBJECT_ACCESS_REVIEW = Resource(
    "authorization.k8s.io",
    "v1",
    "subjectaccessreviews",
    "SubjectAccessReview",
    False,
    False,
    "subjectaccessreview",
)

BUILT_IN: tuple[Resource, ...] = (
    NAMESPACE,
    SERVICE_ACCOUNT,
    SECRET,
    CONFIG_MAP,
    EVENT,
    STORAGE_CLASS,
    LEASE,
    CUSTOM_RESOURCE_DEFINITION,
)
CUSTOM: tuple[Resource, ...] = (
    BUILD_WORKLOAD,
    BUILDER_INFO,
    IMAGE,
    BUILD,
    BUILDER,
    CLUSTER_BUILDER,
    CLUSTER_STORE,
    CLUSTER_STACK,
    CLUSTER_BUILDPACK,
    BUILDPACK,
)
