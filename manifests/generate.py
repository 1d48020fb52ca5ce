"""Plain manifests for ``kubectl apply -k`` (kustomize), generated from the Helm chart so the two cannot drift.

The chart (charts/kpack-image-builder) is the one source: this renders it with Helm's own library
(helm-python-sdk, offline, as tests/test_chart.py does) for the release ``kpack-image-builder`` in the
namespace ``kpack-image-builder``, and writes each template's output as it is — comments included — with
two differences, both on purpose:

* ``config.containerRepositoryPrefix`` is ``REPLACE-ME/``. The chart refuses to render without one; a
  placeholder the service refuses at start (it is not a lower-case registry path) makes an installation
  that forgets to set it fail loudly, where a plausible example value would start and push nowhere.
* Helm's own labels (``helm.sh/chart``, ``app.kubernetes.io/managed-by: Helm``) are left out: Helm does
  not manage these objects.

Layout (docs/manifests.md):

* ``crds/Kustomization`` — the project's CRDs as a kustomization. Named without ``.yaml`` (kustomize
  accepts that name) so that ``kubectl apply -f manifests/crds/`` and the loaders that read the
  directory's ``*.yaml`` keep seeing only CRDs.
* ``base/`` — ``../crds`` and every object the chart makes with each optional value off; no Namespace, so
  that an overlay can install into one that exists (Korifi's) and ``kubectl delete -k`` leaves it.
* ``components/<name>/`` — a kustomize Component per optional value: the objects that value adds when
  switched on (the generator refuses a value that would change the base's objects instead).
* ``default/`` — a Namespace, ``base/`` and the components whose value the chart's defaults switch on:
  what ``helm install --create-namespace`` with the defaults makes.

Run ``.venv/bin/python manifests/generate.py`` after changing the chart; ``--check`` only compares
(tests/test_manifests.py does the same and more).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

import helm_python
import yaml

Obj = dict[str, Any]

HERE = Path(__file__).resolve().parent
CHART = HERE.parent / "charts" / "kpack-image-builder"
RELEASE = "kpack-image-builder"
NAMESPACE = "kpack-image-builder"
PLACEHOLDER_PREFIX = "REPLACE-ME/"
COMMAND = ".venv/bin/python manifests/generate.py"
HEADER = f"# Generated from charts/kpack-image-builder by manifests/generate.py: do not edit.\n# Regenerate: {COMMAND}\n"
KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"
# The optional objects: a component directory each, and the chart value that adds them.
COMPONENTS: dict[str, Obj] = {
    "service-monitor": {"serviceMonitor": {"enabled": True}},
    "prometheus-rule": {"prometheusRule": {"enabled": True}},
    "pod-disruption-budget": {"podDisruptionBudget": {"enabled": True}},
    "network-policy": {"networkPolicy": {"enabled": True}},
}
# The labels Helm stamps (templates/_helpers.tpl): exact lines, so nothing else can be removed by mistake.
HELM_LABEL = re.compile(r"^ +(helm\.sh/chart: .+|app\.kubernetes\.io/managed-by: Helm)\n", re.MULTILINE)
# Directories whose every file this generator owns (a file it no longer makes is stale).
OWNED = ("base", "default", "components")


def merge(into: Obj, extra: Obj) -> Obj:
    out = copy.deepcopy(into)
    for key, value in extra.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def off(values: Obj) -> Obj:
    """The same keys with every ``True`` made ``False``: a component's value switched off."""
    return {k: off(v) if isinstance(v, dict) else (False if v is True else v) for k, v in values.items()}


BASE_VALUES: Obj = {"config": {"containerRepositoryPrefix": PLACEHOLDER_PREFIX}}
for _value in COMPONENTS.values():
    BASE_VALUES = merge(BASE_VALUES, off(_value))
DEFAULT_VALUES: Obj = {"config": {"containerRepositoryPrefix": PLACEHOLDER_PREFIX}}


def render(values: Obj) -> dict[str, str]:
    """Each chart template's output (file name -> YAML text, Helm's labels out) for ``values``; templates
    that render nothing are left out."""
    chart = helm_python.Chart.load(CHART)
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    out = {}
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml") or not text.strip():
            continue
        out[Path(path).name] = HELM_LABEL.sub("", text.lstrip("\n"))
    return out


def objects(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomization(kind: str, resources: list[str], components: list[str] | None = None) -> str:
    doc: Obj = {
        "apiVersion": KUSTOMIZE_API if kind == "Kustomization" else "kustomize.config.k8s.io/v1alpha1"
    }
    doc["kind"] = kind
    doc["resources"] = resources
    if components:
        doc["components"] = components
    return HEADER + yaml.safe_dump(doc, sort_keys=False)


def namespace() -> str:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    return HEADER + yaml.safe_dump(doc, sort_keys=False)


def generate() -> dict[str, str]:
    """Every generated file: path relative to manifests/ -> its text."""
    files: dict[str, str] = {}
    crds = sorted(p.name for p in (HERE / "crds").glob("*.yaml"))
    files["crds/Kustomization"] = kustomization("Kustomization", crds)

    base = render(BASE_VALUES)
    for name, text in base.items():
        files[f"base/{name}"] = HEADER + text
    files["base/kustomization.yaml"] = kustomization("Kustomization", ["../crds", *base])

    added: dict[str, dict[str, str]] = {}
    for component, value in COMPONENTS.items():
        rendered = render(merge(BASE_VALUES, value))
        changed = [name for name in base if rendered.get(name) != base[name]]
        if changed:
            raise SystemExit(f"{value} changes {changed}, not only adds objects: a component cannot say that")
        added[component] = {name: text for name, text in rendered.items() if name not in base}
        if not added[component]:
            raise SystemExit(f"{value} adds no object")
        for name, text in added[component].items():
            files[f"components/{component}/{name}"] = HEADER + text
        files[f"components/{component}/kustomization.yaml"] = kustomization(
            "Component", list(added[component])
        )

    # The chart's defaults are the base plus the components they switch on; anything else is a value this
    # generator does not know about.
    defaults = render(DEFAULT_VALUES)
    on = [c for c, texts in added.items() if texts.items() <= defaults.items()]
    expected = dict(base)
    for component in on:
        expected.update(added[component])
    if defaults != expected:
        raise SystemExit("the chart's defaults are not the base plus whole components: see COMPONENTS")
    files["default/namespace.yaml"] = namespace()
    files["default/kustomization.yaml"] = kustomization(
        "Kustomization", ["namespace.yaml", "../base"], [f"../components/{c}" for c in on]
    )
    return files


def stale(files: dict[str, str], root: Path = HERE) -> list[str]:
    """Files that differ from ``files``, are missing, or are in an owned directory but no longer made."""
    out = [
        path
        for path, text in files.items()
        if not (root / path).is_file() or (root / path).read_text() != text
    ]
    for owned in OWNED:
        for path in sorted((root / owned).rglob("*")) if (root / owned).is_dir() else ():
            relative = path.relative_to(root).as_posix()
            if path.is_file() and relative not in files:
                out.append(relative)
    return out


def write(files: dict[str, str], root: Path = HERE) -> None:
    for path in stale(files, root):
        target = root / path
        if path in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(files[path])
        else:
            target.unlink()


def main(argv: list[str] | None = None, root: Path = HERE) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say which files are stale (exit 1 if any)")
    args = parser.parse_args(argv)
    files = generate()
    if args.check:
        out_of_date = stale(files, root)
        for path in out_of_date:
            print(f"manifests/{path} is out of date", file=sys.stderr)
        if out_of_date:
            print(f"regenerate: {COMMAND}", file=sys.stderr)
        return 1 if out_of_date else 0
    write(files, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
