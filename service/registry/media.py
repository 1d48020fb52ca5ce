"""Media types, digests and platform matching shared by the client and the simulated registry, so the two
sides cannot disagree about what a manifest or an index is."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
MANIFEST_ACCEPT = ", ".join(MANIFEST_TYPES)

DEFAULT_OS = "linux"
DEFAULT_ARCHITECTURE = "amd64"

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(value: str) -> bool:
    """A canonical sha256 digest (the only algorithm go-containerregistry's references accept)."""
    return _DIGEST.match(value) is not None


def platform_matches(
    descriptor: Mapping[str, Any], os: str = DEFAULT_OS, architecture: str = DEFAULT_ARCHITECTURE
) -> bool:
    """go-containerregistry's ``matchesPlatform`` for an index entry against a platform without variant,
    OS version or features: OS and architecture must be equal; an entry without ``platform`` counts as
    linux/amd64."""
    platform = descriptor.get("platform")
    if not isinstance(platform, Mapping):
        return (os, architecture) == (DEFAULT_OS, DEFAULT_ARCHITECTURE)
    return platform.get("os") == os and platform.get("architecture") == architecture
