"""Gateway benchmark: submit and status throughput and latency (p50/p99) with 1, 10 and 50 concurrent
clients on loopback, on PostgreSQL + Redis and on the embedded default (SQLite + sqla+sqlite broker).

A real API process (uvicorn, one process, as `mmdlm serve` runs it) is started per backend; clients
are asyncio tasks of this process with one keep-alive connection each. No worker runs, so submitted
jobs stay queued and status reads hit a growing table. Two load shapes:
  closed   each client sends its next request as soon as the previous answer arrives: the maximum
           throughput; latency then follows Little's law (p50 ~ clients / throughput);
  paced    each client polls status at --rate requests/s (a fleet of CLIs following their jobs):
           the latency a user sees at a given load. Targets (PostgreSQL, 2 cores): status p99 < 25 ms
           at 50 clients, >= 200 submits/s.
The client shares the CPU with the server here, so closed-loop numbers understate the server.
Results: a table and bench/results/api.json.

    python bench/api.py                         # both backends, 5 s per cell
    python bench/api.py --backends embedded --duration 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.common.auth import create_token  # noqa: E402
from services.common.db import Database  # noqa: E402
from services.common.migrate import upgrade  # noqa: E402
from tests.utils.servers import free_port, postgres_database, redis_namespace, stop_process_group  # noqa: E402

SPEC = {
    "kind": "prepare-data",
    "source": "bundled",
    "tokenizer": "gpt2",
    "seq_len": 128,
    "max_documents": 100,
}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--backends", nargs="+", default=["postgres", "embedded"], choices=["postgres", "embedded"]
    )
    p.add_argument("--clients", nargs="+", type=int, default=[1, 10, 50])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per (operation, clients) cell")
    p.add_argument("--rate", type=float, default=5.0, help="paced mode: status requests/s per client")
    p.add_argument(
        "--api-workers", type=int, default=1, help="uvicorn processes of the API (mmdlm serve --workers)"
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api.json")
    return p.parse_args()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _closed(
    url: str, token: str, op: str, clients: int, duration: float, ids: list[str]
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def user() -> None:
        nonlocal errors
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                if op == "submit":
                    response = await client.post("/v1/jobs", json=SPEC)
                else:
                    response = await client.get(f"/v1/jobs/{random.choice(ids)}")
                latencies.append(time.perf_counter() - start)
                if response.status_code >= 300:
                    errors += 1
                elif op == "submit":
                    ids.append(response.json()["id"])

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return _summary(op, "closed", clients, latencies, errors, elapsed)


async def _paced(
    url: str, token: str, clients: int, duration: float, rate: float, ids: list[str]
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    period = 1.0 / rate

    async def user() -> None:
        nonlocal errors
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            await asyncio.sleep(random.random() * period)  # spread the clients over one period
            next_at = time.perf_counter()
            end = next_at + duration
            while next_at < end:
                start = time.perf_counter()
                response = await client.get(f"/v1/jobs/{random.choice(ids)}")
                latencies.append(time.perf_counter() - start)
                errors += response.status_code >= 300
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(clients)))
    return _summary("status", f"paced {rate:g}/s", clients, latencies, errors, time.perf_counter() - started)


def _summary(
    op: str, mode: str, clients: int, latencies: list[float], errors: int, elapsed: float
) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {
        "op": op,
        "mode": mode,
        "clients": clients,
        "requests": len(ms),
        "errors": errors,
        "throughput_rps": len(ms) / elapsed,
        "p50_ms": statistics.median(ms) if ms else None,
        "p99_ms": _percentile(ms, 0.99) if ms else None,
    }


def _start_api(env: dict[str, str], workdir: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (workdir / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"API exited: {(workdir / 'api.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("API not ready after 60 s")


def run_backend(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-api-{name}-")))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMDLM_")}
        env.update(MMDLM_HOME=str(workdir / "home"), MMDLM_LOG_LEVEL="WARNING", PYTHONPATH=str(REPO))
        if name == "postgres":
            db_url = stack.enter_context(postgres_database("mmdlm_bench"))
            broker, prefix = stack.enter_context(redis_namespace())
            env.update(MMDLM_DATABASE_URL=db_url, MMDLM_BROKER_URL=broker, MMDLM_BROKER_KEY_PREFIX=prefix)
            database_url = db_url
        else:
            database_url = f"sqlite:///{workdir / 'home' / 'mmdlm.sqlite'}"
        upgrade(database_url)
        with Database(database_url).begin() as session:
            _, token = create_token(session, f"bench-{secrets.token_hex(3)}")
        proc, url = _start_api(env, workdir, args.api_workers)
        stack.callback(stop_process_group, proc)
        ids: list[str] = []
        rows: list[dict[str, Any]] = []
        asyncio.run(_closed(url, token, "submit", 4, 1.0, ids))  # warm-up and a first set of job ids
        for clients in args.clients:
            rows.append(asyncio.run(_closed(url, token, "submit", clients, args.duration, ids)))
        for clients in args.clients:
            rows.append(asyncio.run(_closed(url, token, "status", clients, args.duration, ids)))
        rows.append(asyncio.run(_paced(url, token, max(args.clients), args.duration, args.rate, ids)))
        for row in rows:
            row["backend"] = "PostgreSQL + Redis" if name == "postgres" else "embedded (SQLite + sqla broker)"
            row["jobs_in_table"] = len(ids)
            row["api_workers"] = args.api_workers
        return rows


def main() -> None:
    args = _args()
    results: list[dict[str, Any]] = []
    for name in args.backends:
        results.extend(run_backend(name, args))
    header = f"{'backend':32s} {'op':7s} {'mode':12s} {'clients':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['backend']:32s} {r['op']:7s} {r['mode']:12s} {r['clients']:7d} {r['throughput_rps']:8.1f} "
            f"{r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['errors']:6d}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "api",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "duration_s_per_cell": args.duration,
        "paced_rate_per_client": args.rate,
        "note": "client and server share the same CPUs; closed-loop latency follows Little's law",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
