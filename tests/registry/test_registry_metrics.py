"""Registry requests counted by operation and outcome (``service.registry.metrics``), against real
servers: the in-process OCI registry (answers: success, not found), a closed port (unreachable) and a
server that never answers (timeout). Each exchange counts once, with its latency."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from yarl import URL

from service.registry.client import RegistryClient
from service.registry.errors import NotFound, RegistryTimeout, Unreachable
from service.registry.metrics import RegistryMetrics, operation_of
from simcluster.registry import running_registry
from tests.helpers import hanging_server
from tests.prometheus import free_port

pytestmark = pytest.mark.anyio

REQUESTS = "kpack_image_builder_registry_requests_total"
SECONDS = "kpack_image_builder_registry_request_duration_seconds_count"


def counts(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.labels["operation"], s.labels["outcome"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == REQUESTS
    }


def timed(registry: CollectorRegistry, operation: str) -> float:
    return registry.get_sample_value(SECONDS, {"operation": operation}) or 0.0


async def test_answers_are_counted_by_operation_and_outcome() -> None:
    registry = CollectorRegistry()
    async with (
        running_registry() as served,
        RegistryClient(metrics=RegistryMetrics(registry), timeout=5.0) as client,
    ):
        with pytest.raises(NotFound):
            await client.get_manifest(f"{served.host}/apps/missing:1")
    seen = counts(registry)
    assert seen[("ping", "success")] == 1  # a plain-HTTP registry: one /v2/ ping decides the scheme
    assert seen[("manifest_get", "not_found")] == 1
    assert timed(registry, "manifest_get") == 1
    assert all(operation != "other" for operation, _ in seen)


async def test_failures_are_counted_as_unreachable_and_timeout() -> None:
    registry = CollectorRegistry()
    async with RegistryClient(metrics=RegistryMetrics(registry), timeout=0.3) as client:
        with pytest.raises(Unreachable):
            await client.get_manifest(f"127.0.0.1:{free_port()}/apps/a:1")
        async with hanging_server() as hanging:
            with pytest.raises(RegistryTimeout):
                await client.get_manifest(f"{hanging.address}/apps/a:1")
    seen = counts(registry)
    unreachable = sum(v for (_, outcome), v in seen.items() if outcome == "unreachable")
    timeouts = sum(v for (_, outcome), v in seen.items() if outcome == "timeout")
    assert unreachable >= 1 and timeouts >= 1, seen
    assert set(seen) <= {("ping", "unreachable"), ("ping", "timeout")}, seen


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("GET", "/v2/", "ping"),
        ("GET", "/v2/cf/app/manifests/sha256:abc", "manifest_get"),
        ("HEAD", "/v2/cf/app/manifests/latest", "manifest_head"),
        ("DELETE", "/v2/cf/app/manifests/sha256:abc", "manifest_delete"),
        ("GET", "/v2/cf/app/blobs/sha256:abc", "blob_get"),
        ("POST", "/v2/cf/app/blobs/uploads/", "blob_upload_post"),
        ("PUT", "/v2/cf/app/blobs/uploads/123", "blob_upload_put"),
        ("GET", "/v2/cf/app/tags/list", "tags_list"),
        ("GET", "/v2/cf/blobs/app/tags/list", "tags_list"),  # a repository named "blobs"
        ("GET", "/v2/cf/manifests/blobs/sha256:abc", "blob_get"),  # and one named "manifests"
    ],
)
def test_the_operation_is_read_from_method_and_path(method: str, path: str, operation: str) -> None:
    assert operation_of(method, URL(f"http://r.example{path}")) == operation
