"""The invariants a soak checks once everything has settled, each failure with its evidence, and the figures.

Design: the checks judge only what the run recorded (``Record``), the cluster's objects at the end
(``Snapshot``) and the registry's contents, never a live process, so that they are deterministic and can be
tested on a record filled by hand. A broken invariant names the objects concerned and what a developer
needs to act without rerunning: the conditions and what kpack's Build said, the registry's tags, the log
file and line of a traceback, the Lease's holder at the time, a freeze nearby. Every invariant is recorded
as checked even when it holds, so a run that evaluated fewer than planned shows it. Figures (outcomes,
latencies, handovers, overlaps, fault hits, ...) come out of the same pass, for the report and
docs/reliability.md's table.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

from service.reconcilers import korifi as k
from service.runtime.leader import JITTER
from simcluster.registry import RunningRegistry
from tests.chaos.soak.observe import Overlap, overlaps, percentile, state, succeeded
from tests.chaos.soak.record import Record, Replica, Snapshot
from tests.chaos.soak.report import SoakReport, Violation
from tests.chaos.soak.scenario import (
    DELETE_DONE,
    DOOMED,
    DOOMED_SPACE,
    HANG_SPACE,
    INVALID,
    PROBE,
    Obj,
    Workload,
)


def check(record: Record, snap: Snapshot, registry: RunningRegistry, chaos_seconds: float) -> SoakReport:
    """Every invariant over what the run recorded and left, in a report with the figures."""
    checks = _Checks(record, snap, registry)
    checks.end_states()
    checks.objects()
    checks.droplets()
    checks.processes()
    checks.leadership()
    checks.late_phase()
    figures = checks.figures(chaos_seconds)
    return SoakReport(record.s, record.workdir, checks.violations, checks.checked, figures, record.timeline)


class _Checks:
    """One pass of the checks; each method evaluates a group of invariants (in the report's order) and
    keeps what the figures need."""

    def __init__(self, record: Record, snap: Snapshot, registry: RunningRegistry) -> None:
        self.rec = record
        self.s = record.s
        self.snap = snap
        self.registry = registry
        self.violations: list[Violation] = []
        self.checked: list[str] = []
        self.created = [w for w in record.workloads if w.name in record.created]
        self.survivors = [w for w in self.created if not w.deleted]
        self.gone = [w for w in self.created if w.deleted]
        self.gone_apps = {(w.namespace, w.app) for w in self.gone}
        # for the figures
        self.outcomes: Counter[str] = Counter()
        self.error_lines: Counter[str] = Counter()
        self.lines_read = 0
        self.overlaps: list[Overlap] = []
        self.foreign_total = 0.0
        self.late_latency: dict[str, float] = {}

    def invariant(self, name: str, summary: str, details: list[str]) -> None:
        self.checked.append(name)
        if details:
            self.violations.append(Violation(name, summary.replace("{n}", str(len(details))), details))

    def end_states(self) -> None:
        """Terminal states as planned; nothing stuck."""
        rec, s, snap, survivors = self.rec, self.s, self.snap, self.survivors
        # 1. terminal states as planned
        wrong = []
        outcomes = self.outcomes
        for w in survivors:
            obj = snap.workloads.get((w.namespace, w.name))
            c = succeeded(obj)
            got = (c.get("status"), c.get("reason"))
            outcomes[f"{got[0]}/{got[1]}"] += 1
            expected = w.expected
            assert expected is not None
            if got[0] in ("True", "False") and got != expected:
                line = f"{w.describe()}: expected {'/'.join(expected)}, got {state(obj)}"
                if got[1] == k.BUILD_FAILED or expected[1] == k.BUILD_FAILED:
                    line += f"; {_kpack_says(snap, w)}"
                wrong.append(line)
        reasons = Counter(
            re.sub(r"^.*?: expected ([^,]+), got (\S+).*$", r"\2 where \1 was expected", d) for d in wrong
        )
        self.invariant(
            "terminal-states",
            f"{{n}} of {len(survivors)} surviving workloads ended in the wrong state ("
            + ", ".join(f"{c} x {what}" for what, c in reasons.most_common())
            + ")",
            wrong,
        )

        # 2. nothing stuck
        self.invariant(
            "none-stuck",
            f"{{n}} things had not reached their end state {s.settle_seconds:g} s after the chaos stopped",
            [f"{item}: {what}" for item, what in sorted(rec.stuck.items())],
        )

    def objects(self) -> None:
        """One kpack Image per app and one Builder per buildpack list; no Build left of what was deleted."""
        snap, survivors, gone_apps = self.snap, self.survivors, self.gone_apps
        # 3. one kpack Image per app, none for what was deleted
        images: dict[tuple[str, str], list[Obj]] = defaultdict(list)
        for img in snap.images:
            if img["metadata"]["namespace"] != HANG_SPACE:
                images[(img["metadata"]["namespace"], img["metadata"]["name"])].append(img)
        want_images = {(w.namespace, w.app) for w in survivors if w.makes_image}
        image_problems = [f"{ns}/{app}: no kpack Image" for ns, app in sorted(want_images - images.keys())]
        image_problems += [
            f"{ns}/{app}: {len(found)} kpack Images"
            for (ns, app), found in sorted(images.items())
            if len(found) > 1
        ]
        image_problems += [
            f"{ns}/{app}: kpack Image left for a deleted app"
            if (ns, app) in gone_apps
            else f"{ns}/{app}: kpack Image for no planned app"
            for ns, app in sorted(images.keys() - want_images)
        ]
        self.invariant(
            "one-image-per-app",
            "{n} apps without exactly one kpack Image, or Images left over",
            image_problems,
        )

        # 4. one Builder per buildpack list and namespace, none left for deleted workloads only
        builders: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
        for b in snap.builders:
            order = tuple(
                g["id"]
                for entry in (b.get("spec") or {}).get("order") or ()
                for g in entry.get("group") or ()
            )
            builders[(b["metadata"]["namespace"], order)].append(b["metadata"]["name"])
        want_builders = {(w.namespace, w.buildpacks) for w in survivors if w.buildpacks and w.kind != INVALID}
        builder_problems = [
            f"{ns}: {len(names)} Builders for [{', '.join(order)}]: {', '.join(sorted(names))}"
            for (ns, order), names in sorted(builders.items())
            if len(names) > 1
        ]
        builder_problems += [
            f"{ns}: no Builder for [{', '.join(order)}]"
            for ns, order in sorted(want_builders - builders.keys())
        ]
        builder_problems += [
            f"{ns}: Builder {', '.join(builders[(ns, order)])} for [{', '.join(order)}] left when every workload using it was deleted"
            for ns, order in sorted(builders.keys() - want_builders)
        ]
        self.invariant("no-duplicate-builders", "{n} custom Builder problems", builder_problems)

        # 5. no Build left for deleted workloads or the deleted namespace
        leftover = []
        for b in snap.builds:
            meta = b["metadata"]
            if (meta["namespace"], (meta.get("labels") or {}).get(k.KPACK_IMAGE_LABEL, "")) in gone_apps:
                leftover.append(
                    f"{meta['namespace']}/{meta['name']}: deletionTimestamp {meta.get('deletionTimestamp')}, "
                    f"finalizers {meta.get('finalizers')}, {state(b)}"
                )
        self.invariant("no-leftover-builds", "{n} kpack Builds left for deleted workloads", leftover)

    def droplets(self) -> None:
        """No droplet left of what was deleted; every succeeded workload's droplet there."""
        rec, snap, survivors, gone, gone_apps = self.rec, self.snap, self.survivors, self.gone, self.gone_apps
        # 6. no droplet left in the registry for deleted workloads or the deleted namespace
        registry = self.registry.registry
        leaked = []
        for ns, app in sorted(gone_apps):
            repo = f"cf/{app}-droplets"
            tags = registry.tags(repo)
            if tags:
                who = ", ".join(
                    f"{w.name} deleted {rec.deleted_while.get(w.name, '?')}" for w in gone if w.app == app
                )
                leaked.append(f"{self.registry.host}/{repo} ({ns}; {who}): tags {sorted(tags)} still there")
        doomed = [w for w in gone if w.kind == DOOMED]
        leaked_doomed = sum(1 for d in leaked if f"({DOOMED_SPACE};" in d)
        self.invariant(
            "no-leaked-droplets",
            f"{{n}} deleted apps left droplet tags in the registry ({leaked_doomed} of {len(doomed)} in the deleted "
            f"namespace {DOOMED_SPACE})",
            leaked,
        )

        # 7. every succeeded workload's droplet is in the registry
        missing = []
        for w in survivors:
            obj = snap.workloads.get((w.namespace, w.name))
            if succeeded(obj).get("status") != "True":
                continue
            image = ((((obj or {}).get("status") or {}).get("droplet") or {}).get("registry") or {}).get(
                "image", ""
            )
            repo, _, digest = image.partition("@")
            path = repo.partition("/")[2]
            if not digest or registry.manifest(path, digest) is None:
                missing.append(f"{w.describe()}: droplet {image or '(none)'} not in the registry")
        self.invariant(
            "droplets-present", "{n} succeeded workloads whose droplet is not in the registry", missing
        )

    def processes(self) -> None:
        """No traceback in any log; every SIGTERMed replica exited 0."""
        rec = self.rec
        # 8. no traceback in any replica's log
        tracebacks, self.error_lines, self.lines_read = scan_logs(rec.replicas)
        self.invariant("no-tracebacks", "{n} kinds of traceback in the replicas' logs", tracebacks)

        # 9. SIGTERMed replicas exit 0
        bad_exits = []
        for rep in rec.replicas:
            termed = [at for at, name in rep.signals if name == "SIGTERM"]
            if not termed or "SIGKILL" in {n for _, n in rep.signals}:
                continue
            if rep.exit_code != 0:
                waited = f"{rep.exited_at - termed[0]:.1f} s" if rep.exited_at is not None else "never"
                bad_exits.append(
                    f"{rep.pod_name} ({rep.log_path.name}): SIGTERM at t+{termed[0]:.1f}s, exit {rep.exit_code} after {waited}"
                )
        self.invariant("sigterm-exits-0", "{n} replicas did not exit 0 after SIGTERM", bad_exits)

    def leadership(self) -> None:
        """One leader at a time, reconciles only by the holder, handovers after SIGKILL in time."""
        rec, s = self.rec, self.s
        # 10. never two leaders for longer than a retry period (by their own metrics)
        timelines = {rep.pod_name: rep.samples for rep in rec.replicas}
        self.overlaps = overlaps(timelines)
        too_long = [o for o in self.overlaps if o.seconds > s.retry_period]

        def near_freeze(o: Overlap) -> str:
            for name, stopped, resumed in rec.freezes:
                if name in (o.a, o.b) and stopped - 1 <= o.start <= resumed + 10:
                    return f"; {name} was SIGSTOPped t+{stopped:.1f}s..t+{resumed:.1f}s"
            return ""

        self.invariant(
            "single-leader",
            f"two replicas reported leader_election_master_status 1 at once for longer than the retry period "
            f"({s.retry_period:g} s) {{n}} times",
            [
                f"{o.a} and {o.b} both leading from t+{o.start:.2f}s to t+{o.end:.2f}s ({o.seconds:.2f} s); Lease "
                f"holder then: {_pod(rec, rec.holder_at(o.start))}{near_freeze(o)}"
                for o in too_long
            ],
        )

        # 11. reconciles only by the Lease's holder (allowing the watch a second to report a new holder)
        foreign: list[str] = []
        for rep in rec.replicas:
            done = [x for x in rep.samples if x.reconciles is not None]
            for before, after in itertools.pairwise(done):
                grew = (after.reconciles or 0) - (before.reconciles or 0)
                if grew <= 0:
                    continue
                holders = {h for t, h in rec.lease_history if before.t - 1.0 <= t <= after.t + 1.0}
                holders.add(rec.holder_at(before.t - 1.0))
                if any(rep.owns(h) for h in holders) or "" in holders:
                    continue
                self.foreign_total += grew
                foreign.append(
                    f"{rep.pod_name} ran {grew:g} reconciles between t+{before.t:.2f}s and t+{after.t:.2f}s while the "
                    f"Lease named {', '.join(sorted(_pod(rec, h) for h in holders))}"
                )
        self.invariant(
            "reconciles-only-by-holder",
            "{n} scrape intervals with reconciles by a replica the Lease did not name",
            foreign,
        )

        # 12. handover after SIGKILL within its bound (plus what a fault on the Lease made every attempt wait)
        slow = []
        for h in rec.handovers:
            if h.cause != "kill":
                continue
            allowance = lease_fault_delay(rec, h.at)
            bound = s.handover_bound + allowance
            if h.seconds is None or h.seconds > bound:
                outcome = (
                    "no new leader" if h.seconds is None else f"{h.new} took over after {h.seconds:.2f} s"
                )
                slow.append(
                    f"{h.old} killed at t+{h.at:.1f}s: {outcome} (bound {bound:.1f} s"
                    + (f", {allowance:g} s of it for a Lease fault" if allowance else "")
                    + ")"
                )
        self.invariant(
            "handover-after-kill", "{n} handovers after SIGKILL took longer than their bound", slow
        )

    def late_phase(self) -> None:
        """A hanging registry stalls nothing else; the harness's own actions all ran."""
        rec, s = self.rec, self.s
        # 13. a hanging registry does not stall unrelated work
        late_latency = self.late_latency
        stalled = []
        if rec.late_started is not None:
            for w in rec.workloads:
                if w.kind not in (PROBE, DELETE_DONE) or w.name not in rec.created:
                    continue
                if w.kind == PROBE:
                    finished = rec.first_terminal.get(w.name)
                    start = rec.created[w.name]
                    what = "created"
                else:
                    finished = rec.done_at.get(f"workload {w.name}")
                    start = rec.deleted_at.get(w.name, rec.late_started)
                    what = "deleted"
                took = None if finished is None else finished - start
                if took is not None:
                    late_latency[w.name] = round(took, 2)
                if took is None or took > s.stall_bound:
                    stalled.append(
                        f"{w.describe()} {what} at t+{start:.1f}s: "
                        + ("never finished" if took is None else f"finished after {took:.1f} s")
                        + (
                            f" (the silent registry's Builds went at t+{rec.hang_released:.1f}s)"
                            if rec.hang_released
                            else ""
                        )
                    )
        if rec.hang_started is not None:
            self.invariant(
                "hanging-registry-isolated",
                f"{{n}} unrelated workloads took longer than {s.stall_bound:.1f} s while a registry hung",
                stalled,
            )

        # The harness itself: an action that failed leaves the run weaker than planned.
        self.invariant("chaos-actions-ran", "{n} chaos actions failed in the harness", rec.action_errors)

    def figures(self, chaos_seconds: float) -> dict[str, Any]:
        rec, s = self.rec, self.s
        created, survivors, gone, found_overlaps = self.created, self.survivors, self.gone, self.overlaps
        latencies = [
            rec.first_terminal[w.name] - rec.created[w.name]
            for w in survivors
            if w.name in rec.first_terminal and w.kind != PROBE
        ]
        kills = [h.seconds for h in rec.handovers if h.cause == "kill" and h.seconds is not None]
        terms = [h.seconds for h in rec.handovers if h.cause == "term" and h.seconds is not None]
        freezes = [h.seconds for h in rec.handovers if h.cause == "freeze" and h.seconds is not None]
        exits = Counter(
            f"{rep.exit_code}" + ("" if not rep.signals else f" after {rep.signals[0][1]}")
            for rep in rec.replicas
            if rep.exit_code is not None
        )
        hits = Counter(rec.fault_hits)
        for rule in rec.fault_rules:
            kind = {0: "latency", 409: "conflict", 429: "429"}.get(int(rule["status"]), "5xx")
            hits[kind] += int(rule["hits"])
        figures: dict[str, Any] = {
            "seed": s.seed,
            "workloads": len(rec.workloads),
            "workloads_created": len(created),
            "workloads_deleted": len(gone),
            "replicas": s.replicas,
            "chaos_seconds": round(chaos_seconds, 1),
            "wall_seconds": round(rec.now(), 1),
            "outcomes": dict(self.outcomes.most_common()),
            "deleted": dict(Counter(rec.deleted_while[w.name] for w in gone if w.name in rec.deleted_while)),
            "left_out": rec.not_created,
            "workload_seconds_p50": percentile(latencies, 0.5),
            "workload_seconds_p95": percentile(latencies, 0.95),
            "workload_seconds_max": percentile(latencies, 1.0),
            "actions": dict(Counter(a.kind for a in rec.actions)),
            "skipped_actions": rec.skipped_actions,
            "fault_hits": dict(hits),
            "lease_transitions": rec.lease_transitions,
            "handover_after_kill_s": kills,
            "handover_after_term_s": terms,
            "handover_after_freeze_s": freezes,
            "handover_bound_s": round(s.handover_bound, 2),
            "leader_overlaps": len(found_overlaps),
            "leader_overlap_max_s": round(max((o.seconds for o in found_overlaps), default=0.0), 2),
            "reconciles_without_lease": self.foreign_total,
            "replica_processes": len(rec.replicas),
            "replica_exits": dict(exits),
            "scrapes": sum(len(rep.samples) for rep in rec.replicas),
            "scrapes_failed": sum(1 for rep in rec.replicas for x in rep.samples if x.leading is None),
            "log_lines": self.lines_read,
            "log_errors_top": dict(self.error_lines.most_common(8)),
            "late_phase_seconds": self.late_latency,
            "hang_released_after_s": (
                round(rec.hang_released - rec.hang_started, 1)
                if rec.hang_released is not None and rec.hang_started is not None
                else None
            ),
            "devcluster_exit": rec.devcluster_exit,
            "devcluster_tracebacks": _count_in(rec.workdir / "devcluster.log", b"Traceback"),
            "invariants_checked": len(self.checked),
            "invariants_failed": [v.invariant for v in self.violations],
        }
        if kills:
            figures["handover_after_kill_median_s"] = round(statistics.median(kills), 2)
        return figures


def _build_number(build: Obj) -> int:
    try:
        return int((build["metadata"].get("labels") or {}).get(k.KPACK_BUILD_NUMBER_LABEL, "0"))
    except ValueError:
        return 0


def _kpack_says(snapshot: Snapshot, w: Workload) -> str:
    """What kpack's latest Build for the workload (its app, at its Image generation) says: evidence for
    a wrong outcome."""
    obj = snapshot.workloads.get((w.namespace, w.name)) or {}
    generation = (obj.get("metadata", {}).get("labels") or {}).get(k.IMAGE_GENERATION_LABEL)
    builds = [
        b
        for b in snapshot.builds
        if b["metadata"]["namespace"] == w.namespace
        and (labels := b["metadata"].get("labels") or {}).get(k.KPACK_IMAGE_LABEL) == w.app
        and (generation is None or labels.get(k.KPACK_IMAGE_GENERATION_LABEL) == generation)
    ]
    if not builds:
        return f"no kpack Build of Image {w.app} generation {generation}"
    latest = max(builds, key=_build_number)
    c = succeeded(latest)
    message = str(c.get("message", ""))
    if len(message) > 220:
        message = message[:220] + "…"
    return f"kpack Build {latest['metadata']['name']}: {c.get('status')}/{c.get('reason')} {message}".rstrip()


TRACEBACK_LAST = re.compile(r"\n(\w[\w.]*(?:Error|Exception|Exit|Interrupt|Lost|Failure)[^\n]*)\s*$")


def scan_logs(replicas: list[Replica]) -> tuple[list[str], Counter[str], int]:
    """Tracebacks (grouped, with a file and line of the first), error lines by message, lines read."""
    tracebacks: dict[str, list[str]] = defaultdict(list)
    error_lines: Counter[str] = Counter()
    lines_read = 0
    for rep in replicas:
        try:
            data = rep.log_path.read_bytes()
        except FileNotFoundError:
            continue
        for number, raw in enumerate(data.splitlines(), start=1):
            lines_read += 1
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                entry = {"msg": raw.decode(errors="replace"), "level": "raw"}
            if not isinstance(entry, dict):
                entry = {"msg": str(entry), "level": "raw"}
            if entry.get("level") in ("error", "raw"):
                msg = re.sub(r"\d+(\.\d+)?", "N", str(entry.get("msg", "")))[:100]
                error_lines[msg] += 1
            if b"Traceback" in raw:
                stack = str(entry.get("stacktrace") or entry.get("msg", ""))
                found = TRACEBACK_LAST.search(stack)
                last = found.group(1) if found else stack.strip().splitlines()[-1][:200]
                key = f"{str(entry.get('msg', ''))[:120]} -> {last}"
                tracebacks[key].append(f"{rep.log_path.name}:{number}")
    out = [
        f"{len(where)}x {key} (first at {where[0]})"
        for key, where in sorted(tracebacks.items(), key=lambda i: -len(i[1]))
    ]
    return out, error_lines, lines_read


def _count_in(path: Path, needle: bytes) -> int:
    try:
        return path.read_bytes().count(needle)
    except FileNotFoundError:
        return 0


def lease_fault_delay(record: Record, at: float) -> float:
    """The longest delay a fault rule aimed at the Lease, added shortly before or during a handover at
    ``at``, puts on each lease attempt (a Retry-After, a latency, or a failed attempt's retry period)."""
    s = record.s
    delay = 0.0
    for action in record.actions:
        rule = action.detail
        if not isinstance(rule, dict) or rule.get("path") != "/leases/":
            continue
        added = record.chaos_started + action.at
        if at - 10.0 <= added <= at + s.handover_bound:
            per_attempt = rule.get("retryAfter") or rule.get("latency") or (1 + JITTER) * s.retry_period
            delay = max(delay, float(per_attempt))
    return delay


def _pod(record: Record, identity: str) -> str:
    owner = record.owner(identity)
    return owner.pod_name if owner else identity or "(none)"
