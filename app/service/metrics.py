"""Prometheus metrics, one registry per app (no process globals, so tests can run many)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "xmodal_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xmodal_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "xmodal_requests_in_flight",
            "Requests being served (probes and scrapes not counted).",
            registry=self.registry,
        )
        self.refused = Counter(
            "xmodal_requests_refused",
            "Requests refused by the concurrency limit (429).",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "xmodal_encoder_batch_size",
            "Inputs per encoder call.",
            ["modality"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.search_batch = Histogram(
            "xmodal_search_batch_size",
            "Searches ranked in one call (those that arrived while the last call ran).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "xmodal_encoder_queue_wait_seconds",
            "Time an input waited for its encoder batch.",
            ["modality"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def batch_observer(self, modality: str) -> Callable[[int, Sequence[float]], None]:
        size = self.batch_size.labels(modality)
        wait = self.queue_wait.labels(modality)

        def observe(n: int, waits: Sequence[float]) -> None:
            size.observe(n)
            for w in waits:
                wait.observe(w)

        return observe

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count a request. Labels come from fixed sets only (any method name a client
        sends would otherwise grow /metrics without bound): route templates or
        ``unmatched``, the standard methods or ``other``."""
        method = method if method in METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def add_state(self, read: Callable[[], dict[str, Any]]) -> None:
        """Gauges read at scrape time from ``read()``: queue depths, index sizes, readiness."""
        self.registry.register(_StateCollector(read))


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        state = self._read()
        ready = GaugeMetricFamily("xmodal_ready", "1 when the model and store are loaded.")
        ready.add_metric([], 1.0 if state.get("ready") else 0.0)
        yield ready
        depth = GaugeMetricFamily(
            "xmodal_encoder_queue_depth",
            "Inputs waiting for an encoder batch.",
            labels=["modality"],
        )
        for modality, n in state.get("queue_depth", {}).items():
            depth.add_metric([modality], float(n))
        yield depth
        sizes = GaugeMetricFamily(
            "xmodal_index_vectors",
            "Searchable vectors per collection and modality.",
            labels=["collection", "modality"],
        )
        for (collection, modality), n in state.get("index_vectors", {}).items():
            sizes.add_metric([collection, modality], float(n))
        yield sizes
