"""Process-wide objects of the gateway, built once at start-up and reached through `deps`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from anyio import to_thread
from celery import Celery
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.api.observability import Metrics
from services.common.auth import TokenCache
from services.common.db import Database
from services.common.kinds import JobKind
from services.common.settings import Settings
from services.common.store import ObjectStore


@dataclass
class AppState:
    settings: Settings
    db: Database
    store: ObjectStore
    celery: Celery
    kinds: dict[str, JobKind]
    tokens: TokenCache = field(init=False)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = TokenCache(self.settings.token_cache_s)
        self.metrics = Metrics(self.db)
        self.metrics.registry.register(PoolCollector(self.db))

    def size_threadpool(self) -> None:
        """Cap the event loop's threadpool (sync handlers, sync dependencies) at the database pool size:
        every thread then finds an idle pooled connection, and 50 clients never make the pool open
        (and close again) overflow connections. Call from inside the running loop (the lifespan)."""
        to_thread.current_default_thread_limiter().total_tokens = self.db.pool_size


class PoolCollector(Collector):
    """The database pool as seen by this process: connections opened so far (a steady pool stops
    opening new ones) and connections in use now."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily(
            "mmdlm_db_connections_opened",
            "Database connections opened by this process's pool",
            value=float(self.db.connections_opened),
        )
        checked_out = getattr(self.db.engine.pool, "checkedout", None)
        if checked_out is not None:
            yield GaugeMetricFamily(
                "mmdlm_db_connections_in_use",
                "Pooled connections checked out now",
                value=float(checked_out()),
            )
