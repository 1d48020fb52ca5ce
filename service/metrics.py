"""Prometheus counters, gauges and histograms for one event loop, exposed through prometheus_client.

Why not prometheus_client's own classes: every update of theirs takes a lock and runs checks meant for
threads and multiprocess mode, and this service updates its metrics some thirty times per workload (the
work queue, each reconcile, each API and registry request) from one thread. With them, metrics took 5 % of
the service's CPU in benchmarks/converge.py (docs/performance.md). The families here hold plain numbers and
are prometheus_client Collectors: the library still builds the exposition when it scrapes (names, HELP,
TYPE, label order, ``le`` values are its own), from ``collect``.

Not thread-safe by design: update them from the event loop's thread. The sidecar scrapes on that thread
too, and ``collect`` copies what it reads, so a scrape never sees a histogram's buckets out of step.
The API is prometheus_client's subset that the service uses: ``labels`` (by position or by name; a new
child starts at zero, so creating one is how a series is made to exist before its first event), ``inc``,
``dec``, ``set``, ``observe``, ``clear``; a family without labels updates as its own child.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

# controller-runtime exports no ``*_created`` series; prometheus_client's own collectors (process, GC)
# would get none anyway, and this keeps it so should one of its metric classes be used here again.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class CounterValue:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter can only be increased")
        self.value += amount


class GaugeValue:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramValue:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # upper bounds, ascending, without +Inf
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf's
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        if amount == amount:  # a NaN is in no bucket (nor the count), as prometheus_client has it
            # The first bucket whose bound is >= amount: Prometheus buckets are "less than or equal".
            self.counts[bisect_left(self.bounds, amount)] += 1


V = TypeVar("V", CounterValue, GaugeValue, HistogramValue)

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class _Family(Collector, Generic[V]):
    # What a family holds per series and what it is exposed as: set by each kind.
    _value_type: ClassVar[type[Any]]
    _metric_type: ClassVar[type[Any]]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry | None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        for label in self.labelnames:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__") or label in self._reserved():
                raise ValueError(f"{name}: invalid label name {label!r}")
        self._children: dict[tuple[str, ...], V] = {}
        # A family without labels is its own one series (``labels`` refuses it, as prometheus_client does).
        self._child: V | None = None if self.labelnames else self._new()
        if registry is not None:
            registry.register(self)

    def _reserved(self) -> tuple[str, ...]:
        return ()

    def _new(self) -> V:
        value: V = self._value_type()
        return value

    def _family(self) -> Metric:
        family: Metric = self._metric_type(self.name, self.documentation, labels=self.labelnames)
        return family

    def _add(self, family: Metric, labels: tuple[str, ...], child: V) -> None:
        family.add_metric(labels, child.value)  # type: ignore[attr-defined]

    def labels(self, *values: str, **by_name: str) -> V:
        child = self._children.get(values)
        if child is not None:
            return child
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels: update the family itself")
        if by_name:
            if values or set(by_name) != set(self.labelnames):
                raise ValueError(f"{self.name}: labels {sorted(by_name)} are not {list(self.labelnames)}")
            values = tuple(by_name[name] for name in self.labelnames)
        elif len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(values)} label values for labels {list(self.labelnames)}")
        values = tuple(str(value) for value in values)
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new()
        return child

    def clear(self) -> None:
        """Forget every labelled series (a family without labels keeps its one, as it is)."""
        self._children.clear()

    def _only(self) -> V:
        if self._child is None:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: update a child of labels()")
        return self._child

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        if self._child is not None:
            self._add(family, (), self._child)
        for labels, child in list(self._children.items()):
            self._add(family, labels, child)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield self._family()


class Counter(_Family[CounterValue]):
    _value_type = CounterValue
    _metric_type = CounterMetricFamily

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)


class Gauge(_Family[GaugeValue]):
    _value_type = GaugeValue
    _metric_type = GaugeMetricFamily

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._only().dec(amount)

    def set(self, value: float) -> None:
        self._only().set(value)


class Histogram(_Family[HistogramValue]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"{name}: buckets must be distinct and ascending, got {list(buckets)}")
        self.bounds = bounds
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry=registry)

    def _reserved(self) -> tuple[str, ...]:
        return ("le",)

    _metric_type = HistogramMetricFamily

    def _new(self) -> HistogramValue:
        return HistogramValue(self.bounds)

    def _add(self, family: Metric, labels: tuple[str, ...], child: HistogramValue) -> None:
        counts, total = list(child.counts), child.sum  # one consistent copy (see the module's docstring)
        cumulative, buckets = 0, []
        for le, count in zip(self._les, counts, strict=True):
            cumulative += count
            buckets.append((le, float(cumulative)))
        family.add_metric(labels, buckets, total)  # type: ignore[attr-defined]

    def observe(self, amount: float) -> None:
        self._only().observe(amount)
