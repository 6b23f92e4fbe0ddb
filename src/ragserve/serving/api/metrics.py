"""Prometheus metrics, in a registry per app so tests can build many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ragserve_http_requests_total",
            "HTTP requests.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ragserve_http_request_seconds",
            "HTTP request latency.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "ragserve_stage_seconds",
            "Pipeline stage latency.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.index_documents = Gauge(
            "ragserve_index_documents", "Indexed documents.", registry=self.registry
        )
        self.index_chunks = Gauge(
            "ragserve_index_chunks", "Indexed chunks.", registry=self.registry
        )
        self.llm_tokens = Counter(
            "ragserve_llm_tokens_total", "Generated text pieces (tokens).", registry=self.registry
        )
        self.refusals = Counter(
            "ragserve_refusals_total", "Answers refused.", registry=self.registry
        )
        self.answers = Counter(
            "ragserve_answers_total",
            "Replies by kind: answer, refusal, clarify or reply.",
            ["kind"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "ragserve_rate_limited_total", "Requests refused with 429.", registry=self.registry
        )
