"""client-go's REST client metrics, with controller-runtime's names, labels and buckets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.metrics import Counter, CounterValue, Histogram, HistogramValue

REQUEST_DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


class RestClientMetrics:
    """``rest_client_requests_total{code,method,host}`` and ``rest_client_request_duration_seconds``.

    Every attempt counts, retries included, as client-go counts them.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "rest_client_requests_total",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            ["code", "method", "host"],
            registry=registry,
        )
        self.duration = Histogram(
            "rest_client_request_duration_seconds",
            "Request latency in seconds. Broken down by verb, and host.",
            ["verb", "host"],
            buckets=REQUEST_DURATION_BUCKETS,
            registry=registry,
        )
        # The labelled children, kept: ``labels()`` costs more than the rest of an observation, and the
        # label sets are few (verbs, codes and hosts).
        self._counted: dict[tuple[int | None, str, str], CounterValue] = {}
        self._timed: dict[tuple[str, str], HistogramValue] = {}

    def observe(self, method: str, host: str, status: int | None, seconds: float | None = None) -> None:
        """Count one attempt; ``status`` None means no response arrived (client-go's ``<error>``)."""
        key = (status, method, host)
        counter = self._counted.get(key)
        if counter is None:
            code = str(status) if status is not None else "<error>"
            counter = self._counted[key] = self.requests.labels(code, method, host)
        counter.inc()
        if seconds is not None:
            histogram = self._timed.get((method, host))
            if histogram is None:
                histogram = self._timed[method, host] = self.duration.labels(method, host)
            histogram.observe(seconds)
