"""Registry credentials from Kubernetes: the docker-config Secrets a service account names, as
go-containerregistry's k8schain collects them (missing Secrets are skipped, not errors)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.resources import SECRET, SERVICE_ACCOUNT

log = logging.getLogger("service.registry.k8schain")

Obj = dict[str, Any]


async def service_account_secrets(
    client: KubeClient, namespace: str, account: str, *, fields: Sequence[str] = ("imagePullSecrets",)
) -> tuple[list[Obj], list[Obj]]:
    """The ``{name}`` references in these fields of the service account (in order, once each), and the
    Secrets among them that exist. Raises ``errors.NotFound`` when the service account is missing."""
    sa = await client.get(SERVICE_ACCOUNT, account, namespace)
    return await account_secrets(client, sa, fields=fields)


async def account_secrets(
    client: KubeClient, sa: Obj, *, fields: Sequence[str] = ("imagePullSecrets",)
) -> tuple[list[Obj], list[Obj]]:
    """As ``service_account_secrets``, for a service account already read (from a cache)."""
    namespace, account = sa["metadata"].get("namespace", ""), sa["metadata"]["name"]
    names = [ref.get("name") for field in fields for ref in sa.get(field) or () if isinstance(ref, dict)]
    refs = [{"name": name} for name in dict.fromkeys(n for n in names if n)]
    secrets = []
    for ref in refs:
        try:
            secrets.append(await client.get(SECRET, ref["name"], namespace))
        except errors.NotFound:
            log.warning(
                "a registry secret of the service account is missing",
                extra={"secret": ref["name"], "namespace": namespace, "serviceAccount": account},
            )
    return refs, secrets
