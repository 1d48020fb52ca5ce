"""kpack's Build reconciler, with a simulated build pod.

Of a build, the service under test reads only the Build's status and the image it pushed (the droplet's
processes and ports come from the image config), so no pod is needed, but both must be what kpack and the
CNB lifecycle would produce. A Build gets its pod (``<build>-build-pod``, in memory) on its first
reconcile and reports it pending (every step waiting, ``Succeeded=Unknown/PodInitializing``); after the
build's duration the pod ends. Success writes what kpack reads from the completion container: the image
digest, the run image (the builder's run-image digest under its repository), the builder's lifecycle
version and the detected buildpacks (a rebase keeps those of the image it rebases, §3.4), and the step
states kpack derives from the pod (kpack.md §3.7, §8.4); failure writes the failed step's exit code and
kpack's message (§8.5). A successful build really pushes an image (a config with the
``io.buildpacks.build.metadata`` label and exposed ports, one small layer) to every ``spec.tags`` entry in
the configured registry.

Credentials are read as kpack reads them: when the build pod is made (the pod mounts the service
account's secrets), not at export. A failing read of the service account or its Secrets (a 5xx, a 429, a
timeout) leaves the Build without a pod and requeues it with backoff, as kpack's reconciler returns the
error to its work queue; only a missing service account means building without credentials. The retry is
a delayed requeue, never a wait inside the reconcile, so the controller's few workers stay free for the
other builds; it ends with the Build (deleted or finished) or with the simulator.
"""

from __future__ import annotations

import base64
import gzip
import io
import random
import tarfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from service.kube import errors
from service.kube import resources as r
from service.kube.timestamps import rfc3339
from service.registry.auth import Keychain
from service.registry.client import RegistryClient
from service.registry.errors import KeychainError, RegistryError
from service.registry.k8schain import service_account_secrets
from service.runtime import Request, Result, index_value
from simcluster.kpack import apis, gotypes
from simcluster.kpack.base import Obj, Shared, condition, go_json, log
from simcluster.kpack.builders import BuilderImage, builder_image_from_status
from simcluster.kpack.images import BUILDS_BY_IMAGE, IMAGE_LABEL, REASON, is_running
from simcluster.kpack.options import (
    ANNOTATION_BUILD_SECONDS,
    ANNOTATION_DETECT,
    ANNOTATION_FAIL,
    ANNOTATION_PORTS,
    ANNOTATION_PROCESSES,
    ENV_FAIL,
    Process,
)
from simcluster.kpack.refs import child_name, digest_of, fake_digest, parse_tag, repository_of

STEPS = ("prepare", "analyze", "detect", "restore", "build", "export")
REBASE_STEPS = ("rebase",)
COMPLETION = "completion"
# Exit codes (lifecycle platform/common/exit.go; prepare and rebase are kpack's) and a last log line.
FAILURES = {
    "prepare": (1, "Error: failed to fetch source"),
    "analyze": (32, "ERROR: failed to analyze: simulated failure"),
    "detect": (20, "ERROR: No buildpack groups passed detection."),
    "restore": (42, "ERROR: failed to restore: simulated failure"),
    "build": (51, "ERROR: failed to build: exit status 1"),
    "export": (62, "ERROR: failed to export: simulated failure"),
    "rebase": (1, "ERROR: failed to rebase: simulated failure"),
}
BUILD_METADATA_LABEL = "io.buildpacks.build.metadata"
# Requeue delays while a build's credentials cannot be read: doubling from the first, capped (seconds).
CREDENTIALS_RETRY_FIRST = 0.05
CREDENTIALS_RETRY_CAP = 2.0


@dataclass
class Pod:
    uid: str  # of the Build: a Build recreated under the same name gets a new pod
    name: str
    started: float  # monotonic
    started_at: datetime
    duration: float
    steps: tuple[str, ...]
    fail_step: str | None
    failure_log: str = ""
    ids: dict[str, str] = field(default_factory=dict)
    keychain: Keychain | None = None  # the service account's registry credentials, read at creation
    rebased: list[Obj] | None = None  # a rebase: the buildpacks of the image it rebases, which it keeps


def _annotations(build: Obj) -> dict[str, str]:
    return dict(build["metadata"].get("annotations") or {})


class BuildController:
    def __init__(self, shared: Shared, registry: RegistryClient | None = None) -> None:
        self.shared = shared
        self.registry = registry
        self.pods: dict[tuple[str, str], Pod] = {}  # by the Build's namespace and name
        # Builds whose credentials could not be read yet: (the Build's uid, failed reads so far).
        self.credential_failures: dict[tuple[str, str], tuple[str, int]] = {}

    # ------------------------------------------------------------------ the simulated pod
    def _fail_step(self, build: Obj, steps: tuple[str, ...]) -> str | None:
        env = {
            e.get("name"): e.get("value")
            for e in (build.get("spec") or {}).get("env") or ()
            if isinstance(e, dict)
        }
        value = str(_annotations(build).get(ANNOTATION_FAIL) or env.get(ENV_FAIL) or "").strip().lower()
        if value in ("false", "no", "0"):
            return None
        if value in ("true", "yes", "1"):
            return "build" if "build" in steps else steps[0]
        if value in steps:
            return value
        meta = build["metadata"]
        rate = self.shared.options.failure_rate
        if rate <= 0:
            return None
        draw = random.Random(f"{self.shared.options.seed}/{meta['namespace']}/{meta['name']}").random()
        return ("build" if "build" in steps else steps[0]) if draw < rate else None

    def _existing_pod(self, build: Obj) -> Pod | None:
        meta = build["metadata"]
        pod = self.pods.get((meta["namespace"], meta["name"]))
        return pod if pod is not None and pod.uid == meta["uid"] else None

    def _pod(self, build: Obj, keychain: Keychain | None = None) -> Pod:
        pod = self._existing_pod(build)
        if pod is not None:
            return pod
        meta = build["metadata"]
        uid = meta["uid"]
        spec = build.get("spec") or {}
        last = spec.get("lastBuild") or {}
        builder = self._builder_image(build)
        rebase = (
            _annotations(build).get(REASON) == "STACK"
            and bool(spec.get("lastBuild"))
            and builder is not None
            and last.get("stackId") == builder.stack_id
        )
        steps = REBASE_STEPS if rebase else STEPS
        try:
            duration = float(
                _annotations(build).get(ANNOTATION_BUILD_SECONDS, self.shared.options.build_seconds)
            )
        except ValueError:
            duration = self.shared.options.build_seconds
        pod = Pod(
            uid,
            child_name(meta["name"], "-build-pod"),
            time.monotonic(),
            datetime.now(UTC),
            max(0.0, duration),
            steps,
            self._fail_step(build, steps),
            keychain=keychain,
        )
        pod.ids = {s: "containerd://" + fake_digest(uid, s)[len("sha256:") :] for s in (*steps, COMPLETION)}
        if rebase:
            pod.rebased = self._rebased_buildpacks(build)
        self.pods[(meta["namespace"], meta["name"])] = pod
        return pod

    def _rebased_buildpacks(self, build: Obj) -> list[Obj] | None:
        """The ``buildMetadata`` of the Build that made the image a rebase starts from (kpack reads them
        from that image's label: a rebase swaps the run image under the app's layers, nothing else)."""
        last = ((build.get("spec") or {}).get("lastBuild") or {}).get("image")
        meta = build["metadata"]
        image = (meta.get("labels") or {}).get(IMAGE_LABEL, "")
        for other in self.shared.by_index("builds", BUILDS_BY_IMAGE, index_value(meta["namespace"], image)):
            status = other.get("status") or {}
            if last and status.get("latestImage") == last:
                return list(status.get("buildMetadata") or [])
        return None

    def _buildpacks(self, build: Obj, builder: BuilderImage, pod: Pod | None) -> list[Obj]:
        """The buildpacks the build ran: those it rebases, else those it detects."""
        if pod is not None and pod.rebased is not None:
            return pod.rebased
        return builder.detected(_annotations(build).get(ANNOTATION_DETECT))

    def _builder_image(self, build: Obj) -> BuilderImage | None:
        """What the simulator knows of the build's builder image (from the builders it reconciled, else
        from the builders in the cache)."""
        builder_spec = (build.get("spec") or {}).get("builder") or {}
        image = builder_spec.get("image", "")
        ref = builder_spec.get("ref")
        if not image and isinstance(ref, dict):
            plural = "clusterbuilders" if ref.get("kind") == "ClusterBuilder" else "builders"
            ns = None if plural == "clusterbuilders" else build["metadata"]["namespace"]
            found = self.shared.get(plural, ns, ref.get("name", ""))
            image = ((found or {}).get("status") or {}).get("latestImage", "")
        known = self.shared.builder_images.get(image)
        if known is not None:
            return known
        for plural in ("clusterbuilders", "builders"):
            for b in self.shared.list(plural):
                status = b.get("status") or {}
                if image and status.get("latestImage") == image:
                    return builder_image_from_status(status)
        return None

    # ------------------------------------------------------------------ reconcile
    async def reconcile(self, request: Request) -> Result | None:
        build = self.shared.get("builds", request.namespace, request.name)
        key = (request.namespace, request.name)
        if build is None or not is_running(build):
            self.pods.pop(key, None)
            self.credential_failures.pop(key, None)
            return None
        pod = self._existing_pod(build)
        if pod is None:
            try:
                keychain = await self._keychain(build) if self._our_tags(build) else None
            except errors.ApiError as exc:
                return self._retry_credentials(build, exc)
            self.credential_failures.pop(key, None)
            pod = self._pod(build, keychain)
        status = gotypes.decode(apis.BUILD.field_type("status"), build.get("status") or {})
        remaining = pod.duration - (time.monotonic() - pod.started)
        builder = self._builder_image(build)
        if builder is None:
            image = ((build.get("spec") or {}).get("builder") or {}).get("image", "")
            self._image_pull_back_off(status, pod, image)
            await self.shared.write_status(r.BUILD, apis.BUILD, build, status)
            return Result(requeue_after=max(remaining, 1.0))
        if remaining > 0:
            self._pending(status, pod)
            await self.shared.write_status(r.BUILD, apis.BUILD, build, status)
            return Result(requeue_after=remaining)
        if pod.fail_step is None:
            try:
                self._succeeded(status, pod, build, builder, await self._push(build, builder, pod))
            except BuildFailure as exc:
                pod.fail_step = exc.step if exc.step in pod.steps else pod.steps[-1]
                pod.failure_log = exc.log_line
        if pod.fail_step is not None:
            self._failed(status, pod, build)
        await self.shared.write_status(r.BUILD, apis.BUILD, build, status)
        return None

    def _retry_credentials(self, build: Obj, exc: errors.ApiError) -> Result:
        """No pod yet: requeue the Build after a delay that doubles with each failed read (kpack's work
        queue backs off the same way), with no status written, as kpack writes none without a pod."""
        meta = build["metadata"]
        key = (meta["namespace"], meta["name"])
        uid, failures = self.credential_failures.get(key, (meta["uid"], 0))
        if uid != meta["uid"]:
            failures = 0  # a Build recreated under the same name starts afresh
        self.credential_failures[key] = (meta["uid"], failures + 1)
        delay = min(CREDENTIALS_RETRY_CAP, CREDENTIALS_RETRY_FIRST * 2**failures)
        log.info(
            "build %s/%s: cannot read its service account's credentials (%s); retrying in %.2f s",
            meta["namespace"],
            meta["name"],
            exc,
            delay,
        )
        return Result(requeue_after=delay)

    @staticmethod
    def _waiting(step: str) -> Obj:
        return {"waiting": {"reason": "PodInitializing", "message": f"Container {step} waiting"}}

    def _terminated(self, pod: Pod, step: str, index: int, exit_code: int = 0, message: str = "") -> Obj:
        count = len(pod.steps) + 1
        slot = timedelta(seconds=pod.duration / count)
        started = pod.started_at + slot * index
        return {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "message": message
                or f"Container {step} terminated {'successfully' if exit_code == 0 else 'with error'}",
                "startedAt": rfc3339(started),
                "finishedAt": rfc3339(started + slot),
                "containerID": pod.ids[step],
            }
        }

    def _common(self, status: Obj, pod: Pod) -> None:
        status["podName"] = pod.name
        status["stack"] = {"runImage": "", "id": ""}
        status["lifecycleVersion"] = ""
        status["latestImage"] = ""
        status["latestCacheImage"] = ""
        status["buildMetadata"] = None

    def _pending(self, status: Obj, pod: Pod) -> None:
        self._common(status, pod)
        status["stepStates"] = [self._waiting(s) for s in (*pod.steps, COMPLETION)]
        status["stepsCompleted"] = []
        status["conditions"] = [
            condition("Succeeded", "Unknown", "PodInitializing", f"Container {pod.steps[0]} waiting")
        ]

    def _image_pull_back_off(self, status: Obj, pod: Pod, image: str) -> None:
        self._common(status, pod)
        message = f'Back-off pulling image "{image}"'
        status["stepStates"] = [{"waiting": {"reason": "ImagePullBackOff", "message": message}}] + [
            self._waiting(s) for s in (*pod.steps[1:], COMPLETION)
        ]
        status["stepsCompleted"] = []
        status["conditions"] = [condition("Succeeded", "Unknown", "ImagePullBackOff", message)]

    def _failed(self, status: Obj, pod: Pod, build: Obj) -> None:
        assert pod.fail_step is not None
        self._common(status, pod)
        states, completed = [], []
        failed_at = pod.steps.index(pod.fail_step)
        exit_code, log_line = FAILURES[pod.fail_step]
        for i, step in enumerate(pod.steps):
            if i < failed_at:
                states.append(self._terminated(pod, step, i))
                completed.append(step)
            elif i == failed_at:
                states.append(self._terminated(pod, step, i, exit_code))
            else:
                states.append(self._waiting(step))
        states.append(self._waiting(COMPLETION))
        status["stepStates"] = states
        status["stepsCompleted"] = completed
        namespace = build["metadata"]["namespace"]
        message = (
            f"Error:  Container {pod.fail_step} terminated with error {pod.failure_log or log_line}: For more info use "
            f"`kubectl logs -n {namespace} {pod.name} -c {pod.fail_step}`"
        )
        status["conditions"] = [condition("Succeeded", "False", "Failed", message)]

    def _succeeded(self, status: Obj, pod: Pod, build: Obj, builder: BuilderImage, digest: str) -> None:
        spec = build.get("spec") or {}
        tags = spec.get("tags") or []
        run_image = (spec.get("runImage") or {}).get("image", "")
        cache_tag = ((spec.get("cache") or {}).get("registry") or {}).get("tag", "")
        metadata = self._buildpacks(build, builder, pod)
        latest_image = f"{repository_of(tags[0])}@{digest}"
        stack_run_image = f"{repository_of(run_image)}@{digest_of(run_image)}" if run_image else ""
        cache_image = f"{repository_of(cache_tag)}@{fake_digest('cache', latest_image)}" if cache_tag else ""
        self._common(status, pod)
        status["buildMetadata"] = metadata
        status["latestImage"] = latest_image
        status["latestCacheImage"] = cache_image
        status["stack"] = {"runImage": stack_run_image, "id": builder.stack_id}
        status["lifecycleVersion"] = builder.lifecycle_version
        completion = go_json(
            {
                "buildpackMetadata": metadata,
                "latestCacheImage": cache_image,
                "latestImage": latest_image,
                "stackID": builder.stack_id,
                "stackRunImage": stack_run_image,
                "lifecycleVersion": builder.lifecycle_version,
            }
        )
        compressed = base64.b64encode(gzip.compress(completion.encode(), mtime=0)).decode()
        states = [self._terminated(pod, s, i) for i, s in enumerate(pod.steps)]
        states.append(self._terminated(pod, COMPLETION, len(pod.steps), message=compressed))
        status["stepStates"] = states
        status["stepsCompleted"] = [*pod.steps, COMPLETION]
        status["conditions"] = [condition("Succeeded", "True", "Completed")]

    # ------------------------------------------------------------------ the image
    def _processes(self, build: Obj) -> list[Process]:
        raw = _annotations(build).get(ANNOTATION_PROCESSES)
        if raw is None:
            return list(self.shared.options.processes)
        try:
            items = orjson.loads(raw)
            return [
                Process(
                    str(p["type"]),
                    str(p.get("command", "")),
                    tuple(str(a) for a in p.get("args") or ()),
                    bool(p.get("direct", False)),
                    bool(p.get("default", False)),
                )
                for p in items
            ]
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
            raise BuildFailure(
                "build", f"ERROR: failed to build: {ANNOTATION_PROCESSES} is not a JSON list of processes"
            ) from None

    def image_config(self, build: Obj, builder: BuilderImage, pod: Pod | None = None) -> Obj:
        """The config of the image a build pushes: labels as the CNB lifecycle writes them."""
        opts = self.shared.options
        meta = build["metadata"]
        spec = build.get("spec") or {}
        metadata = self._buildpacks(build, builder, pod)
        last_id = metadata[-1]["id"] if metadata else ""
        processes = self._processes(build)
        ports_value = _annotations(build).get(ANNOTATION_PORTS)
        ports = (
            [p.strip() for p in ports_value.split(",") if p.strip()]
            if ports_value
            else list(opts.exposed_ports)
        )
        default = next((p for p in processes if p.default), None) or next(
            (p for p in processes if p.type == "web"), None
        )
        run_image = (spec.get("runImage") or {}).get("image", "")
        labels = {
            BUILD_METADATA_LABEL: go_json(
                {
                    "processes": [p.label(last_id) for p in processes],
                    "buildpacks": metadata,
                    "launcher": {"version": builder.lifecycle_version, "source": {}},
                }
            ),
            "io.buildpacks.lifecycle.metadata": go_json(
                {
                    "runImage": {"reference": digest_of(run_image)},
                    "stack": {"runImage": {"image": run_image}},
                    "buildpacks": [{"key": m["id"], "version": m["version"]} for m in metadata],
                }
            ),
            "io.buildpacks.stack.id": builder.stack_id,
            "io.buildpacks.project.metadata": "{}",
            "sim.kpack.io/build": f"{meta['namespace']}/{meta['name']}",
        }
        config: Obj = {
            "User": f"{opts.stack_user_id}:{opts.stack_group_id}",
            "ExposedPorts": {p: {} for p in ports},
            "Env": [
                "CNB_APP_DIR=/workspace",
                "PATH=/cnb/process:/cnb/lifecycle:/usr/local/bin:/usr/bin:/bin",
            ],
            "WorkingDir": "/workspace",
            "Labels": labels,
        }
        if default is not None:
            config["Entrypoint"] = [f"/cnb/process/{default.type}"]
        return {"created": "1980-01-01T00:00:01Z", "config": config}

    @staticmethod
    def layer(build: Obj) -> bytes:
        """One small, deterministic tar layer naming the build."""
        content = go_json({"build": build["metadata"]["name"], "uid": build["metadata"]["uid"]}).encode()
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo("workspace/.kpack-sim-build.json")
            info.size, info.mtime, info.mode = len(content), 0, 0o644
            tar.addfile(info, io.BytesIO(content))
        return out.getvalue()

    def _our_tags(self, build: Obj) -> list[str]:
        """The Build's tags that go to the configured registry (the only ones really pushed)."""
        host = self.shared.options.registry
        if not host:
            return []
        tags = (build.get("spec") or {}).get("tags") or []
        return [t for t in tags if (ref := parse_tag(t)) is not None and ref.registry.name == host]

    async def _keychain(self, build: Obj) -> Keychain | None:
        """Credentials from the build's service account secrets (``secrets`` and ``imagePullSecrets``).

        A missing service account means no credentials, as k8schain has it; any other API error is
        raised for the caller to retry, since building without credentials would fail at export for a
        fault that a retry overcomes."""
        namespace = build["metadata"]["namespace"]
        name = (build.get("spec") or {}).get("serviceAccountName") or "default"
        try:
            _, secrets = await service_account_secrets(
                self.shared.client, namespace, name, fields=("secrets", "imagePullSecrets")
            )
        except errors.NotFound:
            return None
        try:
            keychain = Keychain.from_secrets(secrets)
        except KeychainError:
            return None
        return keychain if len(keychain) else None

    async def _push(self, build: Obj, builder: BuilderImage, pod: Pod) -> str:
        """Push the image to every tag in the configured registry; returns the digest of ``tags[0]`` (made
        up when that tag is in another registry)."""
        tags = (build.get("spec") or {}).get("tags") or []
        ours = self._our_tags(build)
        config = self.image_config(build, builder, pod)
        keychain = pod.keychain
        if not ours or self.registry is None:
            return fake_digest("image", build["metadata"]["uid"], tags[0] if tags else "")
        layer = self.layer(build)
        digests = {}
        for tag in ours:
            try:
                digests[tag] = await self.registry.push_image(tag, config, [layer], keychain=keychain)
            except RegistryError as exc:
                raise BuildFailure(
                    "export",
                    f"ERROR: failed to export: failed to write image to the following tags: [{tag}: {exc}]",
                ) from None
        log.info(
            "build %s/%s: pushed %s",
            build["metadata"]["namespace"],
            build["metadata"]["name"],
            ", ".join(ours),
        )
        return digests.get(tags[0]) or next(iter(digests.values()))


class BuildFailure(Exception):
    def __init__(self, step: str, log_line: str) -> None:
        super().__init__(log_line)
        self.step = step
        self.log_line = log_line
