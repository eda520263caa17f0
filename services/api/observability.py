"""Prometheus metrics: request counts and latency per route template, and jobs by status/queue (read
from the job table at scrape time, so every API replica reports the same truth)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.db import Database
from services.common.models import Job, JobStatus

logger = logging.getLogger(__name__)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, db: Database) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mmdlm_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mmdlm_http_request_duration_seconds", "HTTP request latency (until the response starts)",
            ["method", "route"], buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.fast_path = Counter(
            "mmdlm_gateway_fast_path", "Requests seen by the pure-ASGI fast path (services.api.fastpath): "
            "answered there, or handed on to the app", ["route", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.registry.register(JobsCollector(db))


class JobsCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "mmdlm_jobs", "Jobs in the job table by status and queue", labels=["status", "queue"]
        )
        try:
            with self.db.reader() as s:
                rows = s.execute(
                    select(Job.status, Job.queue, func.count()).group_by(Job.status, Job.queue)
                ).all()
        except Exception as exc:
            logger.warning("jobs gauge: %s", exc)
            rows = []
        seen = set()
        for status, queue, count in rows:
            gauge.add_metric([status, queue], float(count))
            seen.add(status)
        for status in JobStatus:
            if status.value not in seen:
                gauge.add_metric([status.value, ""], 0.0)
        yield gauge


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware) so streaming responses such as SSE are not buffered."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                route = _route(scope)
                self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
                self.metrics.requests.labels(scope["method"], route, str(status_code)).inc()
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"
