"""What ``explain`` found: one small dataclass per link of the chain, plain enough for orjson to write as is.

Each link says whether it was found and, when it could not be read (RBAC, say), the error instead of
guessing; objects the service writes for people (``failedAt``, ``provenance``, ``droplet``) pass through as
the API holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # True, False or Unknown
    reason: str
    message: str

    @classmethod
    def all_of(cls, obj: Obj | None) -> list[Condition]:
        found = ((obj or {}).get("status") or {}).get("conditions") or ()
        return [
            cls(
                str(c.get("type", "")),
                str(c.get("status", "")),
                str(c.get("reason") or ""),
                str(c.get("message") or ""),
            )
            for c in found
            if isinstance(c, dict)
        ]

    @classmethod
    def of(cls, obj: Obj | None, type_: str) -> Condition | None:
        return next((c for c in cls.all_of(obj) if c.type == type_), None)


@dataclass(slots=True)
class WorkloadFacts:
    namespace: str
    name: str
    app_guid: str | None  # label korifi.cloudfoundry.org/app-guid: the kpack Image's name
    image_generation: str | None  # label korifi.cloudfoundry.org/kpack-image-generation
    builder_name: str  # spec.builderName: this service builds only its own
    buildpacks: list[str]
    deleting: bool
    cancel_requested: bool
    succeeded: Condition | None
    ready: Condition | None
    failed_at: Obj | None = None
    provenance: Obj | None = None
    droplet: Obj | None = None


@dataclass(frozen=True, slots=True)
class BuilderRef:
    kind: str  # Builder or ClusterBuilder
    name: str
    namespace: str | None  # a Builder's; None for a ClusterBuilder

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    @property
    def kubectl_name(self) -> str:
        """How kubectl addresses it: ``clusterbuilder NAME`` or ``builder -n NS NAME``."""
        if self.namespace:
            return f"{self.kind.lower()} -n {self.namespace} {self.name}"
        return f"{self.kind.lower()} {self.name}"


@dataclass(frozen=True, slots=True)
class Cache:
    kind: str  # volume, registry or none
    size: str | None = None
    storage_class: str | None = None  # None: the cluster's default class
    tag: str | None = None

    def __str__(self) -> str:
        if self.kind == "volume":
            return f"volume {self.size or '(kpack default size)'}, storage class {self.storage_class or '(cluster default)'}"
        if self.kind == "registry":
            return f"registry {self.tag}"
        return "none"


@dataclass(slots=True)
class ImageFacts:
    namespace: str
    name: str
    found: bool
    error: str | None = None  # it could not be read
    generation: int | None = None
    ready: Condition | None = None
    conditions: list[Condition] = field(default_factory=list)
    builder: BuilderRef | None = None
    cache: Cache | None = None
    latest_image: str | None = None


@dataclass(slots=True)
class BuilderFacts:
    ref: BuilderRef
    origin: str  # where the ref came from: the Image's spec.builder, or the workload's buildpacks
    found: bool
    error: str | None = None
    ready: Condition | None = None
    conditions: list[Condition] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Waiting:
    container: str
    reason: str
    message: str


@dataclass(slots=True)
class PodFacts:
    namespace: str
    name: str
    found: bool
    error: str | None = None
    phase: str | None = None
    scheduled: Condition | None = None  # PodScheduled
    waiting: Waiting | None = None  # the first container (init containers first) not running yet


@dataclass(frozen=True, slots=True)
class FailedStepFacts:
    pod: str
    container: str
    exit_code: int | None
    logs_command: str


@dataclass(slots=True)
class BuildFacts:
    namespace: str
    name: str
    number: str | None  # label image.kpack.io/buildNumber
    generation: str
    builds_for_generation: int  # kpack made this many for the generation; this is the newest
    succeeded: Condition | None
    reason: str | None  # annotation image.kpack.io/reason: why kpack built (CONFIG, BUILDPACK, STACK, ...)
    stopped_for: str | None  # the service stopped it for this workload (cancel or a timeout)
    pod_name: str | None
    failed_step: FailedStepFacts | None = None
    pod: PodFacts | None = None


@dataclass(slots=True)
class Diagnosis:
    healthy: bool
    problems: list[str]  # what is wrong, one line each
    next: list[str]  # what to do about it, one line each
    workload: WorkloadFacts
    image: ImageFacts | None  # None when the workload names no app (no Image to look for)
    builder: BuilderFacts | None
    build: BuildFacts | None
    # Without a Build of the workload's generation: one of an earlier generation still running, which
    # kpack finishes first.
    earlier_build: BuildFacts | None = None
    notes: list[str] = field(default_factory=list)  # what is not wrong (yet) but worth knowing
