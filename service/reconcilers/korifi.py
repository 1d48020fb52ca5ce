"""The strings Korifi and kpack agree on: labels, annotations, finalizers, condition types, reasons and
messages. They are part of the contract with Korifi's CF API and controllers, so they are spelt exactly as
Korifi spells them (reference: korifi.md §2) and live in one place."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

# --------------------------------------------------------------------------- names
BUILDER_NAME = "kpack-image-builder"  # spec.builderName this service acts on; also the BuilderInfo's name
BUILDER_INFO_NAME = BUILDER_NAME

# --------------------------------------------------------------------------- labels
APP_GUID_LABEL = "korifi.cloudfoundry.org/app-guid"
BUILD_GUID_LABEL = "korifi.cloudfoundry.org/build-guid"
IMAGE_GENERATION_LABEL = "korifi.cloudfoundry.org/kpack-image-generation"
BUILD_WORKLOAD_LABEL = "korifi.cloudfoundry.org/build-workload-name"

KPACK_IMAGE_LABEL = "image.kpack.io/image"
KPACK_IMAGE_GENERATION_LABEL = "image.kpack.io/imageGeneration"
KPACK_BUILD_NUMBER_LABEL = "image.kpack.io/buildNumber"

# --------------------------------------------------------------------------- annotations
BUILD_NEEDED_ANNOTATION = "image.kpack.io/additionalBuildNeeded"
KPACK_REASON_ANNOTATION = "image.kpack.io/reason"  # why kpack built: comma-joined, e.g. BUILDPACK,STACK
DEFAULT_STORAGE_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
BUILD_METADATA_LABEL = "io.buildpacks.build.metadata"  # an OCI image config label, not a Kubernetes one

# This service's own annotations (docs/builds.md).
CANCEL_ANNOTATION = "kpack-image-builder.korifi.cloudfoundry.org/cancel"  # on a workload: "true" cancels
STOPPED_FOR_ANNOTATION = "kpack-image-builder.korifi.cloudfoundry.org/stopped-for"  # on a Build we stopped
IMAGE_UID_ANNOTATION = (
    "kpack-image-builder.korifi.cloudfoundry.org/image-uid"  # the Image a workload began on
)

# --------------------------------------------------------------------------- finalizers
BUILD_WORKLOAD_FINALIZER = "kpack-image-builder.korifi.cloudfoundry.org/buildworkload"
KPACK_BUILD_FINALIZER = "korifi.cloudfoundry.org/kpackBuild"

# --------------------------------------------------------------------------- conditions
SUCCEEDED = "Succeeded"
READY = "Ready"

BUILD_RUNNING = "BuildRunning"
BUILD_RUNNING_MESSAGE = "Waiting for image build to complete"
BUILDER_NOT_READY = "BuilderNotReady"
DEFAULT_CLUSTER_BUILDER_NOT_FOUND = "Default ClusterBuilder not found"
CLUSTER_BUILDER_NOT_FOUND = "ClusterBuilder not found"
CUSTOM_BUILDER_NOT_FOUND = "Custom Builder not found"
CHECK_CLUSTER_BUILDER = "Check ClusterBuilder"
INVALID_BUILDPACKS = "InvalidBuildpacks"
BUILD_FAILED = "BuildFailed"
BUILD_FAILED_MESSAGE = "Check build log output"
BUILD_SUCCEEDED = "BuildSucceeded"
BUILD_SUCCEEDED_MESSAGE = "Image built successfully"
KPACK_MISSED_BUILD = "KpackMissedBuild"
KPACK_MISSED_BUILD_MESSAGE = "More recent build workload has been scheduled"

# Reasons this service adds (docs/conditions.md marks them new): no retry can fix these.
INVALID_WORKLOAD = "InvalidWorkload"
IMAGE_REJECTED = "ImageRejected"
BUILDER_REJECTED = "BuilderRejected"
# Stopping a build (service.reconcilers.buildworkload.stopping): the workload's Succeeded reasons, also
# written to the kpack Build the service stops.
BUILD_CANCELED = "BuildCanceled"
BUILD_TIMEOUT = "BuildTimeout"
BUILD_POD_PENDING = "BuildPodPending"  # Unknown: the build pod cannot start (yet)
BUILD_POD_PENDING_TIMEOUT = "BuildPodPendingTimeout"
BUILD_DELETED = "BuildDeleted"  # only on a kpack Build: stopped because it is being deleted (kpackbuild)
# Events this service adds.
BUILD_CACHE_REPLACED = "BuildCacheReplaced"
STACK_UPDATED = "StackUpdated"
IMAGE_RECREATED = "ImageRecreated"
BUILD_FINALIZER_MISSING = "BuildFinalizerMissing"  # a deletion stopped waiting for a Build's finalizer

READY_REASON = "Ready"
READY_MESSAGE = "Ready"
UNKNOWN_REASON = "Unknown"

CLUSTER_BUILDER_MISSING = "ClusterBuilderMissing"
CLUSTER_BUILDER_NOT_READY = "ClusterBuilderNotReady"

# --------------------------------------------------------------------------- kpack
KPACK_API_VERSION = "kpack.io/v1alpha2"
KORIFI_API_VERSION = "korifi.cloudfoundry.org/v1alpha1"
CLUSTER_BUILDER_KIND = "ClusterBuilder"
BUILDER_KIND = "Builder"


def invalid_buildpack_message(buildpack: str) -> str:
    return f'buildpack "{buildpack}" not present in default ClusterStore. See `cf buildpacks`'


def builder_name(buildpacks: Sequence[str]) -> str:
    """The custom Builder for a buildpack list: a v5 UUID of the ids joined by NUL, under the nil
    namespace — Korifi's ``ComputeBuilderName``, so both name the same Builder for the same list."""
    return str(uuid.uuid5(uuid.UUID(int=0), "\x00".join(buildpacks)))


def droplet_repository(prefix: str, app_guid: str) -> str:
    return f"{prefix}{app_guid}-droplets"


def builder_repository(prefix: str, builder: str) -> str:
    return f"{prefix}builders-{builder}"
