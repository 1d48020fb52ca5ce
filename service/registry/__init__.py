"""The OCI registry layer: image references, pull-secret keychains and an asynchronous registry client.

The reconcilers read droplet metadata (labels, ports) from built images and delete droplet images when
their kpack Builds go; this package is all they need for that, and it behaves as the go-containerregistry
code Korifi used (reference parsing, keychain matching, Delete) except where Korifi had bugs (tags of
registries with a port, no timeouts), which are fixed and said so.
"""

from service.registry.auth import ANONYMOUS, Credentials, Keychain
from service.registry.cache import RegistryCache
from service.registry.client import DeleteResult, Descriptor, ImageConfig, Manifest, RegistryClient
from service.registry.errors import (
    InvalidImage,
    InvalidReference,
    KeychainError,
    NotFound,
    RegistryError,
    RegistryTimeout,
    Unauthorized,
    UnexpectedResponse,
    Unreachable,
)
from service.registry.reference import (
    Reference,
    Registry,
    Repository,
    parse_reference,
    parse_repository,
    tag_of_build_tag,
    tags_of_build_tags,
)

__all__ = [
    "ANONYMOUS",
    "Credentials",
    "DeleteResult",
    "Descriptor",
    "ImageConfig",
    "InvalidImage",
    "InvalidReference",
    "Keychain",
    "KeychainError",
    "Manifest",
    "NotFound",
    "Reference",
    "Registry",
    "RegistryCache",
    "RegistryClient",
    "RegistryError",
    "RegistryTimeout",
    "Repository",
    "Unauthorized",
    "UnexpectedResponse",
    "Unreachable",
    "parse_reference",
    "parse_repository",
    "tag_of_build_tag",
    "tags_of_build_tags",
]
