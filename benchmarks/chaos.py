"""Chaos soak at full size, by hand: real devcluster and ``run`` processes under API faults, leader kills,
SIGTERMs and freezes, deletions and a registry that never answers (tests/chaos/soak/ says how).

    python benchmarks/chaos.py [--workloads 300] [--replicas 3] [--spaces 6] [--seed N]
                               [--chaos-seconds S] [--settle-seconds S] [--build-seconds S]
                               [--no-hanging-registry] [--workdir DIR] [--quiet]

Prints the timeline as it runs (on stderr, unless --quiet), then each broken invariant with its evidence,
then the figures, one per line, and last the figures as one JSON line (as the other benchmarks end). Exits
1 when an invariant broke. The replicas' JSON logs, the timeline and the report stay in the work
directory (a new temporary one unless --workdir), whose path is printed.

The CI-sized run of the same soak is tests/chaos/test_chaos_soak.py; docs/reliability.md explains the
invariants and keeps a table of figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos.soak import SoakSettings, run_soak


def parse(argv: list[str] | None = None) -> tuple[SoakSettings, Path | None, bool]:
    parser = argparse.ArgumentParser(description="Chaos soak of kpack-image-builder with real processes.")
    parser.add_argument("--workloads", type=int, default=300)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--spaces", type=int, default=6, help="namespaces the workloads spread over")
    parser.add_argument("--seed", type=int, default=1, help="fixes the plan and the chaos schedule")
    parser.add_argument(
        "--chaos-seconds", type=float, help="length of the schedule (default: scales with workloads)"
    )
    parser.add_argument("--settle-seconds", type=float, default=150.0)
    parser.add_argument("--build-seconds", type=float, default=0.8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--no-hanging-registry", action="store_true", help="leave out the hanging-registry phase"
    )
    parser.add_argument("--workdir", type=Path, help="where logs and the report go (default: a new temp dir)")
    parser.add_argument("--quiet", action="store_true", help="do not print the timeline while running")
    args = parser.parse_args(argv)
    chaos = args.chaos_seconds if args.chaos_seconds is not None else max(40.0, args.workloads * 0.4)
    settings = SoakSettings(
        workloads=args.workloads,
        replicas=args.replicas,
        spaces=args.spaces,
        seed=args.seed,
        chaos_seconds=chaos,
        settle_seconds=args.settle_seconds,
        build_seconds=args.build_seconds,
        workers=args.workers,
        hanging_registry=not args.no_hanging_registry,
    )
    return settings, args.workdir, args.quiet


def main(argv: list[str] | None = None) -> int:
    settings, workdir, quiet = parse(argv)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="chaos-soak-"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# {os.cpu_count()} CPUs, Python {platform.python_version()}, load {load:.2f}; workdir {workdir}",
        file=sys.stderr,
    )

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = anyio.run(lambda: run_soak(settings, workdir, None if quiet else say))
    print(report.explain(limit=50))
    print("figures:")
    print(report.figures_text())
    print(orjson.dumps(report.figures).decode())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
