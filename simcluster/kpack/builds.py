"""kpack's Build reconciler, with a simulated build pod.

Of a build, the service under test reads the Build's status and the image it pushed (the droplet's
processes and ports come from the image config), and may delete the build pod to stop a build; all three
must be what kpack and the CNB lifecycle would produce. A Build gets a real core/v1 Pod
(``<build>-build-pod``, ``pods.pod_object``) on its first reconcile, and the simulator plays the kubelet:
it writes the pod's status (``pods/status``) as the run goes — every step waiting while it initializes;
after the build's duration, every container terminated (success) or the failing step's exit code
(failure) — and derives the Build's status from that pod as kpack does (kpack.md §3.7, §8.4, §8.5).
Success writes what kpack reads from the completion container's message: the image digest, the run image
(the builder's run-image digest under its repository), the builder's lifecycle version and the detected
buildpacks (a rebase keeps those of the image it rebases, §3.4). A successful build really pushes an image
(a config with the ``io.buildpacks.build.metadata`` label and exposed ports, one small layer) to every
``spec.tags`` entry in the configured registry.

The pod follows kpack's rules. A pod deleted while its Build still runs is made again (a new uid) and the
run starts from zero; the simulator learns of the deletion from an informer on pods labelled
``kpack.io/build``. Once the Build's ``Succeeded`` is ``True`` or ``False`` — whoever wrote it: a client
cancels a build by writing ``False`` — neither the Build nor its pod is touched again and nothing is
pushed: the Build is read from the API (not the cache) before a push and before a pod is made again. The
``sim.kpack.io/pod-pending`` annotation holds the run (its clock stops) with the pod unschedulable, its
image pull backing off, or never created (a quota refuses it), until the annotation goes.

Credentials are read as kpack reads them: when the build pod is made (the pod mounts the service
account's secrets), not at export. A failing read of the service account or its Secrets (a 5xx, a 429, a
timeout) leaves the Build without a pod and requeues it with backoff, as kpack's reconciler returns the
error to its work queue; only a missing service account means building without credentials. A pod the
API refuses (a quota, a missing service account on kube-apiserver) is retried the same way, with no Build
status written. The retry is a delayed requeue, never a wait inside the reconcile, so the controller's few
workers stay free for the other builds; it ends with the Build (deleted or finished) or with the simulator.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import random
import tarfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from service.kube import errors
from service.kube import resources as r
from service.registry.auth import Keychain
from service.registry.client import RegistryClient
from service.registry.errors import KeychainError, RegistryError
from service.registry.k8schain import service_account_secrets
from service.runtime import Request, Result, index_value
from simcluster.kpack import apis, gotypes, pods
from simcluster.kpack.base import Obj, Shared, condition, go_json, log
from simcluster.kpack.builders import BuilderImage, builder_image_from_status
from simcluster.kpack.images import BUILDS_BY_IMAGE, IMAGE_LABEL, REASON, is_running
from simcluster.kpack.options import (
    ANNOTATION_BUILD_SECONDS,
    ANNOTATION_DETECT,
    ANNOTATION_FAIL,
    ANNOTATION_POD_PENDING,
    ANNOTATION_PORTS,
    ANNOTATION_PROCESSES,
    ENV_BUILD_SECONDS,
    ENV_FAIL,
    ENV_POD_PENDING,
    Process,
)
from simcluster.kpack.pods import COMPLETION, REBASE_STEPS, STEPS, PodPending, Timeline
from simcluster.kpack.refs import child_name, digest_of, fake_digest, parse_tag, repository_of

__all__ = ["COMPLETION", "FAILURES", "REBASE_STEPS", "STEPS", "BuildController", "BuildFailure"]

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
# Requeue delays while a build's credentials cannot be read or its pod cannot be made: doubling from the
# first, capped (seconds).
CREDENTIALS_RETRY_FIRST = 0.05
CREDENTIALS_RETRY_CAP = 2.0
# How often a Build whose builder image the simulator does not know looks again (nothing else wakes it).
UNKNOWN_BUILDER_RETRY = 1.0


@dataclass
class Run:
    """One Build's simulated run, and the pod it goes with."""

    uid: str  # of the Build: a Build recreated under the same name gets a new run
    name: str  # of the pod
    duration: float
    steps: tuple[str, ...]
    fail_step: str | None  # where this pod fails (a failed push moves it to export)
    failure_log: str = ""
    planned_failure: str | None = None  # where every pod of the run fails, as decided at its start
    keychain: Keychain | None = None  # the service account's registry credentials, read at creation
    rebased: list[Obj] | None = None  # a rebase: the buildpacks of the image it rebases, which it keeps
    pod_uid: str | None = None  # the API pod of this run (None: not made yet)
    pod_gone: bool = False  # that pod was deleted: the next reconcile makes another
    images: dict[str, str] = field(default_factory=dict)  # container name -> image, from the pod's spec
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ids: dict[str, str] = field(default_factory=dict)  # container name -> containerID
    elapsed: float = 0.0  # seconds run before ``resumed``
    resumed: float | None = None  # monotonic time the clock last started; None while held
    written: str | None = None  # which pod status was last written (a key: no write when unchanged)
    final: tuple[Obj, str] | None = None  # the pod's last status and its key, once the run has ended

    def clock(self, now: float, *, held: bool) -> float:
        """Seconds run so far; the clock stops while ``held``."""
        if held and self.resumed is not None:
            self.elapsed += now - self.resumed
            self.resumed = None
        elif not held and self.resumed is None:
            self.resumed = now
        return self.elapsed + (now - self.resumed if self.resumed is not None else 0.0)

    def timeline(self) -> Timeline:
        return Timeline(self.steps, self.started_at, self.duration, self.ids)

    def restart(self, pod: Obj) -> None:
        """A new pod: the run starts again from zero."""
        meta = pod["metadata"]
        self.pod_uid = meta["uid"]
        self.pod_gone = False
        self.images = pods.images_of(pod)
        self.started_at = datetime.now(UTC)
        self.ids = {
            s: "containerd://" + fake_digest(meta["uid"], s)[len("sha256:") :]
            for s in (*self.steps, COMPLETION)
        }
        self.elapsed, self.resumed, self.written, self.final = 0.0, None, None, None
        self.fail_step, self.failure_log = self.planned_failure, ""


def _annotations(build: Obj) -> dict[str, str]:
    return dict(build["metadata"].get("annotations") or {})


def _knob(build: Obj, annotation: str, env_name: str) -> str | None:
    """A simulator knob of this Build: its annotation, else its build environment variable."""
    value = _annotations(build).get(annotation)
    if value is not None:
        return value
    for entry in (build.get("spec") or {}).get("env") or ():
        if isinstance(entry, dict) and entry.get("name") == env_name:
            return str(entry.get("value") or "")
    return None


def _builder_ref(build: Obj) -> str:
    return str(((build.get("spec") or {}).get("builder") or {}).get("image", ""))


class BuildController:
    def __init__(self, shared: Shared, registry: RegistryClient | None = None) -> None:
        self.shared = shared
        self.registry = registry
        self.runs: dict[tuple[str, str], Run] = {}  # by the Build's namespace and name
        # Builds whose credentials could not be read yet, or whose pod the API refused: (the Build's uid,
        # failed attempts so far).
        self.credential_failures: dict[tuple[str, str], tuple[str, int]] = {}
        self.pod_failures: dict[tuple[str, str], tuple[str, int]] = {}

    # ------------------------------------------------------------------ the simulated run
    def _fail_step(self, build: Obj, steps: tuple[str, ...]) -> str | None:
        value = str(_knob(build, ANNOTATION_FAIL, ENV_FAIL) or "").strip().lower()
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

    def _existing_run(self, build: Obj) -> Run | None:
        meta = build["metadata"]
        run = self.runs.get((meta["namespace"], meta["name"]))
        return run if run is not None and run.uid == meta["uid"] else None

    def _run(self, build: Obj, keychain: Keychain | None = None) -> Run:
        meta = build["metadata"]
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
                _knob(build, ANNOTATION_BUILD_SECONDS, ENV_BUILD_SECONDS) or self.shared.options.build_seconds
            )
        except ValueError:
            duration = self.shared.options.build_seconds
        run = Run(
            meta["uid"],
            child_name(meta["name"], "-build-pod"),
            max(0.0, duration),
            steps,
            self._fail_step(build, steps),
            keychain=keychain,
        )
        run.planned_failure = run.fail_step
        if rebase:
            run.rebased = self._rebased_buildpacks(build)
        self.runs[(meta["namespace"], meta["name"])] = run
        return run

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

    def _buildpacks(self, build: Obj, builder: BuilderImage, run: Run | None) -> list[Obj]:
        """The buildpacks the build ran: those it rebases, else those it detects."""
        if run is not None and run.rebased is not None:
            return run.rebased
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

    # ------------------------------------------------------------------ the pod's life
    def pod_deleted(self, pod: Obj, state_unknown: bool = False) -> None:
        """Informer callback: the pod of a run is gone (the controller's own watch then reconciles its
        Build, which makes another)."""
        meta = pod["metadata"]
        build = (meta.get("labels") or {}).get(pods.BUILD_LABEL, "")
        run = self.runs.get((meta.get("namespace", ""), build))
        if run is not None and run.pod_uid == meta.get("uid"):
            run.pod_gone = True

    async def _still_running(self, build: Obj) -> bool:
        """The Build as the API has it now (not as the cache may still have it) still runs."""
        meta = build["metadata"]
        try:
            current = await self.shared.client.get(r.BUILD, meta["name"], meta["namespace"])
        except errors.NotFound:
            return False
        return current["metadata"]["uid"] == meta["uid"] and is_running(current)

    async def _make_pod(self, build: Obj, run: Run) -> None:
        """Create the run's pod; one that exists already and is this Build's is taken over (a simulator
        restarted: a pod still running starts again, one that ended is read), anyone else's is an error
        (retried: it waits for the collector)."""
        meta = build["metadata"]
        ns = meta["namespace"]
        body = pods.pod_object(build, run.name, run.steps, _builder_ref(build))
        try:
            pod = await self.shared.client.create(r.POD, body, ns)
        except errors.AlreadyExists:
            pod = await self.shared.client.get(r.POD, run.name, ns)
            owners = [o.get("uid") for o in pod["metadata"].get("ownerReferences") or ()]
            if meta["uid"] not in owners:
                raise
        run.restart(pod)
        status = pod.get("status") or {}
        phase = str(status.get("phase", ""))
        if phase in ("Succeeded", "Failed"):
            # It ended before the simulator restarted: the Build is read from it, as kpack would.
            failed = pods.failed_step(status)
            if failed is not None and failed[0] in FAILURES:
                run.fail_step, run.failure_log = failed[0], FAILURES[failed[0]][1]
            run.final = (status, phase)
            run.written = phase

    def _retry(
        self, build: Obj, failures_by_build: dict[tuple[str, str], tuple[str, int]], what: str, why: object
    ) -> Result:
        """No pod yet: requeue the Build after a delay that doubles with each failure (kpack's work queue
        backs off the same way), with no status written, as kpack writes none without a pod."""
        meta = build["metadata"]
        key = (meta["namespace"], meta["name"])
        uid, failures = failures_by_build.get(key, (meta["uid"], 0))
        if uid != meta["uid"]:
            failures = 0  # a Build recreated under the same name starts afresh
        failures_by_build[key] = (meta["uid"], failures + 1)
        delay = min(CREDENTIALS_RETRY_CAP, CREDENTIALS_RETRY_FIRST * 2**failures)
        log.info(
            "build %s/%s: %s (%s); retrying in %.2f s", meta["namespace"], meta["name"], what, why, delay
        )
        return Result(requeue_after=delay)

    def _forget(self, key: tuple[str, str]) -> None:
        self.runs.pop(key, None)
        self.credential_failures.pop(key, None)
        self.pod_failures.pop(key, None)

    # ------------------------------------------------------------------ reconcile
    async def reconcile(self, request: Request) -> Result | None:
        build = self.shared.get("builds", request.namespace, request.name)
        key = (request.namespace, request.name)
        if build is None or not is_running(build):
            self._forget(key)  # finished, by anyone: kpack never touches it or its pod again
            return None
        run = self._existing_run(build)
        if run is None:
            try:
                keychain = await self._keychain(build) if self._our_tags(build) else None
            except errors.ApiError as exc:
                return self._retry(
                    build, self.credential_failures, "cannot read its service account's credentials", exc
                )
            self.credential_failures.pop(key, None)
            run = self._run(build, keychain)
        knob = _knob(build, ANNOTATION_POD_PENDING, ENV_POD_PENDING)
        pending = pods.pod_pending({ANNOTATION_POD_PENDING: knob} if knob is not None else {})
        if run.pod_uid is None or run.pod_gone:
            if run.pod_gone and not await self._still_running(build):
                self._forget(key)
                return None
            if pending is not None and pending.state == pods.QUOTA:
                return self._retry(
                    build, self.pod_failures, "cannot create its pod", pods.quota_message(run.name, pending)
                )
            try:
                await self._make_pod(build, run)
            except (errors.Forbidden, errors.Invalid, errors.AlreadyExists) as exc:
                return self._retry(build, self.pod_failures, "cannot create its pod", exc)
            self.pod_failures.pop(key, None)
        if run.final is not None:
            return await self._write(build, run, *run.final)  # ended; a status write is being retried
        builder = self._builder_image(build)
        held = pending is not None or builder is None
        remaining = run.duration - run.clock(time.monotonic(), held=held)
        if held:
            status, state = self._held(run, pending, _builder_ref(build))
            result = await self._write(build, run, status, state)
            # Nothing wakes a Build when its builder becomes known: it looks again.
            return Result(requeue_after=UNKNOWN_BUILDER_RETRY) if pending is None else result
        if remaining > 0:
            await self._write(build, run, pods.initializing(run.timeline(), run.images), "initializing")
            return Result(requeue_after=remaining)
        assert builder is not None
        if not await self._still_running(build):
            self._forget(key)  # made terminal by someone else meanwhile: no push, the pod left alone
            return None
        status, state = await self._end(build, run, builder)
        run.final = (status, state)
        return await self._write(build, run, status, state)

    def _held(self, run: Run, pending: PodPending | None, image: str) -> tuple[Obj, str]:
        """The pod's status while it cannot start (the knob, or a builder image nobody can pull)."""
        if pending is not None and pending.state == pods.UNSCHEDULABLE:
            message = pending.message or pods.UNSCHEDULABLE_MESSAGE
            return pods.unschedulable(message), f"unschedulable/{message}"
        if pending is None or pending.state == pods.IMAGE_PULL:
            message = (pending.message if pending else "") or f'Back-off pulling image "{image}"'
            return pods.image_pull_back_off(run.timeline(), run.images, message), f"image-pull/{message}"
        return pods.initializing(run.timeline(), run.images), "initializing"  # quota, once the pod exists

    async def _end(self, build: Obj, run: Run, builder: BuilderImage) -> tuple[Obj, str]:
        """Run to the end: push the image, or fail; the pod's final status."""
        if run.fail_step is None:
            try:
                digest = await self._push(build, builder, run)
            except BuildFailure as exc:
                run.fail_step = exc.step if exc.step in run.steps else run.steps[-1]
                run.failure_log = exc.log_line
            else:
                message = self._completion_message(build, builder, run, digest)
                return pods.succeeded(run.timeline(), run.images, message), "succeeded"
        assert run.fail_step is not None
        exit_code, log_line = FAILURES[run.fail_step]
        run.failure_log = run.failure_log or log_line
        return pods.failed(run.timeline(), run.images, run.fail_step, exit_code), "failed"

    async def _write(self, build: Obj, run: Run, pod_status: Obj, state: str) -> Result | None:
        """Write the pod's status (as the kubelet would), then the Build's as kpack reads it from the pod."""
        meta = build["metadata"]
        if run.written != state:
            try:
                await self.shared.client.patch_status(
                    r.POD, run.name, {"status": pod_status}, meta["namespace"]
                )
            except errors.NotFound:
                run.pod_gone = True  # deleted under the run: the next reconcile makes another
                return Result(requeue=True)
            run.written = state
        status = gotypes.decode(apis.BUILD.field_type("status"), build.get("status") or {})
        self._from_pod(status, run, build, pod_status)
        await self.shared.write_status(r.BUILD, apis.BUILD, build, status)
        return None

    # ------------------------------------------------------------------ the Build's status, from the pod
    def _from_pod(self, status: Obj, run: Run, build: Obj, pod: Obj) -> None:
        """kpack's reading of the pod (kpack.md §3.7)."""
        status["podName"] = run.name
        status["stack"] = {"runImage": "", "id": ""}
        status["lifecycleVersion"] = ""
        status["latestImage"] = ""
        status["latestCacheImage"] = ""
        status["buildMetadata"] = None
        status["stepStates"] = pods.step_states(pod, run.steps)
        status["stepsCompleted"] = pods.steps_completed(pod, run.steps)
        phase = pod.get("phase")
        if phase == "Succeeded":
            metadata = _decode_completion(pods.completion_message(pod))
            status["buildMetadata"] = metadata.get("buildpackMetadata")
            status["latestImage"] = metadata.get("latestImage", "")
            status["latestCacheImage"] = metadata.get("latestCacheImage", "")
            status["stack"] = {
                "runImage": metadata.get("stackRunImage", ""),
                "id": metadata.get("stackID", ""),
            }
            status["lifecycleVersion"] = metadata.get("lifecycleVersion", "")
            status["conditions"] = [condition("Succeeded", "True", "Completed")]
            return
        failed = pods.failed_step(pod) if phase == "Failed" else None
        if failed is not None:
            step, terminated = failed
            namespace = build["metadata"]["namespace"]
            message = (
                f"Error: {pod.get('message', '')} {terminated.get('message', '')} {run.failure_log}: "
                f"For more info use `kubectl logs -n {namespace} {run.name} -c {step}`"
            )
            status["conditions"] = [condition("Succeeded", "False", "Failed", message)]
            return
        if phase == "Failed":
            status["conditions"] = [condition("Succeeded", "False", "Failed", str(pod.get("message", "")))]
            return
        waiting = pods.first_waiting_init(pod) if phase == "Pending" else None
        reason, message = waiting or ("", "")
        status["conditions"] = [condition("Succeeded", "Unknown", reason, message)]

    def _completion_message(self, build: Obj, builder: BuilderImage, run: Run, digest: str) -> str:
        """What the completion container writes as its termination message: the build's metadata, as
        gzipped JSON in base64."""
        spec = build.get("spec") or {}
        tags = spec.get("tags") or []
        run_image = (spec.get("runImage") or {}).get("image", "")
        cache_tag = ((spec.get("cache") or {}).get("registry") or {}).get("tag", "")
        latest_image = f"{repository_of(tags[0])}@{digest}"
        stack_run_image = f"{repository_of(run_image)}@{digest_of(run_image)}" if run_image else ""
        cache_image = f"{repository_of(cache_tag)}@{fake_digest('cache', latest_image)}" if cache_tag else ""
        completion = go_json(
            {
                "buildpackMetadata": self._buildpacks(build, builder, run),
                "latestCacheImage": cache_image,
                "latestImage": latest_image,
                "stackID": builder.stack_id,
                "stackRunImage": stack_run_image,
                "lifecycleVersion": builder.lifecycle_version,
            }
        )
        return base64.b64encode(gzip.compress(completion.encode(), mtime=0)).decode()

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

    def image_config(self, build: Obj, builder: BuilderImage, run: Run | None = None) -> Obj:
        """The config of the image a build pushes: labels as the CNB lifecycle writes them."""
        opts = self.shared.options
        meta = build["metadata"]
        spec = build.get("spec") or {}
        metadata = self._buildpacks(build, builder, run)
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

    async def _push(self, build: Obj, builder: BuilderImage, run: Run) -> str:
        """Push the image to every tag in the configured registry; returns the digest of ``tags[0]`` (made
        up when that tag is in another registry)."""
        tags = (build.get("spec") or {}).get("tags") or []
        ours = self._our_tags(build)
        config = self.image_config(build, builder, run)
        keychain = run.keychain
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


def _decode_completion(message: str) -> Obj:
    try:
        value = orjson.loads(gzip.decompress(base64.b64decode(message)))
    except (binascii.Error, OSError, EOFError, orjson.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
