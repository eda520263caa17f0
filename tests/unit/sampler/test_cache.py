"""The model cache: bounded in bytes, least recently used out first, one load per model at a time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from services.sampler.cache import ModelCache
from services.sampler.schemas import RequestError


@dataclass
class Fake:
    artifact_id: str
    nbytes: int


class Loader:
    def __init__(self, sizes: dict[str, int], delay_s: float = 0.0) -> None:
        self.sizes = sizes
        self.delay_s = delay_s
        self.calls: list[str] = []

    def __call__(self, key: str) -> Fake:
        self.calls.append(key)
        time.sleep(self.delay_s)
        return Fake(key, self.sizes[key])


def test_lru_eviction_keeps_the_total_under_the_budget() -> None:
    loader = Loader({"a": 40, "b": 40, "c": 40})
    cache = ModelCache(loader, max_bytes=100)  # type: ignore[arg-type]
    cache.get("a")
    cache.get("b")
    cache.get("a")  # a is now the most recently used
    cache.get("c")  # 120 > 100: b (least recently used) goes
    assert [m.artifact_id for m in cache.values()] == ["a", "c"]
    assert cache.stats()["bytes"] == 80 and cache.stats()["evictions"] == 1
    cache.get("b")
    assert loader.calls == ["a", "b", "c", "b"]
    assert cache.stats()["hits"] == 1


def test_a_model_larger_than_the_budget_is_refused_with_507() -> None:
    cache = ModelCache(Loader({"big": 500}), max_bytes=100)  # type: ignore[arg-type]
    with pytest.raises(RequestError) as info:
        cache.get("big")
    assert info.value.status == 507 and "MMDLM_SAMPLER_CACHE_BYTES" in info.value.message
    assert cache.stats()["entries"] == 0


def test_concurrent_misses_load_once() -> None:
    loader = Loader({"a": 10}, delay_s=0.2)
    cache = ModelCache(loader, max_bytes=100)  # type: ignore[arg-type]
    got: list[Fake] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("a"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == ["a"] and len({id(m) for m in got}) == 1 and len(got) == 4


def test_a_failed_load_is_retried_by_the_next_request() -> None:
    attempts: list[int] = []

    def flaky(key: str) -> Fake:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("store hiccup")
        return Fake(key, 1)

    cache = ModelCache(flaky, max_bytes=100)  # type: ignore[arg-type]
    with pytest.raises(OSError):
        cache.get("a")
    assert cache.get("a").artifact_id == "a" and len(attempts) == 2
