"""``kpack-image-builder demo``: the whole system in one process, on a simulated cluster.

It starts the Kubernetes API emulator, an in-process OCI registry, the kpack simulator (kpack's webhooks
and controllers, with the objects Korifi's Helm chart creates) and this service, exactly as ``run`` wires
it; then it plays Korifi's CF API: it creates two spaces with their builder service account and registry
credentials, and BuildWorkloads — with the default builder, with buildpacks, one whose build fails, one
asking for a buildpack the store does not have, and one naming a buildpack of kpack's Buildpack resources,
resolved by semver. Their progress is shown live until Ctrl-C.

It also shows issue 8's seeds (docs/build-cache.md, docs/builders.md, docs/stack-updates.md):

* the service runs with ``buildCache: registry`` (a service-wide setting; ``run`` defaults to ``volume``), so
  each succeeded row shows the cache image its build wrote (``status.droplet.cacheImage``, by digest);
* two apps of space-b ask for the same buildpack list and share one custom Builder (the BUILDER column, the
  first 8 characters of its name, and a footer line with the apps the Builder records); go-app is the only
  user of its Builder, and once its build has succeeded the demo deletes that workload, after which its
  Builder is collected (footer: ``collected``);
* once the first builds have finished the demo gives the ClusterStack a new run image; kpack rebases every
  app whose last build succeeded and the service writes each rebase into the workload's droplet, which
  the row shows as ``old→new (stack update)``.

And issue 9's (docs/builds.md, docs/explain.md): slow-app's build is canceled while it runs
(``BuildCanceled``), endless-app's is stopped by the build timeout (``BuildTimeout``; the demo sets
``buildTimeout`` just above its ordinary builds), huge-app's pod can never be scheduled (said as
``BuildPodPending`` while it waits, then ``BuildPodPendingTimeout``), and once broken-app has failed the
demo prints ``kpack-image-builder explain`` of it.

With ``--exit-when-done`` it ends once all of that has been seen.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import anyio

from service.app import serve_cluster
from service.config import Config
from service.diagnosis.explain import explain
from service.diagnosis.render import render
from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import explicit
from service.reconcilers import korifi as k
from service.reconcilers.custom_builders import APPS_ANNOTATION
from service.registry.auth import docker_config_secret
from service.runtime import Manager
from simcluster.crds import new_cluster
from simcluster.kpack import CatalogBuildpack, KpackOptions, paketo_catalogue, running_kpack
from simcluster.kpack.options import ENV_BUILD_SECONDS, ENV_FAIL, ENV_POD_PENDING, repository_key
from simcluster.kpack.simulator import CLUSTER_STACK, KpackSimulator
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
    delete_when_done: bool = False  # deleted once every sample has finished, so that its Builder goes
    env: tuple[tuple[str, str], ...] = ()  # the simulator's knobs, through the build's env
    cancel: bool = False  # canceled by the demo once its build pod runs


NODE = ("paketo-buildpacks/nodejs", "paketo-buildpacks/procfile")
SAMPLES = (
    Sample("space-a", "java-app-build-1", "java-app"),
    # The only user of its Builder: deleted once built, its Builder is collected (docs/builders.md).
    Sample("space-a", "go-app-build-1", "go-app", ("paketo-buildpacks/go",), delete_when_done=True),
    # Two apps, one buildpack list: one Builder, recording both.
    Sample("space-b", "node-app-build-1", "node-app", NODE),
    Sample("space-b", "node-api-build-1", "node-api", NODE),
    Sample("space-b", "broken-app-build-1", "broken-app", fail=True, expected=k.BUILD_FAILED),
    Sample(
        "space-b", "typo-app-build-1", "typo-app", ("paketo-buildpacks/rubyy",), expected=k.INVALID_BUILDPACKS
    ),
    # A buildpack of kpack's Buildpack resources (docs/buildpacks.md): space-a's Buildpack offers 1.10.0, a
    # ClusterBuildpack 1.9.0; semver picks the space's (as strings, 1.9.0 would win).
    Sample("space-a", "hello-app-build-1", "hello-app", ("demo/hello",)),
    # Issue 9's seeds (docs/builds.md): a build canceled while it runs, one stopped by the build timeout,
    # one whose pod can never be scheduled (said while it waits, stopped at buildPodPendingTimeout).
    Sample(
        "space-a",
        "slow-app-build-1",
        "slow-app",
        env=((ENV_BUILD_SECONDS, "600"),),
        cancel=True,
        expected=k.BUILD_CANCELED,
    ),
    Sample(
        "space-a",
        "endless-app-build-1",
        "endless-app",
        env=((ENV_BUILD_SECONDS, "600"),),
        expected=k.BUILD_TIMEOUT,
    ),
    Sample(
        "space-b",
        "huge-app-build-1",
        "huge-app",
        env=((ENV_POD_PENDING, "unschedulable"),),
        expected=k.BUILD_POD_PENDING_TIMEOUT,
    ),
)
EXPLAINED = ("space-b", "broken-app-build-1")  # the demo ends with `explain` of this failed workload
STACK_UPDATE_RUN_IMAGE = "paketobuildpacks/run-jammy-full:demo-update"
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
    env += [{"name": name, "value": value} for name, value in sample.env]
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
Key = tuple[str, str]  # (namespace, name)
COLUMNS = ("WORKLOAD", "BUILDER", "BUILDPACKS", "SUCCEEDED", "DROPLET / MESSAGE")


def _succeeded(obj: Obj | None) -> Obj:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or ():
        if condition.get("type") == k.SUCCEEDED:
            return dict(condition)
    return {}


def custom_builder(sample: Sample) -> str | None:
    """The name of the Builder the service makes for the sample's buildpacks (docs/builders.md)."""
    return k.builder_name(list(sample.buildpacks)) if sample.buildpacks else None


def resolved(sample: Sample, builders: dict[Key, Obj]) -> str:
    """The requested buildpacks, with the version and source the custom Builder names where it names one
    (docs/buildpacks.md)."""
    name = custom_builder(sample)
    builder = builders.get((sample.space, name)) if name else None
    order = ((builder or {}).get("spec") or {}).get("order") or []
    shown = []
    for requested, entry in zip(sample.buildpacks, [*order, *([{}] * len(sample.buildpacks))], strict=False):
        ref = (entry.get("group") or [{}])[0]
        where = f" {ref['version']} ({ref['kind']} {ref['name']})" if ref.get("kind") else ""
        shown.append(f"{requested}{where}")
    return ", ".join(shown) or "(default)"


def short_digest(image: str) -> str:
    """``<repository>@sha256:<64 hex>`` as ``sha256:<8 hex>``: enough to tell droplets apart on screen."""
    algorithm, _, hex_digest = image.rpartition("@")[2].partition(":")
    return f"{algorithm}:{hex_digest[:8]}" if hex_digest else image


@dataclass
class Progress:
    """What the demo did and saw besides each workload's status: the droplet each workload had before the
    stack update, the custom Builders and the apps each recorded, which of them have gone since."""

    first_droplets: dict[Key, str] = field(default_factory=dict)
    builder_apps: dict[Key, str] = field(default_factory=dict)  # every custom Builder seen: its app-guids
    present: set[Key] = field(default_factory=set)
    acted: bool = False  # the delete_when_done workloads deleted and the stack updated
    canceled: set[Key] = field(default_factory=set)
    explained: list[str] = field(default_factory=list)  # `explain` of the failed workload, once it failed

    def observe(self, objects: dict[Key, Obj], builders: dict[Key, Obj]) -> None:
        for key, obj in objects.items():
            image = (((obj.get("status") or {}).get("droplet") or {}).get("registry") or {}).get("image")
            if image:
                self.first_droplets.setdefault(key, image)
        for key, builder in builders.items():
            self.builder_apps[key] = (builder["metadata"].get("annotations") or {}).get(APPS_ANNOTATION, "")
        self.present = set(builders)

    def collected(self, key: Key) -> bool:
        return key in self.builder_apps and key not in self.present

    def refreshed(self, key: Key, obj: Obj | None) -> bool:
        droplet = ((obj or {}).get("status") or {}).get("droplet") or {}
        image = (droplet.get("registry") or {}).get("image")
        return bool(image and self.first_droplets.get(key, image) != image)


def row(sample: Sample, obj: Obj | None, progress: Progress, builders: dict[Key, Obj]) -> tuple[str, ...]:
    key = (sample.space, sample.name)
    condition = _succeeded(obj)
    droplet = ((obj or {}).get("status") or {}).get("droplet") or {}
    if obj is None:
        state = "deleted" if sample.delete_when_done and progress.acted else "pending"
    elif (obj.get("metadata") or {}).get("deletionTimestamp"):
        state = "deleting"
    else:
        state = f"{condition.get('status', '-')}/{condition.get('reason', '')}" if condition else "pending"
    name = custom_builder(sample)
    if name is None:
        builder = "ClusterBuilder"
    elif (sample.space, name) in progress.builder_apps:
        builder = name[:8] + (" (collected)" if progress.collected((sample.space, name)) else "")
    else:
        builder = "-"
    image = (droplet.get("registry") or {}).get("image", "")
    if image:
        first = progress.first_droplets.get(key, image)
        shown = f"{first.rpartition('/')[2].partition('@')[0]}@{short_digest(first)}"
        if first != image:
            shown += f"→{short_digest(image)} (stack update)"
        if droplet.get("cacheImage"):
            shown += f"  cache: {short_digest(droplet['cacheImage'])}"
        detail = shown
    elif state == "deleted":
        detail = "deleted by the demo once it had succeeded"
    else:
        detail = condition.get("message", "")
    return (f"{sample.space}/{sample.name}", builder, resolved(sample, builders), state, detail)


def footer(progress: Progress) -> list[str]:
    """A line per custom Builder (its apps, or that it was collected) and, once done, the stack update."""
    lines = []
    for (space, name), apps in sorted(progress.builder_apps.items()):
        users = apps.replace(",", ", ") or "-"
        if progress.collected((space, name)):
            lines.append(f"Builder {space}/{name[:8]}: collected (it was used by {users})")
        else:
            shared = " (shared)" if "," in apps else ""
            lines.append(f"Builder {space}/{name[:8]}: used by {users}{shared}")
    if progress.acted:
        lines.append(f"ClusterStack {CLUSTER_STACK}: run image updated to {STACK_UPDATE_RUN_IMAGE}")
    return lines + progress.explained


def done(sample: Sample, obj: Obj | None) -> bool:
    condition = _succeeded(obj)
    return condition.get("status") in ("True", "False")


def as_expected(sample: Sample, obj: Obj | None) -> bool:
    return _succeeded(obj).get("reason") == sample.expected


def seeds_shown(progress: Progress, current: list[tuple[Sample, Obj | None]]) -> bool:
    """After the demo acted: every succeeded workload it kept has a refreshed droplet with a cache image,
    a Builder recorded two apps, and the Builders of the deleted workloads are gone."""
    kept = [(s, o) for s, o in current if s.expected == k.BUILD_SUCCEEDED and not s.delete_when_done]
    return (
        progress.acted
        and bool(progress.explained)
        and all(
            progress.refreshed((s.space, s.name), o)
            and (((o or {}).get("status") or {}).get("droplet") or {}).get("cacheImage")
            for s, o in kept
        )
        and any("," in apps for apps in progress.builder_apps.values())
        and all(
            progress.collected((s.space, name))
            for s in SAMPLES
            if s.delete_when_done and (name := custom_builder(s)) is not None
        )
    )


class View:
    """Redraws the table on a terminal; elsewhere prints each row, and each footer line, when it changes."""

    def __init__(self, out: TextIO, header: list[str]) -> None:
        self.out = out
        self.header = header
        self.tty = out.isatty()
        self.last: dict[str, tuple[str, ...]] = {}
        self.printed: set[str] = set()

    def show(self, rows: list[tuple[str, ...]], footer: list[str]) -> None:
        if self.tty:
            widths = [max(len(c) for c in col) for col in zip(COLUMNS, *rows, strict=False)]
            lines = [*self.header, ""]
            for cells in [COLUMNS, *rows]:
                lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
            lines += ["", *footer]
            self.out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
        else:
            for cells in rows:
                if self.last.get(cells[0]) != cells:
                    self.last[cells[0]] = cells
                    self.out.write("  ".join(cells) + "\n")
            for line in footer:
                if line not in self.printed:
                    self.printed.add(line)
                    self.out.write(line + "\n")
        self.out.flush()


@dataclass(frozen=True)
class DemoOptions:
    build_seconds: float = 3.0
    metrics_bind_address: str = "127.0.0.1:8080"
    health_probe_bind_address: str = "127.0.0.1:8081"
    exit_when_done: bool = False
    timeout: float = 120.0  # with exit_when_done: give up (exit 1) after this long


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run until Ctrl-C (exit 0), or with ``exit_when_done`` until every sample finished and the demo's
    later steps showed (0 if each ended as expected, else 1)."""
    async with running_apiserver(new_cluster()) as api, running_registry(host=api.host) as registry:
        catalogue = {
            **paketo_catalogue(),
            **{repository_key(i): [CatalogBuildpack("demo/hello", v)] for i, v in HELLO_PACKAGES.items()},
        }
        kpack_options = KpackOptions(
            build_seconds=options.build_seconds, registry=registry.host, catalogue=catalogue
        )
        async with (
            running_kpack(api, kpack_options, seed=True) as kpack,
            KubeClient(explicit(api.url)) as client,
        ):
            for space in SPACES:
                await create_space(client, space, registry.host)
            for resource, obj in hello_buildpacks():
                await client.create(resource, obj, obj["metadata"].get("namespace"))
            config = replace(
                Config(),
                container_repository_prefix=f"{registry.host}/cf/",
                build_cache="registry",  # docs/build-cache.md; the service's default is a volume
                # docs/builds.md: long enough for every ordinary build (and rebase) of the demo
                build_timeout=5.0 + 3 * options.build_seconds,
                build_pod_pending_timeout=2.0 + options.build_seconds,
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
                    f"  kubernetes API  {api.url}    registry  {registry.url}    build cache  registry",
                    f"  /metrics        http://{options.metrics_bind_address}/metrics"
                    f"    probes  http://{options.health_probe_bind_address}/readyz?verbose",
                ]
                code = await _watch(client, kpack, manager, View(out, header), options)
                manager.shutdown()
            return code


async def _cancel_running(
    client: KubeClient, progress: Progress, current: list[tuple[Sample, Obj | None]]
) -> None:
    """Cancel the samples that ask for it once their build pod exists (docs/builds.md#cancel)."""
    for sample, obj in current:
        key = (sample.space, sample.name)
        if not sample.cancel or key in progress.canceled or _succeeded(obj).get("reason") != k.BUILD_RUNNING:
            continue
        try:
            await client.get(r.POD, f"{sample.app}-build-1-build-pod", sample.space)
        except errors.NotFound:
            continue
        await client.merge_patch(
            r.BUILD_WORKLOAD,
            sample.name,
            {"metadata": {"annotations": {k.CANCEL_ANNOTATION: "true"}}},
            sample.space,
        )
        progress.canceled.add(key)


async def _explain(client: KubeClient, progress: Progress, objects: dict[Key, Obj]) -> None:
    """``kpack-image-builder explain`` of the failed sample, once it has failed (docs/explain.md)."""
    if progress.explained or not done(SAMPLES[0], objects.get(EXPLAINED)):
        return
    text = render(await explain(client, *EXPLAINED))
    progress.explained = [
        "",
        f"$ kpack-image-builder explain {EXPLAINED[0]}/{EXPLAINED[1]}",
        *text.splitlines(),
    ]


async def _act(client: KubeClient, kpack: KpackSimulator) -> None:
    """Once every sample has finished: delete the workloads whose Builders should go, update the stack."""
    for sample in SAMPLES:
        if sample.delete_when_done:
            with contextlib.suppress(errors.NotFound):
                await client.delete(r.BUILD_WORKLOAD, sample.name, sample.space)
    await kpack.update_stack(CLUSTER_STACK, STACK_UPDATE_RUN_IMAGE)


async def _watch(
    client: KubeClient, kpack: KpackSimulator, manager: Manager, view: View, options: DemoOptions
) -> int:
    """Poll and show the workloads twice a second (a display, so polling is what it is for)."""
    deadline = anyio.current_time() + options.timeout
    progress = Progress()
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
        progress.observe(objects, builders)
        current = [(s, objects.get((s.space, s.name))) for s in SAMPLES]
        await _cancel_running(client, progress, current)
        await _explain(client, progress, objects)
        finished = progress.acted or all(done(s, o) for s, o in current)
        complete = seeds_shown(progress, current)
        if complete:
            status = "all done" + (
                "" if options.exit_when_done else "; the service keeps running (Ctrl-C stops it)"
            )
        elif finished:
            status = "every workload has finished; the stack update and the Builder collection follow..."
        else:
            status = "building... (Ctrl-C stops it)"
        view.show([row(s, o, progress, builders) for s, o in current], [*footer(progress), status])
        unexpected = not all(as_expected(s, o) for s, o in current)
        if options.exit_when_done and finished and not progress.acted and unexpected:
            return 1
        if options.exit_when_done and complete:
            return 0
        if options.exit_when_done and anyio.current_time() > deadline:
            view.out.write(f"demo: not everything was shown within {options.timeout:g} s\n")
            return 1
        if finished and not progress.acted:
            await _act(client, kpack)
            progress.acted = True
            continue
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
