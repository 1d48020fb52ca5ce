"""What the reconcilers need from the configuration, under Korifi's key names (reference: korifi.md §3.2).

One frozen value shared by the three controllers; the configuration layer builds it (``service.app``).
"""

from __future__ import annotations

from dataclasses import dataclass

CACHE_KINDS = ("volume", "registry", "none")  # service.reconcilers.cache: what each asks of kpack


@dataclass(frozen=True)
class BuilderSettings:
    cluster_builder_name: str = "cf-kpack-cluster-builder"
    builder_service_account: str = "kpack-service-account"
    builder_readiness_timeout: float = 30.0
    build_timeout: float = 0.0  # 0: builds may run for ever
    build_pod_pending_timeout: float = 600.0  # 0: a pod that cannot start is waited for for ever
    container_repository_prefix: str = ""
    build_cache: str = "volume"
    build_cache_mb: int = 2048
    build_cache_storage_class: str = ""
    disk_mb: int = 0
    memory_mb: int = 0
    cf_root_namespace: str = "cf"
    registry_secret_cache_ttl: float = 30.0  # 0: pull Secrets are read for every use
