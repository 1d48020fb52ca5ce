"""The registry as the reconcilers need it: image configs for droplets, and deletion of a droplet's
tags. Credentials come from the builder service account's image pull secrets, as Korifi's k8schain
keychain takes them (reference: korifi.md §4.1.7).

Deletion also falls back to the builder service account of the CF root namespace, which Korifi copies
into every space: when a space is deleted, its Secrets and ServiceAccount go at once while its Builds wait
for their finalizer, and without the fallback every droplet of the space would stay in the registry."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.kube import errors
from service.kube.client import KubeClient
from service.registry.auth import Keychain
from service.registry.client import RegistryClient
from service.registry.errors import KeychainError, NotFound
from service.registry.k8schain import service_account_secrets
from service.registry.reference import parse_reference, try_parse_reference
from service.runtime import Obj

log = logging.getLogger("service.reconcilers.images")


@dataclass(frozen=True)
class ImageConfig:
    labels: dict[str, str]
    ports: list[int]  # of ExposedPorts, protocol suffixes removed
    size: int = 0  # bytes: the config and every layer (0: unknown)


class ImageConfigReader(Protocol):
    async def image_config(self, image: str, secrets: Sequence[Obj]) -> ImageConfig:
        """The config of ``image``, with credentials from these dockerconfig Secrets; raises on failure."""
        ...


class ImageDeleter(Protocol):
    async def delete_image(self, image: str, tags: Sequence[str], secrets: Sequence[Obj]) -> None:
        """Delete these tags of ``image`` (a digest reference), and the manifest once no tag is left."""
        ...

    async def digest_reference(self, image: str, secrets: Sequence[Obj]) -> str | None:
        """The digest reference (``repo@sha256:…``) of what the tag reference ``image`` names now; None
        when the registry has no such tag."""
        ...


class RepositoryCreator(Protocol):
    async def create_repository(self, repository: str) -> None: ...


class NoRepositoryCreator:
    """For registries that create repositories on first push (every one but ECR)."""

    async def create_repository(self, repository: str) -> None:
        return None


async def deletion_secrets(
    client: KubeClient, namespace: str, service_account: str, root_namespace: str, image: str
) -> list[Obj]:
    """Credentials to delete ``image`` with: the namespace's builder service account's Secrets, then, when
    those have nothing for the image's registry (the namespace is being deleted, or never had them), the
    root namespace's. API errors are raised (the caller retries); missing accounts are no credentials."""
    try:
        _, secrets = await service_account_secrets(client, namespace, service_account)
    except errors.NotFound:
        secrets = []
    if not root_namespace or root_namespace == namespace or _covers(secrets, image):
        return secrets
    try:
        _, fallback = await service_account_secrets(client, root_namespace, service_account)
    except errors.NotFound:
        return secrets
    return [*secrets, *fallback]  # the namespace's own entries win where both have one


def _covers(secrets: Sequence[Obj], image: str) -> bool:
    ref = try_parse_reference(image)
    if ref is None:
        return True  # nothing to look up: the registry call will say what is wrong
    try:
        return not Keychain.from_secrets(secrets).resolve(ref).anonymous
    except KeychainError:
        return False


def registry_lane(image: str) -> str:
    """The registry host of an image reference: the unit of concurrency for registry work."""
    ref = try_parse_reference(image)
    return ref.registry.name if ref is not None else ""


class RegistryImages:
    def __init__(self, registry: RegistryClient) -> None:
        self.registry = registry

    async def image_config(self, image: str, secrets: Sequence[Obj]) -> ImageConfig:
        config = await self.registry.image_config(image, keychain=Keychain.from_secrets(secrets))
        return ImageConfig(labels=dict(config.labels), ports=list(config.exposed_ports), size=config.size)

    async def digest_reference(self, image: str, secrets: Sequence[Obj]) -> str | None:
        ref = parse_reference(image)
        try:
            found = await self.registry.head_manifest(ref, keychain=Keychain.from_secrets(secrets))
        except NotFound:
            return None
        return f"{ref.repository.name}@{found.digest}"

    async def delete_image(self, image: str, tags: Sequence[str], secrets: Sequence[Obj]) -> None:
        result = await self.registry.delete_image(image, tags, keychain=Keychain.from_secrets(secrets))
        log.info(
            "deleted droplet image",
            extra={"image": image, "manifestDeleted": result.manifest_deleted, "remaining": result.remaining},
        )
