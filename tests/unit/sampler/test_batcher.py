"""The micro-batcher: concurrent requests of one key share a batch, keys never mix, limits hold, and the
event loop stays free while a batch computes."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from services.sampler.batcher import MicroBatcher


class Recorder:
    """A run function that records its batches and takes `delay_s` (in the executor thread)."""

    def __init__(self, delay_s: float = 0.0, fail_on: Any = None) -> None:
        self.batches: list[tuple[Any, list[Any]]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.fail_on = fail_on

    def __call__(self, context: Any, items: list[Any]) -> list[Any]:
        self.threads.add(threading.current_thread().name)
        self.batches.append((context, list(items)))
        time.sleep(self.delay_s)
        if self.fail_on in items:
            raise RuntimeError(f"bad item {self.fail_on}")
        return [f"{context}:{item}" for item in items]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def executor() -> Any:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
    yield pool
    pool.shutdown(wait=True)


def test_concurrent_requests_share_one_batch_per_key(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, executor, window_s=0.05, max_rows=64)

    async def main() -> list[Any]:
        calls = [batcher.submit("a", "A", i, 1) for i in range(5)] + [batcher.submit("b", "B", 9, 2)]
        return await asyncio.gather(*calls)

    results = run(main())
    assert [r for r, _ in results] == ["A:0", "A:1", "A:2", "A:3", "A:4", "B:9"]
    assert sorted((ctx, tuple(items)) for ctx, items in rec.batches) == [("A", (0, 1, 2, 3, 4)), ("B", (9,))]
    info = results[0][1]
    assert (info.requests, info.rows) == (5, 5) and results[-1][1].rows == 2
    assert rec.threads == {"compute_0"}


def test_max_rows_splits_batches_and_disabled_runs_one_by_one(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, executor, window_s=0.05, max_rows=4)

    async def burst(b: MicroBatcher) -> None:
        await asyncio.gather(*(b.submit("k", "C", i, 2) for i in range(5)))

    run(burst(batcher))
    assert [len(items) for _, items in rec.batches] == [2, 2, 1]  # 2 rows each, at most 4 rows a batch
    rec.batches.clear()
    run(burst(MicroBatcher(rec, executor, window_s=0.05, max_rows=64, enabled=False)))
    assert [len(items) for _, items in rec.batches] == [1, 1, 1, 1, 1]
    # a request bigger than max_rows still runs, alone
    rec.batches.clear()
    run(MicroBatcher(rec, executor, window_s=0.0, max_rows=4).submit("k", "C", "big", 10))
    assert rec.batches == [("C", ["big"])]


def test_the_next_batch_collects_while_one_computes(executor: ThreadPoolExecutor) -> None:
    rec = Recorder(delay_s=0.2)
    batcher = MicroBatcher(rec, executor, window_s=0.0, max_rows=64)

    async def main() -> float:
        first = asyncio.create_task(batcher.submit("k", "C", 0, 1))
        await asyncio.sleep(0.05)  # the first batch is computing now
        start = time.perf_counter()
        ticks = 0
        later = [asyncio.create_task(batcher.submit("k", "C", i, 1)) for i in range(1, 4)]
        while not first.done():  # the loop is not blocked by the computation
            await asyncio.sleep(0.01)
            ticks += 1
        await asyncio.gather(first, *later)
        assert ticks >= 5
        return time.perf_counter() - start

    run(main())
    assert [items for _, items in rec.batches] == [[0], [1, 2, 3]]


def test_a_failing_batch_fails_its_requests_only(executor: ThreadPoolExecutor) -> None:
    rec = Recorder(fail_on=2)
    batcher = MicroBatcher(rec, executor, window_s=0.05, max_rows=64)

    async def main() -> list[Any]:
        bad = [batcher.submit("k", "C", i, 1) for i in range(3)]
        good = batcher.submit("other", "D", 7, 1)
        return await asyncio.gather(*bad, good, return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, RuntimeError) for r in results[:3])
    assert results[3][0] == "D:7"


def test_a_cancelled_request_is_dropped_before_its_batch(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, executor, window_s=0.1, max_rows=64)

    async def main() -> None:
        gone = asyncio.create_task(batcher.submit("k", "C", "gone", 1))
        kept = asyncio.create_task(batcher.submit("k", "C", "kept", 1))
        await asyncio.sleep(0.02)
        gone.cancel()
        await kept

    run(main())
    assert rec.batches == [("C", ["kept"])]
