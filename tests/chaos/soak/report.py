"""A soak's report: the broken invariants with their evidence, the figures and the timeline, as text.

Design: one object for both callers: the CI test asserts on ``violations`` and fails with ``explain()``
(the first 25 details of each, enough to act on), the benchmark prints it; ``full_text()`` (every detail,
the figures, the timeline) goes to the work directory's report.txt. It holds data only, so it is kept
apart from the checks that fill it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.soak.scenario import SoakSettings


@dataclass
class Violation:
    invariant: str
    summary: str
    details: list[str] = field(default_factory=list)


@dataclass
class SoakReport:
    settings: SoakSettings
    workdir: Path
    violations: list[Violation]
    checked: list[str]  # the invariants evaluated
    figures: dict[str, Any]
    timeline: list[str]

    def explain(self, limit: int = 25) -> str:
        s = self.settings
        head = (
            f"chaos soak (seed {s.seed}, {s.workloads} workloads, {s.replicas} replicas): "
            f"{len(self.violations)} of {len(self.checked)} invariants failed"
        )
        lines = [head, f"logs, timeline and figures in {self.workdir}"]
        for v in self.violations:
            lines.append(f"[{v.invariant}] {v.summary}")
            lines += [f"    - {d}" for d in v.details[:limit]]
            if len(v.details) > limit:
                lines.append(f"    ... and {len(v.details) - limit} more (see {self.workdir / 'report.txt'})")
        return "\n".join(lines)

    def figures_text(self) -> str:
        return "\n".join(f"{key}: {value}" for key, value in self.figures.items())

    def full_text(self) -> str:
        return "\n\n".join(
            [
                self.explain(limit=10_000),
                "figures:\n" + self.figures_text(),
                "timeline:\n" + "\n".join(self.timeline),
            ]
        )
