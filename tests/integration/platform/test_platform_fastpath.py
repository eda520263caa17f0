"""50 concurrent clients against a real API process on PostgreSQL: every answer is a 200 and each pool
(the threadpool's, capped at its size; the event loop's read pool) opens no more connections than its
size. Before issue 11, 40 threads
on a 10+10 pool churned through ~1,000 new connections every 15 s."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import httpx
import pytest

from tests.utils.harness import Backend, Platform

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

POOL_SIZE = 3
CLIENTS = 50


def _metric(text: str, name: str, pool: str) -> float:
    match = re.search(rf'^{name}{{pool="{pool}"}} ([0-9.e+]+)$', text, re.M)
    assert match is not None, f"{name}{{pool={pool!r}}} not in /metrics"
    return float(match.group(1))


async def _load(url: str, token: str, job_ids: list[str]) -> list[int]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:

        async def user(n: int) -> list[int]:
            codes = []
            for i in range(6):
                job_id = job_ids[(n + i) % len(job_ids)]
                path = (f"/v1/jobs/{job_id}", "/v1/jobs?limit=5", f"/v1/jobs/{job_id}/events?follow=false")[
                    i % 3
                ]
                codes.append((await client.get(path)).status_code)
            return codes

        results = await asyncio.gather(*(user(n) for n in range(CLIENTS)))
    return [code for codes in results for code in codes]


@pytest.mark.slow
def test_fifty_clients_stay_within_the_pool(
    make_backend: Callable[[str], Backend], platform_factory: Callable[..., Platform]
) -> None:
    p = platform_factory(
        make_backend("production"),
        workers_queues=[],
        env={"MMDLM_DB_POOL_SIZE": str(POOL_SIZE), "MMDLM_TOKEN_CACHE_S": "30"},
    )
    job_ids = [p.client.submit({"kind": "probe", "steps": 1})["id"] for _ in range(5)]
    codes = asyncio.run(_load(p.url, p.token, job_ids))
    assert len(codes) == CLIENTS * 6 and set(codes) == {200}, sorted(set(codes))
    metrics = httpx.get(f"{p.url}/metrics", timeout=30).text
    # each pool (sync handlers' threads; hot reads on the event loop) opens at most its size
    for pool in ("threads", "loop"):
        assert 0 < _metric(metrics, "mmdlm_db_connections_opened_total", pool) <= POOL_SIZE, p.logs()
    assert _metric(metrics, "mmdlm_db_connections_in_use", "threads") <= 1  # only the scrape's own, if any
    assert _metric(metrics, "mmdlm_db_connections_in_use", "loop") == 0
