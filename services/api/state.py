"""Process-wide objects of the gateway, built once at start-up and reached through `deps`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from anyio import to_thread
from celery import Celery
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.api.loopdb import LoopDB
from services.api.observability import Metrics
from services.api.publisher import WakeupPublisher
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
    reads: LoopDB = field(init=False)
    """Hot reads on the event loop (status, events), beside `db`'s pool for everything else."""
    wakeups: WakeupPublisher = field(init=False)
    """Publishes submitted jobs' wake-ups off the request path."""

    def __post_init__(self) -> None:
        self.tokens = TokenCache(self.settings.token_cache_s)
        self.metrics = Metrics(self.db)
        self.reads = LoopDB(self.db, size=self.db.pool_size)
        self.wakeups = WakeupPublisher(self.celery, self.db)
        self.metrics.registry.register(PoolCollector(self.db, self.reads))

    def size_threadpool(self) -> None:
        """Cap the event loop's threadpool (sync handlers, sync dependencies) at the database pool size:
        every thread then finds an idle pooled connection, and 50 clients never make the pool open
        (and close again) overflow connections. Call from inside the running loop (the lifespan)."""
        to_thread.current_default_thread_limiter().total_tokens = self.db.pool_size


class PoolCollector(Collector):
    """The database pools as seen by this process, each labelled `pool`: `threads` (the engine's pool,
    for sync handlers) and `loop` (services.api.loopdb's reads). Connections opened so far (a steady pool
    stops opening new ones; each opens at most MMDLM_DB_POOL_SIZE) and connections in use now."""

    def __init__(self, db: Database, reads: LoopDB) -> None:
        self.db = db
        self.reads = reads

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        opened = CounterMetricFamily(
            "mmdlm_db_connections_opened",
            "Database connections opened by this process: pool=threads (sync handlers) or loop (hot reads)",
            labels=["pool"],
        )
        opened.add_metric(["threads"], float(self.db.connections_opened))
        opened.add_metric(["loop"], float(self.reads.connections_opened))
        yield opened
        in_use = GaugeMetricFamily(
            "mmdlm_db_connections_in_use", "Pooled connections checked out now", labels=["pool"]
        )
        checked_out = getattr(self.db.engine.pool, "checkedout", None)
        if checked_out is not None:
            in_use.add_metric(["threads"], float(checked_out()))
        in_use.add_metric(["loop"], float(self.reads.in_use))
        yield in_use
