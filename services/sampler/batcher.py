"""A per-key micro-batcher: concurrent requests with the same key (model + settings) run as one batch.

Each key has a lane: a queue and one asyncio task draining it. The task waits for the first request,
then up to `window_s` more (or until `max_rows` rows are queued), takes as many queued requests as fit in
`max_rows` (always at least one), and runs them in the compute executor while the next batch collects.
So under load a batch forms while the previous one computes, and an idle service adds at most `window_s`
of latency. The executor is the only place sampling runs: the event loop never blocks on the network.

With `enabled=False` every request is its own batch (the baseline the benchmark compares against).
A request whose client went away (its future cancelled) is dropped before its batch starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

IDLE_S = 30.0  # a lane with nothing queued for this long ends its task


@dataclass
class _Pending:
    item: Any
    rows: int
    future: asyncio.Future[Any]
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class _Lane:
    context: Any
    queue: deque[_Pending] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def rows(self) -> int:
        return sum(p.rows for p in self.queue)


@dataclass(frozen=True)
class BatchInfo:
    """What a request learns about the batch it ran in."""

    queue_s: float
    requests: int
    rows: int


RunFn = Callable[[Any, list[Any]], list[Any]]


class MicroBatcher:
    def __init__(
        self, run: RunFn, executor: Executor, *, window_s: float, max_rows: int, enabled: bool = True
    ) -> None:
        self._run = run
        self._executor = executor
        self.window_s = window_s
        self.max_rows = max_rows
        self.enabled = enabled
        self._lanes: dict[Hashable, _Lane] = {}
        self.batches = 0
        self.requests = 0
        self.on_batch: Callable[[int, int], None] | None = None  # (requests, rows), for metrics

    async def submit(self, key: Hashable, context: Any, item: Any, rows: int) -> tuple[Any, BatchInfo]:
        """Queue `item` (of `rows` rows) under `key`; returns `run(context, items)`'s result for it."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(key)
        if lane is None or lane.task is None or lane.task.done():  # new, or its task ended with its loop
            lane = self._lanes[key] = _Lane(context=context)
            lane.task = loop.create_task(self._drain(key, lane), name=f"batcher-{len(self._lanes)}")
        lane.context = context
        pending = _Pending(item=item, rows=rows, future=loop.create_future())
        lane.queue.append(pending)
        lane.wake.set()
        return await pending.future

    def lanes(self) -> int:
        return len(self._lanes)

    async def close(self) -> None:
        for lane in list(self._lanes.values()):
            if lane.task is not None:
                lane.task.cancel()
        self._lanes.clear()

    async def _drain(self, key: Hashable, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not lane.queue:
                lane.wake.clear()
                try:
                    await asyncio.wait_for(lane.wake.wait(), IDLE_S)
                except TimeoutError:
                    if not lane.queue:
                        self._lanes.pop(key, None)
                        return
                continue
            if self.enabled:
                deadline = lane.queue[0].arrived + self.window_s
                while lane.rows() < self.max_rows and (left := deadline - time.monotonic()) > 0:
                    lane.wake.clear()
                    try:
                        await asyncio.wait_for(lane.wake.wait(), left)
                    except TimeoutError:
                        break
            batch = self._take(lane)
            if not batch:
                continue
            started = time.monotonic()
            rows = sum(p.rows for p in batch)
            self.batches += 1
            self.requests += len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), rows)
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run, lane.context, [p.item for p in batch]
                )
            except Exception as exc:  # every request of the batch gets the error
                logger.exception("batch of %d requests failed", len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result((result, BatchInfo(started - p.arrived, len(batch), rows)))

    def _take(self, lane: _Lane) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while lane.queue:
            p = lane.queue[0]
            if p.future.done():  # cancelled by a client that went away
                lane.queue.popleft()
                continue
            if batch and (not self.enabled or rows + p.rows > self.max_rows):
                break
            batch.append(lane.queue.popleft())
            rows += p.rows
        return batch
