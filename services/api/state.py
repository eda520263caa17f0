"""Process-wide objects of the gateway, built once at start-up and reached through `deps`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from celery import Celery

from services.api.observability import Metrics
from services.common.auth import Principal
from services.common.db import Database
from services.common.kinds import JobKind
from services.common.settings import Settings
from services.common.store import ObjectStore


class TokenCache:
    """token hash -> Principal for `ttl_s` seconds: most requests then authenticate without a query.
    A revoked token keeps working for at most `ttl_s` (MMDLM_TOKEN_CACHE_S; 0 disables the cache)."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        if self.ttl_s <= 0:
            return None
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl_s, principal)


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
