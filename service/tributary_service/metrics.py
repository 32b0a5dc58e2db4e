"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGES = (
    "tokenize",
    "gradient",
    "precondition",
    "search",
    "rerank",
    "fetch",
    "token_wise",
    "total",
)
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tributary_requests",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tributary_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "tributary_stage_seconds",
            "Attribution stage latency",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "tributary_queue_depth", "Requests waiting for the model", registry=self.registry
        )
        self.batch_size = Histogram(
            "tributary_micro_batch_requests",
            "Requests per forward/backward",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.index_examples = Gauge(
            "tributary_index_examples", "Examples in the loaded index", registry=self.registry
        )
        self.index_dim = Gauge(
            "tributary_index_dim", "Dimension of the stored vectors", registry=self.registry
        )
        self.tokens = Counter(
            "tributary_query_tokens", "Tokens of attributed queries", registry=self.registry
        )

    def observe_timings(self, timings: dict[str, float]) -> None:
        for stage in STAGES:
            value = timings.get(f"{stage}_ms")
            if value:
                self.stage.labels(stage).observe(value / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
