"""Registry credentials from Kubernetes: the docker-config Secrets a service account names, as
go-containerregistry's k8schain collects them (missing Secrets are skipped, not errors). The Secrets are
read by name through a ``get_secret`` of the caller's choice: the API each time, or a short-lived cache
(``service.runtime.ttlreads``) where they are read for every build."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.resources import SECRET, SERVICE_ACCOUNT

log = logging.getLogger("service.registry.k8schain")

Obj = dict[str, Any]
SecretGetter = Callable[[str, str], Awaitable[Obj]]  # (name, namespace) -> the Secret, or errors.NotFound


async def service_account_secrets(
    client: KubeClient, namespace: str, account: str, *, fields: Sequence[str] = ("imagePullSecrets",)
) -> tuple[list[Obj], list[Obj]]:
    """The ``{name}`` references in these fields of the service account (in order, once each), and the
    Secrets among them that exist. Raises ``errors.NotFound`` when the service account is missing."""
    sa = await client.get(SERVICE_ACCOUNT, account, namespace)

    async def get_secret(name: str, namespace: str) -> Obj:
        return await client.get(SECRET, name, namespace)

    return await account_secrets(get_secret, sa, fields=fields)


async def account_secrets(
    get_secret: SecretGetter, sa: Obj, *, fields: Sequence[str] = ("imagePullSecrets",)
) -> tuple[list[Obj], list[Obj]]:
    """As ``service_account_secrets``, for a service account already read (from a cache), its Secrets read
    with ``get_secret``."""
    namespace, account = sa["metadata"].get("namespace", ""), sa["metadata"]["name"]
    names = [ref.get("name") for field in fields for ref in sa.get(field) or () if isinstance(ref, dict)]
    refs = [{"name": name} for name in dict.fromkeys(n for n in names if n)]
    secrets = []
    for ref in refs:
        try:
            secrets.append(await get_secret(ref["name"], namespace))
        except errors.NotFound:
            log.warning(
                "a registry secret of the service account is missing",
                extra={"secret": ref["name"], "namespace": namespace, "serviceAccount": account},
            )
    return refs, secrets
