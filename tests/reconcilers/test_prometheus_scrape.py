"""A real Prometheus (Debian's ``prometheus``) scrapes the service while the kpack simulator builds three
apps — one succeeds, one fails (``SIM_KPACK_FAIL``), one is still building (``SIM_KPACK_BUILD_SECONDS``)
— and its query API then shows controller-runtime's metrics and the service's own with the values those
builds must give: what an operator's dashboards and alerts will read.

The service runs as ``run`` assembles it (``service.app``: one registry for the runtime's, the clients'
and the domain's metrics), its metrics server on a port of its own choosing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from service.app import assemble, service_metrics
from service.kube import resources as r
from service.kube.client import KubeClient
from service.reconcilers import korifi as k
from service.registry.client import RegistryClient
from simcluster.kpack.options import ENV_BUILD_SECONDS, ENV_FAIL
from tests.helpers import eventually, promtool_check
from tests.prometheus import ALERTS, Prometheus, running_prometheus, tool
from tests.reconcilers.conftest import KpackCluster

pytestmark = pytest.mark.anyio

Obj = dict[str, Any]


async def create_workload(kc: KpackCluster, name: str, **env: str) -> None:
    spec: Obj = {
        "buildRef": {"name": name},
        "builderName": k.BUILDER_NAME,
        "source": {"registry": {"image": f"{kc.registry.host}/packages/pkg:1"}},
        "env": [{"name": key, "value": value} for key, value in env.items()],
    }
    body = {
        "apiVersion": k.KORIFI_API_VERSION,
        "kind": "BuildWorkload",
        "metadata": {"name": name, "namespace": kc.space, "labels": {k.APP_GUID_LABEL: f"app-{name}"}},
        "spec": spec,
    }
    await kc.client.create(r.BUILD_WORKLOAD, body, kc.space)


async def succeeded(kc: KpackCluster, name: str) -> Obj:
    obj = await kc.client.get(r.BUILD_WORKLOAD, name, kc.space)
    for condition in (obj.get("status") or {}).get("conditions") or ():
        if condition["type"] == k.SUCCEEDED:
            return dict(condition)
    return {}


async def reaches(prometheus: Prometheus, expr: str, wanted: float, within: float = 20.0) -> None:
    """Prometheus's answer to ``expr`` becomes ``wanted`` (it scrapes every second)."""
    await eventually(
        lambda: prometheus.value(expr), within, f"{expr} == {wanted}", until=lambda v: v == wanted
    )


async def test_prometheus_sees_the_controller_runtime_and_build_metrics(
    kpack_cluster: KpackCluster, tmp_path: Path
) -> None:
    tool("prometheus")
    kc = kpack_cluster
    metrics = service_metrics()
    # Its metrics count every namespace it watches: on a shared cluster (``TEST_KUBECONFIG``) the
    # workloads other tests left behind would count too, so it watches this test's namespaces alone.
    config = replace(
        kc.config(),
        metrics_bind_address="127.0.0.1:0",  # a port of its own choosing
        namespaces=(kc.space, kc.root),
    )
    async with (
        KubeClient(kc.identity, timeout=5.0, metrics=metrics.rest) as client,
        RegistryClient(timeout=5.0, metrics=metrics.images) as images,
        anyio.create_task_group() as tg,
    ):
        manager = assemble(config, client, images, metrics=metrics.registry)
        ports = await tg.start(manager.run)
        try:
            target = f"127.0.0.1:{ports['metrics']}"
            # The builds run while Prometheus starts (seconds): the counters keep what it comes to see.
            await create_workload(kc, "good")
            await create_workload(kc, "bad", **{ENV_FAIL: "build"})
            await create_workload(kc, "slow", **{ENV_BUILD_SECONDS: "600"})
            async with running_prometheus(tmp_path, target, ALERTS) as prometheus:
                for name, status, reason in (
                    ("good", "True", k.BUILD_SUCCEEDED),
                    ("bad", "False", k.BUILD_FAILED),
                    ("slow", "Unknown", k.BUILD_RUNNING),
                ):
                    await eventually(
                        lambda name=name: succeeded(kc, name),  # type: ignore[misc]
                        20,
                        f"{name}: Succeeded={status}/{reason}",
                        until=lambda c, s=status, why=reason: (c.get("status"), c.get("reason")) == (s, why),  # type: ignore[misc]
                    )
                # The domain's metrics, with the values these three builds give.
                await reaches(prometheus, "kpack_image_builder_builds_started_total", 3)
                finished = "kpack_image_builder_builds_finished_total"
                await reaches(prometheus, f'{finished}{{result="succeeded",reason="BuildSucceeded"}}', 1)
                await reaches(prometheus, f'{finished}{{result="failed",reason="BuildFailed"}}', 1)
                await reaches(prometheus, f"sum({finished})", 2)
                await reaches(prometheus, "sum(kpack_image_builder_build_duration_seconds_count)", 2)
                await reaches(prometheus, 'kpack_image_builder_droplets_written_total{trigger="build"}', 1)
                await reaches(
                    prometheus, 'kpack_image_builder_droplets_written_total{trigger="stack_update"}', 0
                )
                # The clocks agree here: the offset is scraped, and zero.
                await reaches(prometheus, "kpack_image_builder_apiserver_clock_offset_seconds", 0)
                waiting = "kpack_image_builder_workloads_waiting"
                await reaches(prometheus, f'{waiting}{{phase="build_running"}}', 1)
                await reaches(prometheus, f"sum({waiting})", 1)
                await reaches(prometheus, f"count({waiting})", 4)  # every phase, zeros too
                await reaches(prometheus, f'{waiting}_oldest_seconds{{phase="build_running"}} > bool 0', 1)
                # The droplet of the good build was read from the registry.
                await reaches(
                    prometheus,
                    'sum(kpack_image_builder_registry_requests_total{operation="manifest_get",outcome="success"}) > bool 0',
                    1,
                )
                await reaches(
                    prometheus, "sum(kpack_image_builder_registry_request_duration_seconds_count) > bool 0", 1
                )

                # controller-runtime's, as any controller-runtime manager's.
                reconciles = 'controller_runtime_reconcile_total{controller="buildworkload",result="success"}'
                await reaches(prometheus, f"{reconciles} > bool 0", 1)
                await reaches(
                    prometheus, 'count(controller_runtime_reconcile_total{controller="buildworkload"})', 4
                )
                await reaches(
                    prometheus,
                    'controller_runtime_max_concurrent_reconciles{controller="buildworkload"}',
                    config.workers,
                )
                await reaches(prometheus, 'sum(workqueue_adds_total{name="buildworkload"}) > bool 0', 1)
                await reaches(prometheus, 'sum(rest_client_requests_total{code="200"}) > bool 0', 1)
                assert await prometheus.value('up{job="kpack-image-builder"}') == 1

                # The alert rules evaluate on these series without an error; with leader election off
                # (as here) no replica reports leading, so the no-leader alert is on its way to firing.
                async def evaluated() -> list[dict[str, Any]]:
                    rules = await prometheus.rules()
                    never = [r for r in rules if r["lastEvaluation"].startswith("0001-")]  # Go's zero time
                    return [] if never else rules

                rules = await eventually(evaluated, 10, "every alert rule evaluated")
                assert len(rules) == 7 and all(r["health"] == "ok" for r in rules), rules
                states = {r["name"]: r["state"] for r in rules}
                assert states["KpackImageBuilderNoLeader"] == "pending", states
                assert states["KpackImageBuilderBuildsWaitingTooLong"] == "inactive", states
                assert states["KpackImageBuilderClockSkew"] == "inactive", states  # the same clock

                # What Prometheus scraped is an exposition promtool accepts.
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://{target}/metrics") as resp,
                ):
                    exposition = await resp.text()
                await promtool_check(exposition)
        finally:
            manager.shutdown()
