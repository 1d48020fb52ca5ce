"""service/metrics.py: the service's lock-free metric families expose exactly what prometheus_client's own
classes would for the same updates (the library builds both expositions), and refuse what those refuse."""

from __future__ import annotations

from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service import metrics as lean

BUCKETS = (0.005, 0.1, 1, 2.5, 60)


def both(kind: str, *args: Any, **kwargs: Any) -> tuple[Any, Any, CollectorRegistry, CollectorRegistry]:
    """The same family made with prometheus_client's class and with ours, each on a registry of its own."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    library = getattr(prometheus_client, kind)(*args, registry=theirs, **kwargs)
    own = getattr(lean, kind)(*args, registry=ours, **kwargs)
    return library, own, theirs, ours


def test_counters_expose_as_the_librarys() -> None:
    library, own, theirs, ours = both("Counter", "requests_total", "Requests, by code.", ["code", "method"])
    for family in (library, own):
        family.labels("200", "GET").inc()
        family.labels("200", "GET").inc(2.5)
        family.labels(code="404", method="PUT")  # made to exist at zero
    assert generate_latest(ours) == generate_latest(theirs)
    assert own.labels("200", "GET").value == 3.5


def test_gauges_and_unlabelled_families_expose_as_the_librarys() -> None:
    library, own, theirs, ours = both("Gauge", "depth", "Depth.", ["name"])
    for family in (library, own):
        family.labels("a").inc(3)
        family.labels("a").dec()
        family.labels("b").set(7)
    assert generate_latest(ours) == generate_latest(theirs)
    for family in (library, own):
        family.clear()
    assert generate_latest(ours) == generate_latest(theirs)
    library, own, theirs, ours = both("Counter", "builds_started_total", "Builds.")
    for family in (library, own):
        family.inc()
        family.clear()  # a family without labels keeps its one series
    assert generate_latest(ours) == generate_latest(theirs)
    library, own, theirs, ours = both("Gauge", "in_flight", "In flight.")
    for family in (library, own):
        family.set(7)
        family.inc(3)
        family.dec()
    assert generate_latest(ours) == generate_latest(theirs)


@pytest.mark.parametrize(
    "values", [[], [0.005], [0.0049, 0.1, 0.10001, 1, 2, 60, 61, 1e9, -1, float("inf")], [1.0, float("nan")]]
)
def test_histograms_expose_as_the_librarys(values: list[float]) -> None:
    """Bucket bounds are "less than or equal", ``le`` is written as Go writes floats, +Inf takes the rest."""
    library, own, theirs, ours = both("Histogram", "latency_seconds", "Latency.", ["verb"], buckets=BUCKETS)
    for family in (library, own):
        family.labels("GET")
        for value in values:
            family.labels("PATCH").observe(value)
    assert generate_latest(ours) == generate_latest(theirs)


def test_what_the_library_refuses_is_refused() -> None:
    registry = CollectorRegistry()
    counter = lean.Counter("things_total", "Things.", ["kind"], registry=registry)
    with pytest.raises(ValueError, match="only be increased"):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError, match="label values"):
        counter.labels("a", "b")
    with pytest.raises(ValueError, match="are not"):
        counter.labels(colour="red")
    with pytest.raises(ValueError, match="update a child"):
        counter.inc()
    with pytest.raises(ValueError, match="no labels"):
        lean.Counter("plain_total", "Plain.", registry=None).labels()
    for name in ("__reserved", "1st", "a-b"):
        with pytest.raises(ValueError, match="invalid label name"):
            lean.Counter("c_total", "C.", [name], registry=None)
    with pytest.raises(ValueError, match="invalid label name 'le'"):
        lean.Histogram("h_seconds", "H.", ["le"], buckets=(1,), registry=None)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        lean.Counter("things_total", "Again.", registry=registry)
    with pytest.raises(ValueError, match="ascending"):
        lean.Histogram("h", "H.", buckets=(1, 0.5), registry=registry)
