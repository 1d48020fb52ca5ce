"""The simulator's knobs, and the content of the registry it pretends to read (buildpackages, lifecycle).

There are no real buildpackage, stack or lifecycle images behind the simulator, so what kpack would read
from their labels comes from here: a catalogue maps a buildpackage image repository to the buildpacks it
contains, and the lifecycle's version and APIs are fixed values. The defaults are paketo-like, so a
ClusterStore with Korifi's sources (``paketobuildpacks/{java,nodejs,ruby,procfile,go}``) resolves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.registry.reference import try_parse_reference

# Annotations the simulator reads. Image annotations are copied onto every Build, so each can be set on
# the Image (for all its builds) or on one Build.
ANNOTATION_FAIL = "sim.kpack.io/fail"  # "true" (fail in the build step), a step name, or "false"
# The same as a build environment variable: an app asks for its own failure through its env, which Korifi
# copies from the workload into the Image and kpack into every Build (as a buildpack reads BP_* variables).
ENV_FAIL = "SIM_KPACK_FAIL"
ANNOTATION_BUILD_SECONDS = "sim.kpack.io/build-seconds"  # this build's duration
ANNOTATION_PROCESSES = "sim.kpack.io/processes"  # JSON list of {type, command, args, direct?, default?}
ANNOTATION_PORTS = "sim.kpack.io/ports"  # comma-separated ExposedPorts keys, e.g. "8080/tcp,9090/tcp"
ANNOTATION_DETECT = "sim.kpack.io/detect"  # a buildpack id: detection picks the first order group with it
ANNOTATION_SKIP_BUILD = "sim.kpack.io/skip-build-generation"  # on an Image: build nothing for this generation
ANNOTATION_NEVER_READY = "sim.kpack.io/never-ready"  # on a Builder or ClusterBuilder: "true"
# Why the build pod cannot start: "unschedulable", "image-pull" or "quota", optionally ":<message>". While
# the Build has it, its run does not progress; removing it lets the run start.
ANNOTATION_POD_PENDING = "sim.kpack.io/pod-pending"
# The same knobs as build environment variables (an app asks through its env, as with SIM_KPACK_FAIL):
# the annotation wins where both are set.
ENV_BUILD_SECONDS = "SIM_KPACK_BUILD_SECONDS"
ENV_POD_PENDING = "SIM_KPACK_POD_PENDING"


@dataclass(frozen=True, slots=True)
class CatalogBuildpack:
    """One buildpack in a buildpackage image. ``order`` makes it a meta-buildpack: groups of
    ``(id, version, optional)``. ``stacks`` are the stack ids it declares (``*`` for any); none at all is
    the buildpack API 0.10+ style. ``mixins`` are required of every declared stack."""

    id: str
    version: str
    homepage: str = ""
    api: str = "0.8"
    stacks: tuple[str, ...] = ("*",)
    mixins: tuple[str, ...] = ()
    order: tuple[tuple[tuple[str, str, bool], ...], ...] = ()
    size: int = 10_000


Catalogue = Mapping[str, Sequence[CatalogBuildpack]]  # image repository -> its buildpacks, root first


def repository_key(image: str) -> str:
    """The catalogue key of an image reference: its fully qualified repository (tag and digest ignored)."""
    ref = try_parse_reference(image)
    return image if ref is None else ref.repository.name


def _paketo(name: str, version: str, **kw: Any) -> CatalogBuildpack:
    return CatalogBuildpack(
        f"paketo-buildpacks/{name}", version, f"https://github.com/paketo-buildpacks/{name}", **kw
    )


def _meta(
    name: str, version: str, children: Sequence[tuple[CatalogBuildpack, bool]]
) -> list[CatalogBuildpack]:
    group = tuple((c.id, c.version, optional) for c, optional in children)
    root = _paketo(name, version, order=(group,), stacks=(), size=2_000)
    return [root, *(c for c, _ in children)]


def paketo_catalogue(registry: str = "index.docker.io/paketobuildpacks") -> dict[str, list[CatalogBuildpack]]:
    """Buildpackages named as Korifi's Helm chart names its ClusterStore sources."""
    liberica = _paketo("bellsoft-liberica", "11.0.2", size=90_000)
    maven = _paketo("maven", "6.19.2", size=40_000)
    gradle = _paketo("gradle", "7.18.0", size=30_000)
    jar = _paketo("executable-jar", "6.11.0", size=20_000)
    boot = _paketo("spring-boot", "5.31.0", size=25_000)
    procfile = _paketo("procfile", "5.11.0", size=5_000)
    node_engine = _paketo("node-engine", "7.1.0", size=60_000)
    npm_install = _paketo("npm-install", "1.6.0", size=15_000)
    node_start = _paketo("node-start", "2.0.0", size=8_000)
    mri = _paketo("mri", "0.16.0", size=50_000)
    bundler = _paketo("bundler", "0.11.0", size=12_000)
    bundle_install = _paketo("bundle-install", "0.9.0", size=11_000)
    rackup = _paketo("rackup", "0.6.0", size=7_000)
    go_dist = _paketo("go-dist", "2.7.0", size=70_000)
    go_build = _paketo("go-build", "3.2.0", size=9_000)
    return {
        f"{registry}/java": _meta(
            "java", "18.5.0", [(liberica, False), (maven, True), (gradle, True), (jar, True), (boot, True)]
        ),
        f"{registry}/nodejs": _meta(
            "nodejs", "7.2.1", [(node_engine, False), (npm_install, True), (node_start, True)]
        ),
        f"{registry}/ruby": _meta(
            "ruby", "0.47.0", [(mri, False), (bundler, False), (bundle_install, True), (rackup, True)]
        ),
        f"{registry}/go": _meta("go", "4.13.0", [(go_dist, False), (go_build, False)]),
        f"{registry}/procfile": [procfile],
    }


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """What a ClusterLifecycle resolves to (kpack reads it from the lifecycle image's labels)."""

    version: str = "0.20.12"
    buildpack_api: str = "0.7"
    platform_api: str = "0.7"
    buildpack_apis_deprecated: tuple[str, ...] = ()
    buildpack_apis_supported: tuple[str, ...] = ("0.7", "0.8", "0.9", "0.10", "0.11")
    platform_apis_deprecated: tuple[str, ...] = ()
    platform_apis_supported: tuple[str, ...] = ("0.7", "0.8", "0.9", "0.10", "0.11", "0.12", "0.13", "0.14")

    def resolved(self, image: str, latest_image: str) -> dict[str, Any]:
        return {
            "image": {"latestImage": latest_image, "image": image},
            "version": self.version,
            "api": {"buildpack": self.buildpack_api, "platform": self.platform_api},
            "apis": {
                "buildpack": {
                    "deprecated": list(self.buildpack_apis_deprecated),
                    "supported": list(self.buildpack_apis_supported),
                },
                "platform": {
                    "deprecated": list(self.platform_apis_deprecated),
                    "supported": list(self.platform_apis_supported),
                },
            },
        }


@dataclass(frozen=True, slots=True)
class Process:
    """A process in the built image's ``io.buildpacks.build.metadata`` label (platform API < 0.10 shape:
    ``command`` is a string, which is what Korifi reads)."""

    type: str
    command: str
    args: tuple[str, ...] = ()
    direct: bool = False
    default: bool = False

    def label(self, buildpack_id: str) -> dict[str, Any]:
        return {
            "type": self.type,
            "command": self.command,
            "args": list(self.args),
            "direct": self.direct,
            "default": self.default,
            "buildpackID": buildpack_id,
        }


@dataclass(frozen=True)
class KpackOptions:
    """The simulator's knobs.

    * ``build_seconds``: how long a simulated build pod runs (per build: annotation
      ``sim.kpack.io/build-seconds``).
    * ``failure_rate`` and ``seed``: the share of builds that fail, drawn per Build name from ``seed``, so
      the same names fail on every run (per build: ``sim.kpack.io/fail``).
    * ``registry``: ``host[:port]`` of the registry a successful build really pushes its image to (for tags
      in that registry); tags in other registries get a made-up digest. ``None``: push nothing.
    * ``unready_builders``: ClusterBuilder names and ``namespace/name`` of Builders that never become
      ready (per builder: annotation ``sim.kpack.io/never-ready: "true"``).
    * ``catalogue``, ``lifecycle``, ``stack_mixins``, ``stack_user_id``, ``stack_group_id``: what the
      simulated registry holds.
    * ``processes`` and ``exposed_ports``: the built image's default processes and ports (per app:
      ``sim.kpack.io/processes``, ``sim.kpack.io/ports``).
    * ``workers``: reconcile workers per controller (kpack runs 2).
    * ``reject_env_secret_key_refs``: kpack 0.17.2's extra env validation (Korifi pins 0.17.1).
    """

    build_seconds: float = 2.0
    failure_rate: float = 0.0
    seed: int = 0
    registry: str | None = None
    unready_builders: frozenset[str] = frozenset()
    catalogue: Catalogue = field(default_factory=paketo_catalogue)
    lifecycle: Lifecycle = Lifecycle()
    stack_mixins: tuple[str, ...] = ()
    stack_user_id: int = 1001
    stack_group_id: int = 1000
    processes: tuple[Process, ...] = (Process("web", "/workspace/start", ("--port", "8080"), default=True),)
    exposed_ports: tuple[str, ...] = ("8080/tcp",)
    workers: int = 2
    reject_env_secret_key_refs: bool = False
