"""The operator docs name every setting and every metric the code defines, so they cannot drift apart."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.config import Config, env_name
from service.kube.metrics import RestClientMetrics
from service.runtime.metrics import RuntimeMetrics

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_configuration_reference_lists_every_setting() -> None:
    text = (DOCS / "configuration.md").read_text()
    for f in fields(Config):
        key = f.metadata["key"]
        for name in (key, f.metadata["flag"], env_name(key)):
            assert f"`{name}`" in text, f"docs/configuration.md does not mention {name}"


def test_operations_doc_lists_every_metric() -> None:
    text = (DOCS / "operations.md").read_text()
    registry = CollectorRegistry()
    RuntimeMetrics(registry)
    RestClientMetrics(registry)
    names = {metric.name for metric in registry.collect()}
    assert len(names) >= 17
    for name in names:
        # prometheus_client reports counters without their _total suffix
        shown = name + "_total" if f"`{name}_total`" in text else name
        assert f"`{shown}`" in text, f"docs/operations.md does not list metric {name}"
