"""kpack's ``kpack.io/v1alpha2`` Go types (release 0.17.1), declared for the JSON round-trip model.
(One module, past 600 lines, because it mirrors one Go package type for type.)

Field names, order, ``omitempty`` and Go type names are copied from kpack's ``pkg/apis`` and the
``k8s.io/api/core/v1`` types it embeds, because they decide what the webhook's round trip adds, drops and
says in a decode error. Two simplifications: ``metadata`` is kept as the apiserver stored it (the round
trip only adds ``creationTimestamp: null``, which the apiserver overwrites), and ``affinity`` is opaque.
"""

from __future__ import annotations

from service.kube.resources import KPACK, Resource
from simcluster.kpack.gotypes import (
    Any_,
    Bool,
    Field,
    GoType,
    Int,
    Map,
    Ptr,
    Quantity,
    Slice,
    String,
    Struct,
    Time,
    fields,
)

SOURCE_RESOLVER_RESOURCE = Resource(
    KPACK, "v1alpha2", "sourceresolvers", "SourceResolver", True, True, "sourceresolver"
)
CLUSTER_LIFECYCLE_RESOURCE = Resource(
    KPACK, "v1alpha2", "clusterlifecycles", "ClusterLifecycle", False, True, "clusterlifecycle"
)

S = String()
I64 = Int(64)

# ------------------------------------------------------------------ k8s.io/api/core/v1
OBJECT_REFERENCE = Struct(
    "v1.ObjectReference",
    fields(
        ("kind", S, True),
        ("namespace", S, True),
        ("name", S, True),
        ("uid", String("types.UID"), True),
        ("apiVersion", S, True),
        ("resourceVersion", S, True),
        ("fieldPath", S, True),
    ),
)
LOCAL_OBJECT_REFERENCE = Struct("v1.LocalObjectReference", fields(("name", S, True)))
_KEY_SELECTOR = fields(("name", S, True), ("key", S), ("optional", Ptr(Bool()), True))
ENV_VAR_SOURCE = Struct(
    "v1.EnvVarSource",
    fields(
        (
            "fieldRef",
            Ptr(Struct("v1.ObjectFieldSelector", fields(("apiVersion", S, True), ("fieldPath", S)))),
            True,
        ),
        (
            "resourceFieldRef",
            Ptr(
                Struct(
                    "v1.ResourceFieldSelector",
                    fields(("containerName", S, True), ("resource", S), ("divisor", Quantity(), True)),
                )
            ),
            True,
        ),
        ("configMapKeyRef", Ptr(Struct("v1.ConfigMapKeySelector", list(_KEY_SELECTOR))), True),
        ("secretKeyRef", Ptr(Struct("v1.SecretKeySelector", list(_KEY_SELECTOR))), True),
        (
            "fileKeyRef",
            Ptr(
                Struct(
                    "v1.FileKeySelector",
                    fields(("volumeName", S), ("path", S), ("key", S), ("optional", Ptr(Bool()), True)),
                )
            ),
            True,
        ),
    ),
)
ENV_VAR = Struct(
    "v1.EnvVar", fields(("name", S), ("value", S, True), ("valueFrom", Ptr(ENV_VAR_SOURCE), True))
)
RESOURCE_LIST = Map(Quantity(), "v1.ResourceList")
RESOURCE_REQUIREMENTS = Struct(
    "v1.ResourceRequirements",
    fields(
        ("limits", RESOURCE_LIST, True),
        ("requests", RESOURCE_LIST, True),
        ("claims", Slice(Struct("v1.ResourceClaim", fields(("name", S), ("request", S, True)))), True),
    ),
)
TOLERATION = Struct(
    "v1.Toleration",
    fields(
        ("key", S, True),
        ("operator", String("v1.TolerationOperator"), True),
        ("value", S, True),
        ("effect", String("v1.TaintEffect"), True),
        ("tolerationSeconds", Ptr(I64), True),
    ),
)
CONTAINER_STATE = Struct(
    "v1.ContainerState",
    fields(
        (
            "waiting",
            Ptr(Struct("v1.ContainerStateWaiting", fields(("reason", S, True), ("message", S, True)))),
            True,
        ),
        ("running", Ptr(Struct("v1.ContainerStateRunning", fields(("startedAt", Time(), True)))), True),
        (
            "terminated",
            Ptr(
                Struct(
                    "v1.ContainerStateTerminated",
                    fields(
                        ("exitCode", Int(32)),
                        ("signal", Int(32), True),
                        ("reason", S, True),
                        ("message", S, True),
                        ("startedAt", Time(), True),
                        ("finishedAt", Time(), True),
                        ("containerID", S, True),
                    ),
                )
            ),
            True,
        ),
    ),
)

# ------------------------------------------------------------------ kpack core/v1alpha1
CONDITION = Struct(
    "v1alpha1.Condition",
    fields(
        ("type", String("v1alpha1.ConditionType")),
        ("status", String("v1.ConditionStatus")),
        ("severity", String("v1alpha1.ConditionSeverity"), True),
        ("lastTransitionTime", Time(), True),
        ("reason", S, True),
        ("message", S, True),
    ),
)
STATUS = fields(
    ("observedGeneration", I64, True), ("conditions", Slice(CONDITION, "v1alpha1.Conditions"), True)
)
SOURCE_CONFIG = Struct(
    "v1alpha1.SourceConfig",
    fields(
        (
            "git",
            Ptr(
                Struct(
                    "v1alpha1.Git",
                    fields(("url", S), ("revision", S), ("initializeSubmodules", Bool(), True)),
                )
            ),
            True,
        ),
        (
            "blob",
            Ptr(
                Struct("v1alpha1.Blob", fields(("url", S), ("auth", S, True), ("stripComponents", I64, True)))
            ),
            True,
        ),
        (
            "registry",
            Ptr(
                Struct(
                    "v1alpha1.Registry",
                    fields(("image", S), ("imagePullSecrets", Slice(LOCAL_OBJECT_REFERENCE), True)),
                )
            ),
            True,
        ),
        ("subPath", S, True),
    ),
)
RESOLVED_SOURCE_CONFIG = Struct(
    "v1alpha1.ResolvedSourceConfig",
    fields(
        (
            "git",
            Ptr(
                Struct(
                    "v1alpha1.ResolvedGitSource",
                    fields(
                        ("url", S),
                        ("revision", S),
                        ("subPath", S, True),
                        ("type", String("v1alpha1.GitSourceKind")),
                        ("initializeSubmodules", Bool(), True),
                    ),
                )
            ),
            True,
        ),
        (
            "blob",
            Ptr(
                Struct(
                    "v1alpha1.ResolvedBlobSource",
                    fields(
                        ("url", S), ("auth", S, True), ("subPath", S, True), ("stripComponents", I64, True)
                    ),
                )
            ),
            True,
        ),
        (
            "registry",
            Ptr(
                Struct(
                    "v1alpha1.ResolvedRegistrySource",
                    fields(
                        ("image", S),
                        ("subPath", S, True),
                        ("imagePullSecrets", Slice(LOCAL_OBJECT_REFERENCE), True),
                    ),
                )
            ),
            True,
        ),
    ),
)
CNB_BINDING = Struct(
    "v1alpha1.CNBBinding",
    fields(
        ("name", S, True),
        ("metadataRef", Ptr(LOCAL_OBJECT_REFERENCE), True),
        ("secretRef", Ptr(LOCAL_OBJECT_REFERENCE), True),
    ),
)
NOTARY_CONFIG = Struct(
    "v1alpha1.NotaryConfig",
    fields(
        (
            "v1",
            Ptr(
                Struct(
                    "v1alpha1.NotaryV1Config",
                    fields(
                        ("url", S), ("secretRef", Struct("v1alpha1.NotarySecretRef", fields(("name", S))))
                    ),
                )
            ),
            True,
        )
    ),
)
BUILDPACK_METADATA = Struct(
    "v1alpha1.BuildpackMetadata", fields(("id", S), ("version", S), ("homepage", S, True))
)
BUILD_STACK = Struct("v1alpha1.BuildStack", fields(("runImage", S, True), ("id", S, True)))
BUILDPACK_INFO = fields(("id", S), ("version", S, True))
BUILDPACK_REF = Struct("v1alpha1.BuildpackRef", fields(BUILDPACK_INFO, ("optional", Bool(), True)))
ORDER_ENTRY = Struct("v1alpha1.OrderEntry", fields(("group", Slice(BUILDPACK_REF), True)))
BUILDPACK_STATUS = Struct(
    "v1alpha1.BuildpackStatus",
    fields(
        BUILDPACK_INFO,
        (
            "buildpackage",
            Struct(
                "v1alpha1.BuildpackageInfo",
                fields(("id", S, True), ("version", S, True), ("homepage", S, True)),
            ),
            True,
        ),
        ("storeImage", Struct("v1alpha1.ImageSource", fields(("image", S, True))), True),
        ("diffId", S, True),
        ("digest", S, True),
        ("size", I64, True),
        ("api", S, True),
        ("homepage", S, True),
        ("order", Slice(ORDER_ENTRY), True),
        (
            "stacks",
            Slice(Struct("v1alpha1.BuildpackStack", fields(("id", S), ("mixins", Slice(S), True)))),
            True,
        ),
    ),
)
COSIGN_CONFIG = Struct(
    "v1alpha2.CosignConfig",
    fields(
        (
            "annotations",
            Slice(Struct("v1alpha2.CosignAnnotation", fields(("name", S, True), ("value", S, True)))),
            True,
        )
    ),
)
SERVICES = Slice(OBJECT_REFERENCE, "v1alpha2.Services")
CNB_BINDINGS = Slice(CNB_BINDING, "v1alpha1.CNBBindings")


def _top(go_name: str, spec: GoType, status: GoType) -> Struct:
    return Struct(
        go_name,
        [
            Field("kind", S, True),
            Field("apiVersion", S, True),
            Field("metadata", Any_()),
            Field("spec", spec),
            Field("status", status),
        ],
    )


# ------------------------------------------------------------------ Image
IMAGE_BUILD = Struct(
    "v1alpha2.ImageBuild",
    fields(
        ("services", SERVICES, True),
        ("cnbBindings", CNB_BINDINGS, True),
        ("env", Slice(ENV_VAR), True),
        ("resources", RESOURCE_REQUIREMENTS, True),
        ("tolerations", Slice(TOLERATION), True),
        ("nodeSelector", Map(S), True),
        ("affinity", Any_(), True),
        ("runtimeClassName", Ptr(S), True),
        ("schedulerName", S, True),
        ("buildTimeout", Ptr(I64), True),
        ("creationTime", S, True),
    ),
)
IMAGE_CACHE_CONFIG = Struct(
    "v1alpha2.ImageCacheConfig",
    fields(
        (
            "volume",
            Ptr(
                Struct(
                    "v1alpha2.ImagePersistentVolumeCache",
                    fields(("size", Ptr(Quantity()), True), ("storageClassName", S, True)),
                )
            ),
            True,
        ),
        ("registry", Ptr(Struct("v1alpha2.RegistryCache", fields(("tag", S)))), True),
    ),
)
IMAGE_SPEC = Struct(
    "v1alpha2.ImageSpec",
    fields(
        ("tag", S),
        ("builder", OBJECT_REFERENCE, True),
        ("serviceAccountName", S, True),
        ("source", SOURCE_CONFIG),
        ("cache", Ptr(IMAGE_CACHE_CONFIG), True),
        ("failedBuildHistoryLimit", Ptr(I64), True),
        ("successBuildHistoryLimit", Ptr(I64), True),
        ("imageTaggingStrategy", String("v1alpha1.ImageTaggingStrategy"), True),
        ("projectDescriptorPath", S, True),
        ("build", Ptr(IMAGE_BUILD), True),
        ("notary", Ptr(NOTARY_CONFIG), True),
        ("cosign", Ptr(COSIGN_CONFIG), True),
        ("defaultProcess", S, True),
        ("additionalTags", Slice(S), True),
    ),
)
IMAGE_STATUS = Struct(
    "v1alpha2.ImageStatus",
    fields(
        STATUS,
        ("latestBuildRef", S, True),
        ("latestBuildImageGeneration", I64, True),
        ("latestImage", S, True),
        ("latestStack", S, True),
        ("buildCounter", I64, True),
        ("buildCacheName", S, True),
        ("latestBuildReason", S, True),
    ),
)
IMAGE = _top("v1alpha2.Image", IMAGE_SPEC, IMAGE_STATUS)

# ------------------------------------------------------------------ Build
BUILD_SPEC = Struct(
    "v1alpha2.BuildSpec",
    fields(
        ("tags", Slice(S), True),
        (
            "builder",
            Struct(
                "v1alpha1.BuildBuilderSpec",
                fields(
                    ("image", S, True),
                    ("imagePullSecrets", Slice(LOCAL_OBJECT_REFERENCE), True),
                    ("ref", Ptr(OBJECT_REFERENCE), True),
                ),
            ),
            True,
        ),
        ("serviceAccountName", S, True),
        ("source", SOURCE_CONFIG),
        (
            "cache",
            Ptr(
                Struct(
                    "v1alpha2.BuildCacheConfig",
                    fields(
                        (
                            "volume",
                            Ptr(
                                Struct(
                                    "v1alpha2.BuildPersistentVolumeCache",
                                    fields(("persistentVolumeClaimName", S, True)),
                                )
                            ),
                            True,
                        ),
                        ("registry", Ptr(Struct("v1alpha2.RegistryCache", fields(("tag", S)))), True),
                    ),
                )
            ),
            True,
        ),
        ("runImage", Struct("v1alpha2.BuildSpecImage", fields(("image", S, True))), True),
        ("activeDeadlineSeconds", Ptr(I64), True),
        ("services", SERVICES, True),
        ("cnbBindings", CNB_BINDINGS, True),
        ("env", Slice(ENV_VAR), True),
        ("projectDescriptorPath", S, True),
        ("resources", RESOURCE_REQUIREMENTS, True),
        (
            "lastBuild",
            Ptr(
                Struct(
                    "v1alpha2.LastBuild",
                    fields(
                        ("image", S, True),
                        ("cache", Struct("v1alpha2.BuildCache", fields(("image", S, True))), True),
                        ("stackId", S, True),
                    ),
                )
            ),
            True,
        ),
        ("notary", Ptr(NOTARY_CONFIG), True),
        ("cosign", Ptr(COSIGN_CONFIG), True),
        ("defaultProcess", S, True),
        ("tolerations", Slice(TOLERATION), True),
        ("nodeSelector", Map(S), True),
        ("affinity", Any_(), True),
        ("runtimeClassName", Ptr(S), True),
        ("schedulerName", S, True),
        ("priorityClassName", S, True),
        ("creationTime", S, True),
    ),
)
BUILD_STATUS = Struct(
    "v1alpha2.BuildStatus",
    fields(
        STATUS,
        ("buildMetadata", Slice(BUILDPACK_METADATA, "v1alpha1.BuildpackMetadataList"), True),
        ("stack", BUILD_STACK, True),
        ("lifecycleVersion", S),
        ("latestImage", S, True),
        ("latestCacheImage", S, True),
        ("latestAttestationImage", S, True),
        ("podName", S, True),
        ("stepStates", Slice(CONTAINER_STATE), True),
        ("stepsCompleted", Slice(S), True),
    ),
)
BUILD = _top("v1alpha2.Build", BUILD_SPEC, BUILD_STATUS)

# ------------------------------------------------------------------ Builder, ClusterBuilder
BUILDER_BUILDPACK_REF = Struct(
    "v1alpha2.BuilderBuildpackRef",
    fields(
        BUILDPACK_INFO,
        ("optional", Bool(), True),
        OBJECT_REFERENCE.fields,
        ("image", S, True),
    ),
)
BUILDER_SPEC = fields(
    ("tag", S, True),
    ("stack", OBJECT_REFERENCE, True),
    ("lifecycle", OBJECT_REFERENCE, True),
    ("store", OBJECT_REFERENCE, True),
    (
        "order",
        Slice(Struct("v1alpha2.BuilderOrderEntry", fields(("group", Slice(BUILDER_BUILDPACK_REF), True)))),
        True,
    ),
    ("additionalLabels", Map(S), True),
)
API_VERSIONS = Struct(
    "v1alpha2.APIVersions",
    fields(("deprecated", Slice(S, "v1alpha2.APISet")), ("supported", Slice(S, "v1alpha2.APISet"))),
)
RESOLVED_LIFECYCLE = fields(
    (
        "image",
        Struct("v1alpha2.ClusterLifecycleStatusImage", fields(("latestImage", S, True), ("image", S, True))),
        True,
    ),
    ("version", S, True),
    ("api", Struct("v1alpha2.LifecycleAPI", fields(("buildpack", S, True), ("platform", S, True))), True),
    (
        "apis",
        Struct("v1alpha2.LifecycleAPIs", fields(("buildpack", API_VERSIONS), ("platform", API_VERSIONS))),
        True,
    ),
)
BUILDER_STATUS = Struct(
    "v1alpha2.BuilderStatus",
    fields(
        STATUS,
        ("builderMetadata", Slice(BUILDPACK_METADATA, "v1alpha1.BuildpackMetadataList"), True),
        ("order", Slice(ORDER_ENTRY), True),
        ("stack", BUILD_STACK, True),
        ("lifecycle", Struct("v1alpha2.ResolvedClusterLifecycle", RESOLVED_LIFECYCLE), True),
        ("latestImage", S, True),
        ("observedStackGeneration", I64, True),
        ("observedStoreGeneration", I64, True),
        ("os", S, True),
        (
            "signaturePaths",
            Slice(Struct("v1alpha2.CosignSignature", fields(("signingSecret", S), ("targetDigest", S)))),
            True,
        ),
    ),
)
BUILDER = _top(
    "v1alpha2.Builder",
    Struct(
        "v1alpha2.NamespacedBuilderSpec",
        fields(BUILDER_SPEC, ("serviceAccountName", S, True), ("serviceAccount", S, True)),
    ),
    BUILDER_STATUS,
)
CLUSTER_BUILDER = _top(
    "v1alpha2.ClusterBuilder",
    Struct(
        "v1alpha2.ClusterBuilderSpec", fields(BUILDER_SPEC, ("serviceAccountRef", OBJECT_REFERENCE, True))
    ),
    BUILDER_STATUS,
)

# ------------------------------------------------------------------ stacks, stores, buildpacks, lifecycles
_STACK_IMAGE = Struct("v1alpha2.ClusterStackSpecImage", fields(("image", S, True)))
_STACK_STATUS_IMAGE = Struct(
    "v1alpha2.ClusterStackStatusImage", fields(("latestImage", S, True), ("image", S, True))
)
CLUSTER_STACK_SPEC = Struct(
    "v1alpha2.ClusterStackSpec",
    fields(
        ("id", S, True),
        ("buildImage", _STACK_IMAGE, True),
        ("runImage", _STACK_IMAGE, True),
        ("serviceAccountRef", Ptr(OBJECT_REFERENCE), True),
    ),
)
CLUSTER_STACK = _top(
    "v1alpha2.ClusterStack",
    CLUSTER_STACK_SPEC,
    Struct(
        "v1alpha2.ClusterStackStatus",
        fields(
            STATUS,
            ("id", S, True),
            ("buildImage", _STACK_STATUS_IMAGE, True),
            ("runImage", _STACK_STATUS_IMAGE, True),
            ("mixins", Slice(S), True),
            ("userId", Int(0), True),
            ("groupId", Int(0), True),
        ),
    ),
)
_IMAGE_SOURCE = fields(("image", S, True))
_BUILDPACKS_STATUS = fields(STATUS, ("buildpacks", Slice(BUILDPACK_STATUS), True))
CLUSTER_STORE = _top(
    "v1alpha2.ClusterStore",
    Struct(
        "v1alpha2.ClusterStoreSpec",
        fields(
            ("sources", Slice(Struct("v1alpha1.ImageSource", list(_IMAGE_SOURCE))), True),
            ("serviceAccountRef", Ptr(OBJECT_REFERENCE), True),
        ),
    ),
    Struct("v1alpha2.ClusterStoreStatus", list(_BUILDPACKS_STATUS)),
)
BUILDPACK = _top(
    "v1alpha2.Buildpack",
    Struct("v1alpha2.BuildpackSpec", fields(_IMAGE_SOURCE, ("serviceAccountName", S, True))),
    Struct("v1alpha2.BuildpackStatus", list(_BUILDPACKS_STATUS)),
)
CLUSTER_BUILDPACK = _top(
    "v1alpha2.ClusterBuildpack",
    Struct(
        "v1alpha2.ClusterBuildpackSpec",
        fields(_IMAGE_SOURCE, ("serviceAccountRef", Ptr(OBJECT_REFERENCE), True)),
    ),
    Struct("v1alpha2.ClusterBuildpackStatus", list(_BUILDPACKS_STATUS)),
)
CLUSTER_LIFECYCLE = _top(
    "v1alpha2.ClusterLifecycle",
    Struct(
        "v1alpha2.ClusterLifecycleSpec",
        fields(_IMAGE_SOURCE, ("serviceAccountRef", Ptr(OBJECT_REFERENCE), True)),
    ),
    Struct("v1alpha2.ClusterLifecycleStatus", fields(STATUS, RESOLVED_LIFECYCLE)),
)
SOURCE_RESOLVER_SPEC = Struct(
    "v1alpha2.SourceResolverSpec", fields(("serviceAccount", S, True), ("source", SOURCE_CONFIG))
)
SOURCE_RESOLVER = _top(
    "v1alpha2.SourceResolver",
    SOURCE_RESOLVER_SPEC,
    Struct("v1alpha2.SourceResolverStatus", fields(STATUS, ("source", RESOLVED_SOURCE_CONFIG, True))),
)

# The kinds kpack's webhooks admit, by plural.
ADMITTED: dict[str, Struct] = {
    "images": IMAGE,
    "builds": BUILD,
    "builders": BUILDER,
    "clusterbuilders": CLUSTER_BUILDER,
    "clusterstacks": CLUSTER_STACK,
    "clusterstores": CLUSTER_STORE,
    "buildpacks": BUILDPACK,
    "clusterbuildpacks": CLUSTER_BUILDPACK,
    "clusterlifecycles": CLUSTER_LIFECYCLE,
}
