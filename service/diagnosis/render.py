"""The diagnosis as text for a terminal: one block per link of the chain, then problems, next steps and notes.

Every value is on one line (messages keep their words, not their line breaks), so the output greps well;
``--output json`` is the same facts for programs.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.diagnosis.facts import (
    BuilderFacts,
    BuildFacts,
    Condition,
    Diagnosis,
    ImageFacts,
    Obj,
    WorkloadFacts,
)

WIDTH = 12  # the label column


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _row(label: str, value: object) -> str:
    return f"  {label:<{WIDTH}}{_one_line(value)}".rstrip()


def _condition(condition: Condition, width: int = WIDTH) -> str:
    width = max(width, len(condition.type) + 1)
    why = _one_line(": ".join(part for part in (condition.reason, condition.message) if part))
    return f"  {condition.type:<{width}}{condition.status:<8}{why}".rstrip()


def _conditions(conditions: Iterable[Condition | None], missing: str) -> list[str]:
    present = [c for c in conditions if c is not None]
    # kpack's longer types (BuilderUpToDate) widen the label column of their block.
    width = max([WIDTH, *(len(c.type) + 1 for c in present)])
    return [_condition(c, width) for c in present] or [_row("status", missing)]


def _droplet(droplet: Obj) -> str:
    registry = droplet.get("registry") or {}
    parts = [str(registry.get("image", "?"))]
    if droplet.get("stack"):
        parts.append(f"stack {droplet['stack']}")
    types = [str(p.get("type")) for p in droplet.get("processTypes") or () if isinstance(p, dict)]
    if types:
        parts.append(f"processes {', '.join(types)}")
    if droplet.get("cacheImage"):
        parts.append(f"cache {droplet['cacheImage']}")
    return "; ".join(parts)


def _provenance(provenance: Obj) -> list[str]:
    rows = [_row("provenance", f"{provenance.get('image', '?')} ({provenance.get('size', '?')} bytes)")]
    stack = provenance.get("stack") or {}
    if stack:
        rows.append(_row("", f"stack {stack.get('id', '?')}, run image {stack.get('runImage', '?')}"))
    buildpacks = [
        f"{b.get('id')}@{b.get('version')}" for b in provenance.get("buildpacks") or () if isinstance(b, dict)
    ]
    if buildpacks:
        rows.append(_row("", f"buildpacks {', '.join(buildpacks)}"))
    kpack_build = provenance.get("kpackBuild") or {}
    if kpack_build:
        rows.append(
            _row("", f"kpack Build {kpack_build.get('name', '?')} (reason {kpack_build.get('reason', '?')})")
        )
    return rows


def workload_block(w: WorkloadFacts) -> list[str]:
    about = [f"app {w.app_guid}" if w.app_guid else "no app-guid label"]
    if w.image_generation:
        about.append(f"Image generation {w.image_generation}")
    if w.deleting:
        about.append("being deleted")
    lines = [f"BuildWorkload {w.namespace}/{w.name} ({', '.join(about)})"]
    lines += _conditions((w.succeeded, w.ready), "no conditions yet")
    if w.cancel_requested:
        lines.append(_row("cancel", "requested"))
    if w.failed_at:
        lines.append(
            _row("failed at", f"pod {w.failed_at.get('pod')}, container {w.failed_at.get('container')}")
        )
    if w.droplet:
        lines.append(_row("droplet", _droplet(w.droplet)))
    if w.provenance:
        lines += _provenance(w.provenance)
    return lines


def image_block(image: ImageFacts) -> list[str]:
    title = f"kpack Image {image.namespace}/{image.name}"
    if not image.found:
        return [f"{title}: {'unreadable: ' + image.error if image.error else 'not found'}"]
    lines = [f"{title} (generation {image.generation})"]
    lines += _conditions(
        [image.ready] + [c for c in image.conditions if c.type != "Ready"], "no conditions yet"
    )
    lines.append(_row("builder", image.builder or "none"))
    lines.append(_row("cache", image.cache or "none"))
    if image.latest_image:
        lines.append(_row("latest", image.latest_image))
    return lines


def builder_block(builder: BuilderFacts) -> list[str]:
    title = f"{builder.ref} (from {builder.origin})"
    if not builder.found:
        return [f"{title}: {'unreadable: ' + builder.error if builder.error else 'not found'}"]
    return [
        title,
        *_conditions(
            [builder.ready] + [c for c in builder.conditions if c.type != "Ready"], "no conditions yet"
        ),
    ]


def build_block(build: BuildFacts, remark: str = "") -> list[str]:
    about = [f"build {build.number or '?'} of Image generation {build.generation}"]
    if remark:
        about.append(remark)
    if build.builds_for_generation > 1:
        about.append(f"the newest of {build.builds_for_generation}")
    if build.reason:
        about.append(f"kpack's reason {build.reason}")
    lines = [f"kpack Build {build.namespace}/{build.name} ({', '.join(about)})"]
    lines += _conditions((build.succeeded,), "not started yet")
    if build.stopped_for:
        lines.append(_row("stopped", f"by the service, for workload {build.stopped_for}"))
    step = build.failed_step
    if step is not None:
        code = f" (exit code {step.exit_code})" if step.exit_code is not None else ""
        lines.append(_row("failed step", f"{step.container}{code}: {step.logs_command}"))
    pod = build.pod
    if pod is None:
        lines.append(_row("pod", build.pod_name or "none yet"))
    elif not pod.found:
        lines.append(_row("pod", f"{pod.name}: {'unreadable: ' + pod.error if pod.error else 'not found'}"))
    else:
        lines.append(_row("pod", f"{pod.name}: {pod.phase or 'no phase yet'}"))
        if pod.scheduled is not None and pod.scheduled.status != "True":
            lines.append(_condition(pod.scheduled))
        if pod.waiting is not None:
            waiting = ": ".join(p for p in (pod.waiting.reason, pod.waiting.message) if p)
            lines.append(_row("waiting", f"{pod.waiting.container}: {waiting}"))
    return lines


def render(d: Diagnosis) -> str:
    lines = workload_block(d.workload)
    if d.image is not None:
        lines += image_block(d.image)
    if d.builder is not None:
        lines += builder_block(d.builder)
    if d.build is not None:
        lines += build_block(d.build)
    if d.earlier_build is not None:
        lines += build_block(d.earlier_build, "still running, before this workload's")
    for title, items in (("Problems", d.problems), ("Next", d.next), ("Notes", d.notes)):
        if items:
            lines.append(f"{title}:")
            lines += [f"  - {_one_line(item)}" for item in items]
    lines.append("healthy" if d.healthy else "not healthy")
    return "\n".join(lines) + "\n"
