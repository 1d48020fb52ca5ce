"""``kpack-image-builder demo``: the whole system in one process, on a simulated cluster.

It starts the Kubernetes API emulator, an in-process OCI registry, the kpack simulator (kpack's webhooks
and controllers, with the objects Korifi's Helm chart creates) and this service, exactly as ``run`` wires
it; then it plays Korifi's CF API: it creates two spaces with their builder service account and registry
credentials, and BuildWorkloads — with the default builder, with buildpacks, one whose build fails, one
asking for a buildpack the store does not have, and one naming a buildpack of kpack's Buildpack resources,
resolved by semver. Their progress is shown live until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TextIO

import anyio

from service.app import serve_cluster
from service.config import Config
from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import explicit
from service.reconcilers import korifi as k
from service.registry.auth import docker_config_secret
from service.runtime import Manager
from simcluster.crds import new_cluster
from simcluster.kpack import CatalogBuildpack, KpackOptions, paketo_catalogue, running_kpack
from simcluster.kpack.options import ENV_FAIL, repository_key
from simcluster.registry import running_registry
from simcluster.server import running_apiserver

Obj = dict[str, Any]

SPACES = ("space-a", "space-b")
SERVICE_ACCOUNT = "kpack-service-account"
PULL_SECRET = "image-registry-credentials"


@dataclass(frozen=True)
class Sample:
    space: str
    name: str
    app: str
    buildpacks: tuple[str, ...] = ()
    fail: bool = False
    expected: str = k.BUILD_SUCCEEDED  # the Succeeded reason it should end with


SAMPLES = (
    Sample("space-a", "java-app-build-1", "java-app"),
    Sample("space-a", "go-app-build-1", "go-app", ("paketo-buildpacks/go",)),
    Sample(
        "space-b", "node-app-build-1", "node-app", ("paketo-buildpacks/nodejs", "paketo-buildpacks/procfile")
    ),
    Sample("space-b", "broken-app-build-1", "broken-app", fail=True, expected=k.BUILD_FAILED),
    Sample(
        "space-b", "typo-app-build-1", "typo-app", ("paketo-buildpacks/rubyy",), expected=k.INVALID_BUILDPACKS
    ),
    # A buildpack of kpack's Buildpack resources (docs/buildpacks.md): space-a's Buildpack offers 1.10.0, a
    # ClusterBuildpack 1.9.0; semver picks the space's (as strings, 1.9.0 would win).
    Sample("space-a", "hello-app-build-1", "hello-app", ("demo/hello",)),
)
HELLO_PACKAGES = {"demo/hello-space": "1.10.0", "demo/hello-cluster": "1.9.0"}  # image -> its demo/hello


def hello_buildpacks() -> list[tuple[r.Resource, Obj]]:
    """The Buildpack of space-a and the ClusterBuildpack offering ``demo/hello``."""
    kpack = "kpack.io/v1alpha2"
    return [
        (
            r.BUILDPACK,
            {
                "apiVersion": kpack,
                "kind": "Buildpack",
                "metadata": {"name": "hello", "namespace": "space-a"},
                "spec": {"image": "demo/hello-space"},
            },
        ),
        (
            r.CLUSTER_BUILDPACK,
            {
                "apiVersion": kpack,
                "kind": "ClusterBuildpack",
                "metadata": {"name": "demo-hello"},
                "spec": {"image": "demo/hello-cluster"},
            },
        ),
    ]


def workload(sample: Sample, registry: str) -> Obj:
    env = [{"name": "BP_DEMO", "value": "true"}]
    if sample.fail:
        env.append({"name": ENV_FAIL, "value": "build"})
    spec: Obj = {
        "buildRef": {"name": sample.name},
        "builderName": k.BUILDER_NAME,
        "source": {
            "registry": {
                "image": f"{registry}/packages/{sample.app}:1",
                "imagePullSecrets": [{"name": PULL_SECRET}],
            }
        },
        "env": env,
    }
    if sample.buildpacks:
        spec["buildpacks"] = list(sample.buildpacks)
    return {
        "apiVersion": k.KORIFI_API_VERSION,
        "kind": "BuildWorkload",
        "metadata": {
            "name": sample.name,
            "namespace": sample.space,
            "labels": {k.APP_GUID_LABEL: sample.app, k.BUILD_GUID_LABEL: sample.name},
        },
        "spec": spec,
    }


async def create_space(
    client: KubeClient, space: str, registry: str, *, service_account: str = SERVICE_ACCOUNT
) -> None:
    """A CF space as Korifi prepares it: the namespace, registry credentials and the builder account."""
    objects: list[tuple[r.Resource, Obj]] = [
        (r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": space}}),
        (r.SECRET, docker_config_secret(PULL_SECRET, space, registry, "demo", "demo")),
        (
            r.SERVICE_ACCOUNT,
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": service_account, "namespace": space},
                "secrets": [{"name": PULL_SECRET}],
                "imagePullSecrets": [{"name": PULL_SECRET}],
            },
        ),
    ]
    for resource, obj in objects:
        with contextlib.suppress(errors.AlreadyExists):
            await client.create(resource, obj, obj["metadata"].get("namespace"))


# ------------------------------------------------------------------------------ the live view
def _succeeded(obj: Obj | None) -> Obj:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or ():
        if condition.get("type") == k.SUCCEEDED:
            return dict(condition)
    return {}


def resolved(sample: Sample, builders: dict[tuple[str, str], Obj]) -> str:
    """The requested buildpacks, with the version and source the custom Builder names where it names one
    (docs/buildpacks.md)."""
    builder = (
        builders.get((sample.space, k.builder_name(list(sample.buildpacks)))) if sample.buildpacks else None
    )
    order = ((builder or {}).get("spec") or {}).get("order") or []
    shown = []
    for requested, entry in zip(sample.buildpacks, [*order, *([{}] * len(sample.buildpacks))], strict=False):
        ref = (entry.get("group") or [{}])[0]
        where = f" {ref['version']} ({ref['kind']} {ref['name']})" if ref.get("kind") else ""
        shown.append(f"{requested}{where}")
    return ", ".join(shown) or "(default)"


def row(
    sample: Sample, obj: Obj | None, builders: dict[tuple[str, str], Obj] | None = None
) -> tuple[str, ...]:
    condition = _succeeded(obj)
    droplet = ((obj or {}).get("status") or {}).get("droplet") or {}
    state = f"{condition.get('status', '-')}/{condition.get('reason', '')}" if condition else "pending"
    image = (droplet.get("registry") or {}).get("image", "")
    web = next((p["command"] for p in droplet.get("processTypes") or () if p.get("type") == "web"), "")
    detail = f"{image.rpartition('/')[2][:40]}  web: {web}" if image else condition.get("message", "")
    return (f"{sample.space}/{sample.name}", resolved(sample, builders or {}), state, detail)


def done(sample: Sample, obj: Obj | None) -> bool:
    condition = _succeeded(obj)
    return condition.get("status") in ("True", "False")


def as_expected(sample: Sample, obj: Obj | None) -> bool:
    return _succeeded(obj).get("reason") == sample.expected


class View:
    """Redraws the table on a terminal; elsewhere prints each row when it changes."""

    def __init__(self, out: TextIO, header: list[str]) -> None:
        self.out = out
        self.header = header
        self.tty = out.isatty()
        self.last: dict[str, tuple[str, ...]] = {}

    def show(self, rows: list[tuple[str, ...]], footer: str) -> None:
        if self.tty:
            widths = [
                max(len(c) for c in col)
                for col in zip(
                    ("WORKLOAD", "BUILDPACKS", "SUCCEEDED", "DROPLET / MESSAGE"), *rows, strict=False
                )
            ]
            lines = [*self.header, ""]
            for cells in [("WORKLOAD", "BUILDPACKS", "SUCCEEDED", "DROPLET / MESSAGE"), *rows]:
                lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
            lines += ["", footer]
            self.out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
        else:
            for cells in rows:
                if self.last.get(cells[0]) != cells:
                    self.last[cells[0]] = cells
                    self.out.write("  ".join(cells) + "\n")
        self.out.flush()


@dataclass(frozen=True)
class DemoOptions:
    build_seconds: float = 3.0
    metrics_bind_address: str = "127.0.0.1:8080"
    health_probe_bind_address: str = "127.0.0.1:8081"
    exit_when_done: bool = False
    timeout: float = 120.0  # with exit_when_done: give up (exit 1) after this long


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run until Ctrl-C (exit 0), or with ``exit_when_done`` until every sample finished (0 if each ended
    as expected, else 1)."""
    async with running_apiserver(new_cluster()) as api, running_registry(host=api.host) as registry:
        catalogue = {
            **paketo_catalogue(),
            **{repository_key(i): [CatalogBuildpack("demo/hello", v)] for i, v in HELLO_PACKAGES.items()},
        }
        kpack = KpackOptions(build_seconds=options.build_seconds, registry=registry.host, catalogue=catalogue)
        async with running_kpack(api, kpack, seed=True), KubeClient(explicit(api.url)) as client:
            for space in SPACES:
                await create_space(client, space, registry.host)
            for resource, obj in hello_buildpacks():
                await client.create(resource, obj, obj["metadata"].get("namespace"))
            config = replace(
                Config(),
                container_repository_prefix=f"{registry.host}/cf/",
                metrics_bind_address=options.metrics_bind_address,
                health_probe_bind_address=options.health_probe_bind_address,
                workers=2,
                log_level="warn",
            )
            async with anyio.create_task_group() as tg:
                manager: Manager = await tg.start(serve_cluster, explicit(api.url), config)
                for sample in SAMPLES:
                    await client.create(r.BUILD_WORKLOAD, workload(sample, registry.host), sample.space)
                header = [
                    "kpack-image-builder demo: the API emulator, an OCI registry, the kpack simulator and the service",
                    f"  kubernetes API  {api.url}    registry  {registry.url}",
                    f"  /metrics        http://{options.metrics_bind_address}/metrics"
                    f"    probes  http://{options.health_probe_bind_address}/readyz?verbose",
                ]
                code = await _watch(client, manager, View(out, header), options)
                manager.shutdown()
            return code


async def _watch(client: KubeClient, manager: Manager, view: View, options: DemoOptions) -> int:
    """Poll and show the workloads twice a second (a display, so polling is what it is for)."""
    deadline = anyio.current_time() + options.timeout
    while True:
        if manager.shutdown_requested:
            return 0
        objects = {
            (o["metadata"]["namespace"], o["metadata"]["name"]): o
            for o in (await client.list(r.BUILD_WORKLOAD))["items"]
        }
        builders = {
            (b["metadata"]["namespace"], b["metadata"]["name"]): b
            for b in (await client.list(r.BUILDER))["items"]
        }
        current = [(s, objects.get((s.space, s.name))) for s in SAMPLES]
        finished = all(done(s, o) for s, o in current)
        footer = (
            "every workload has finished; the service keeps running (Ctrl-C stops it)"
            if finished
            else "building... (Ctrl-C stops it)"
        )
        view.show([row(s, o, builders) for s, o in current], footer)
        if options.exit_when_done and finished:
            return 0 if all(as_expected(s, o) for s, o in current) else 1
        if options.exit_when_done and anyio.current_time() > deadline:
            view.out.write(f"demo: not every workload finished within {options.timeout:g} s\n")
            return 1
        await anyio.sleep(0.5)


def main(options: DemoOptions, on_error: Callable[[str], None]) -> int:
    """Run the demo; a port already taken (or any other OS error) is one line, not a traceback."""
    try:
        return anyio.run(run_demo, options)
    except* OSError as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):  # task groups nest: report the error itself
            first = first.exceptions[0]
        on_error(f"demo: {first}")
    return 2
