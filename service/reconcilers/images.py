"""The registry as the reconcilers need it: image configs for droplets, and deletion of a droplet's
tags. Credentials come from the builder service account's image pull secrets, as Korifi's k8schain
keychain takes them (reference: korifi.md §4.1.7)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.kube import errors
from service.kube.client import KubeClient
from service.registry.auth import Keychain
from service.registry.client import RegistryClient
from service.registry.k8schain import service_account_secrets
from service.runtime.store import Obj

log = logging.getLogger("service.reconcilers.images")


@dataclass(frozen=True)
class ImageConfig:
    labels: dict[str, str]
    ports: list[int]  # of ExposedPorts, protocol suffixes removed


class ImageConfigReader(Protocol):
    async def image_config(self, image: str, secrets: Sequence[Obj]) -> ImageConfig:
        """The config of ``image``, with credentials from these dockerconfig Secrets; raises on failure."""
        ...


class ImageDeleter(Protocol):
    async def delete_image(self, image: str, tags: Sequence[str], secrets: Sequence[Obj]) -> None:
        """Delete these tags of ``image`` (a digest reference), and the manifest once no tag is left."""
        ...


class RepositoryCreator(Protocol):
    async def create_repository(self, repository: str) -> None: ...


class NoRepositoryCreator:
    """For registries that create repositories on first push (every one but ECR)."""

    async def create_repository(self, repository: str) -> None:
        return None


async def builder_credentials(
    client: KubeClient, namespace: str, service_account: str
) -> tuple[list[Obj], list[Obj]]:
    """The builder service account's ``imagePullSecrets`` references, and those Secrets that exist (a
    missing one is skipped, as k8schain does). A missing service account is an error, worded as Korifi's."""
    try:
        return await service_account_secrets(client, namespace, service_account)
    except errors.NotFound:
        raise errors.NotFound(f'ServiceAccount "{service_account}" not found') from None


class RegistryImages:
    def __init__(self, registry: RegistryClient) -> None:
        self.registry = registry

    async def image_config(self, image: str, secrets: Sequence[Obj]) -> ImageConfig:
        config = await self.registry.image_config(image, keychain=Keychain.from_secrets(secrets))
        return ImageConfig(labels=dict(config.labels), ports=list(config.exposed_ports))

    async def delete_image(self, image: str, tags: Sequence[str], secrets: Sequence[Obj]) -> None:
        result = await self.registry.delete_image(image, tags, keychain=Keychain.from_secrets(secrets))
        log.info(
            "deleted droplet image",
            extra={"image": image, "manifestDeleted": result.manifest_deleted, "remaining": result.remaining},
        )
