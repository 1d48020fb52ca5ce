"""docs/kpack-simulator.md names every knob the simulator has (options, annotations, devcluster flags), so
the two cannot drift apart."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from simcluster import kpack
from simcluster.__main__ import build_parser
from simcluster.kpack import KpackOptions

DOC = (Path(__file__).resolve().parents[3] / "docs" / "kpack-simulator.md").read_text()


def test_every_option_is_documented() -> None:
    for f in fields(KpackOptions):
        assert f"`{f.name}`" in DOC, f"docs/kpack-simulator.md does not mention option {f.name}"


def test_every_annotation_is_documented() -> None:
    annotations = [getattr(kpack, name) for name in kpack.__all__ if name.startswith("ANNOTATION_")]
    assert len(annotations) == 8
    for annotation in annotations:
        assert f"`{annotation}`" in DOC, f"docs/kpack-simulator.md does not mention {annotation}"


def test_every_devcluster_kpack_flag_is_documented() -> None:
    devcluster = build_parser()._subparsers._group_actions[0].choices["devcluster"]  # type: ignore[union-attr]
    flags = [s for action in devcluster._actions for s in action.option_strings if s.startswith("--kpack")]
    assert len(flags) == 5
    for flag in flags:
        assert flag in DOC, f"docs/kpack-simulator.md does not mention {flag}"
