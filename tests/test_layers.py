"""The import graph, checked: the layers do not know each other's insides, and the product never imports
the simulated cluster (which the wheel and the image leave out, so such an import would break there).

Layers, each importing only those before it: ``service.kube`` and ``service.http`` → ``service.registry``
(may read Kubernetes Secrets) and ``service.runtime`` (generic: no kpack or Korifi in it) →
``service.reconcilers`` (the domain: no HTTP in it) → ``service.diagnosis`` (``explain``) →
``service.app`` / ``service.config`` / ``service.__main__`` (the composition).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "service"

# What each layer may import from the project (prefixes of module names).
ALLOWED = {
    "service.kube": ("service.kube", "service.http", "service.metrics"),
    "service.http": ("service.http",),
    "service.metrics": ("service.metrics",),
    "service.registry": ("service.registry", "service.kube", "service.http", "service.metrics"),
    "service.runtime": ("service.runtime", "service.kube", "service.http", "service.metrics"),
    "service.reconcilers": ("service.reconcilers", "service.runtime", "service.registry", "service.kube"),
    # ``explain``: reads through the client and judges with the domain's words; nothing imports it but the
    # command line.
    "service.diagnosis": ("service.diagnosis", "service.reconcilers", "service.kube"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[str]:
    """Every module this file imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.append(".".join([*base, node.module] if node.module else base))
            elif node.module:
                out.append(node.module)
    return out


PRODUCT = sorted(SERVICE.rglob("*.py"))


def test_the_layers_are_found() -> None:
    assert len(PRODUCT) > 40
    packages = {module_name(p).rsplit(".", 1)[0] for p in PRODUCT}
    assert set(ALLOWED) <= packages | {module_name(p) for p in PRODUCT}  # a layer may be one module


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_its_own_layer_and_those_before(path: Path) -> None:
    name = module_name(path)
    ours = [m for m in imports(path) if m == "service" or m.startswith(("service.", "simcluster", "tests"))]
    assert not [m for m in ours if m.startswith(("simcluster", "tests"))], (
        f"{name} imports the simulated cluster or the tests, which the product does not carry"
    )
    layer = next((layer for layer in ALLOWED if name == layer or name.startswith(layer + ".")), None)
    if layer is None:
        return  # the composition (app, config, __main__) may import any layer
    wrong = [m for m in ours if not m.startswith(ALLOWED[layer])]
    assert not wrong, f"{name} ({layer}) imports {wrong}; it may import only {ALLOWED[layer]}"


def test_the_runtime_knows_nothing_of_kpack_or_korifi() -> None:
    for path in sorted((SERVICE / "runtime").rglob("*.py")):
        text = path.read_text()
        found = re.findall(r"\b(?:kpack|korifi|BuildWorkload|buildworkload)\b", text, re.IGNORECASE)
        assert not found, f"{path.relative_to(ROOT)} names {sorted(set(found))}"


def test_the_domain_speaks_no_http() -> None:
    for path in sorted((SERVICE / "reconcilers").rglob("*.py")):
        bad = [m for m in imports(path) if m.split(".")[0] in ("aiohttp", "http", "urllib")]
        bad += [m for m in imports(path) if m == "service.http" or m.startswith("service.http.")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
