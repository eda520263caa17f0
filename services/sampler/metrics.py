"""Prometheus metrics of the sampler (`GET /metrics`), in a registry of its own so several service
instances can live in one test process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


class SamplerMetrics:
    """`cache_stats` returns the model cache's {"bytes", "entries"} at scrape time; the service passes it in,
    so this module knows nothing of the service."""

    def __init__(self, cache_stats: Callable[[], dict[str, int]], cache_budget_bytes: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mmdlm_sampler_requests", "Requests by endpoint and HTTP status", ["endpoint", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "mmdlm_sampler_request_seconds", "Request latency by endpoint", ["endpoint"], registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )  # fmt: skip
        self.tokens = Counter("mmdlm_sampler_generated_tokens", "Tokens generated", registry=self.registry)
        self.batch_requests = Histogram(
            "mmdlm_sampler_batch_requests",
            "Requests per network batch",
            buckets=SIZES,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "mmdlm_sampler_batch_rows", "Samples per network batch", buckets=SIZES, registry=self.registry
        )
        cache = Gauge("mmdlm_sampler_model_cache_bytes", "Bytes of loaded models", registry=self.registry)
        cache.set_function(lambda: cache_stats()["bytes"])
        loaded = Gauge("mmdlm_sampler_models_loaded", "Models in memory", registry=self.registry)
        loaded.set_function(lambda: cache_stats()["entries"])
        budget = Gauge(
            "mmdlm_sampler_model_cache_budget_bytes", "MMDLM_SAMPLER_CACHE_BYTES", registry=self.registry
        )
        budget.set(cache_budget_bytes)

    def observe_batch(self, requests: int, rows: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)
