"""Gateway benchmark: the request fast path of one API process, on PostgreSQL + Redis and on the embedded
default (SQLite + sqla+sqlite broker), in ONE run.

Operations (a fresh API process per backend; no worker runs, so submitted jobs stay queued):
  healthz   GET /healthz: no auth, no database: the framework's floor on this machine
  status    GET /v1/jobs/{id} of a random job of the caller
  list      GET /v1/jobs?limit=20
  events    GET /v1/jobs/{id}/events?follow=false: latency = first byte of the stream body; the stream
            (replay of a queued job + `end`) is read to its end so the connection is reused
  submit    POST /v1/jobs (a prepare-data spec): validation, insert, wake-up publish
Load shapes, per operation: closed loop with 1, 10, 50 clients (each sends its next request when the
previous answer arrived: maximum throughput; latency follows Little's law) and paced 50 clients x 5/s (a
fleet of CLIs following their jobs: the latency a user sees at a given load).

The client is a minimal HTTP/1.1 keep-alive client on raw asyncio streams (uvloop when installed): one
connection per simulated client, requests pre-encoded, responses parsed by Content-Length or chunked
framing only, so that it costs far less CPU per request than the server. Client and server still share
this machine's cores: closed-loop figures understate the server alone.

Reported in the same run: throughput ratios status/healthz and submit/healthz (targets >= 0.7 and
>= 0.4), paced p99 of status (target < 25 ms on an idle machine), 5xx count at 50 clients (target 0), and
PostgreSQL connections opened per 15 s under load (target <= the pool size): the API's own counter
`mmdlm_db_connections_opened_total` (pool 'connect' events, from /metrics) and the server's
`pg_stat_database.sessions` (PostgreSQL >= 14), which also counts for an API without that metric.
CPU per request, by process, for every cell (`api us`, `pg us`, `cli us`: user + system CPU from
/proc over the cell / requests): the client and PostgreSQL share this machine's cores with the API, so
the summary also gives each ratio for the API process's CPU alone (`*_over_healthz_api_cpu_N` =
healthz CPU per request / the operation's), the figure a machine with spare cores for the database and
clients would show.

`--baseline-root DIR` also starts an API from another checkout (e.g. `git archive REV | tar -x -C
/tmp/base`) with this venv, each on its own fresh database migrated by its own code and seeded with the
same number of jobs, and measures every cell on both back to back: before and after under the same
machine load, in one run.

    python bench/api.py                                   # both backends, 4 s per cell
    python bench/api.py --backends embedded --duration 2 --ops healthz status
    python bench/api.py --baseline-root /tmp/base         # before/after, cell by cell
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.common.auth import create_token  # noqa: E402
from services.common.db import Database  # noqa: E402
from tests.utils.servers import free_port, postgres_database, redis_namespace, stop_process_group  # noqa: E402

SPEC = {
    "kind": "prepare-data",
    "source": "bundled",
    "tokenizer": "gpt2",
    "seq_len": 128,
    "max_documents": 100,
}
OPS = ("healthz", "status", "list", "events", "submit")
BACKENDS = {"postgres": "PostgreSQL + Redis", "embedded": "embedded (SQLite + sqla broker)"}


# --- a minimal HTTP/1.1 keep-alive client ------------------------------------------------------------------


class HTTPError(RuntimeError):
    pass


class Connection:
    """One keep-alive connection. `request` sends pre-encoded bytes and returns (status, body, seconds to
    the first body byte). Only what the gateway sends is understood: Content-Length or chunked bodies."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes, float]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        start = time.perf_counter()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        keep_alive = b"connection: close" not in lower
        match = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
        if match is not None:
            body = await self.reader.readexactly(int(match.group(1)))
            first = time.perf_counter() - start
        elif b"transfer-encoding: chunked" in lower:
            body, first = await self._chunked(start)
        else:
            raise HTTPError(f"response without Content-Length or chunked framing: {head[:200]!r}")
        if not keep_alive:
            self.close()
        return status, body, first

    async def _chunked(self, start: float) -> tuple[bytes, float]:
        assert self.reader is not None
        parts: list[bytes] = []
        first = -1.0
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                    pass
                return b"".join(parts), first if first >= 0 else time.perf_counter() - start
            parts.append((await self.reader.readexactly(size + 2))[:-2])
            if first < 0:
                first = time.perf_counter() - start


def encode_request(method: str, path: str, token: str | None, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


@dataclass
class Target:
    host: str
    port: int
    token: str
    ids: list[str] = field(default_factory=list)

    def make(self, op: str) -> Callable[[], bytes]:
        """A function giving the next request's bytes for `op` (random job per status/events read)."""
        if op == "healthz":
            raw = encode_request("GET", "/healthz", None)
            return lambda: raw
        if op == "list":
            raw = encode_request("GET", "/v1/jobs?limit=20", self.token)
            return lambda: raw
        if op == "submit":
            raw = encode_request("POST", "/v1/jobs", self.token, json.dumps(SPEC).encode())
            return lambda: raw
        status = {i: encode_request("GET", f"/v1/jobs/{i}", self.token) for i in self.ids}
        events = {i: encode_request("GET", f"/v1/jobs/{i}/events?follow=false", self.token) for i in self.ids}
        table = status if op == "status" else events
        keys = list(table)
        return lambda: table[random.choice(keys)]


# --- load shapes ----------------------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    new_ids: list[str] = field(default_factory=list)

    def record(self, op: str, status: int, body: bytes, seconds: float) -> None:
        self.latencies.append(seconds)
        if status >= 500:
            self.server_errors += 1
        if status >= 300:
            self.errors += 1
        elif op == "submit":
            self.new_ids.append(json.loads(body)["id"])


async def _one(conn: Connection, op: str, raw: bytes, tally: Tally) -> None:
    try:
        status, body, first = await conn.request(raw)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, HTTPError):
        tally.transport_errors += 1
        tally.errors += 1
        conn.close()
        return
    tally.record(op, status, body, first)


async def closed_loop(target: Target, op: str, clients: int, duration: float) -> tuple[Tally, float]:
    tally = Tally()
    next_raw = target.make(op)
    conns = [Connection(target.host, target.port) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    deadline = time.perf_counter() + duration

    async def user(conn: Connection) -> None:
        while time.perf_counter() < deadline:
            await _one(conn, op, next_raw(), tally)

    started = time.perf_counter()
    await asyncio.gather(*(user(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return tally, elapsed


async def paced(target: Target, op: str, clients: int, rate: float, duration: float) -> tuple[Tally, float]:
    tally = Tally()
    next_raw = target.make(op)
    period = 1.0 / rate
    conns = [Connection(target.host, target.port) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))

    async def user(conn: Connection) -> None:
        await asyncio.sleep(random.random() * period)  # spread the clients over one period
        next_at = time.perf_counter()
        end = next_at + duration
        while next_at < end:
            await _one(conn, op, next_raw(), tally)
            now = time.perf_counter()
            next_at += period
            if next_at < now:  # a late answer: skip the missed slots rather than burst to catch up
                next_at += period * ((now - next_at) // period + 1)
            await asyncio.sleep(max(0.0, next_at - now))

    started = time.perf_counter()
    await asyncio.gather(*(user(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return tally, elapsed


async def seed_jobs(target: Target, count: int) -> list[str]:
    """Submit exactly `count` jobs over 4 connections; their ids."""
    raw = target.make("submit")()
    conns = [Connection(target.host, target.port) for _ in range(4)]
    ids: list[str] = []

    async def one(conn: Connection, n: int) -> None:
        for _ in range(n):
            status, body, _ = await conn.request(raw)
            if status != 201:
                raise HTTPError(f"seeding: submit answered {status}: {body[:200]!r}")
            ids.append(json.loads(body)["id"])

    await asyncio.gather(*(one(c, count // 4 + (i < count % 4)) for i, c in enumerate(conns)))
    for c in conns:
        c.close()
    return ids


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# --- counters read from the API and from PostgreSQL ----------------------------------------------------------


async def api_connections_opened(target: Target) -> float | None:
    """`mmdlm_db_connections_opened_total` from /metrics, summed over its pools; None without it."""
    conn = Connection(target.host, target.port)
    try:
        _, body, _ = await conn.request(encode_request("GET", "/metrics", None))
    finally:
        conn.close()
    values = re.findall(rb"^mmdlm_db_connections_opened_total(?:\{[^}]*\})? ([0-9.e+]+)$", body, re.M)
    return sum(float(v) for v in values) if values else None  # every pool (threads, loop) together


def pg_sessions(db_url: str | None) -> int | None:
    """Sessions ever opened to the bench database (pg_stat_database.sessions, PostgreSQL >= 14)."""
    if db_url is None:
        return None
    import psycopg

    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute("SELECT pg_stat_clear_snapshot()")
        row = c.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()
    return None if row is None else int(row[0])


# --- CPU per request, by process ------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process (Linux /proc), None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _postgres_cpu_s() -> float | None:
    """CPU seconds of every PostgreSQL server process on this machine (backends, WAL writer...)."""
    total, seen = 0.0, False
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() != "postgres":
                    continue
            except OSError:
                continue
            cpu = _cpu_s(int(entry.name))
            if cpu is not None:
                total, seen = total + cpu, True
    return total if seen else None


def _cpu_snapshot(api_pid: int, with_pg: bool) -> dict[str, float | None]:
    own = os.times()
    return {
        "api": _cpu_s(api_pid),
        "postgres": _postgres_cpu_s() if with_pg else None,
        "client": own.user + own.system,
    }


# --- one backend ---------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One API process under test: `after` (this checkout) or `before` (--baseline-root)."""

    name: str
    root: Path
    target: Target
    db_url: str | None
    pid: int
    rows: list[dict[str, Any]] = field(default_factory=list)


def _start_api(env: dict[str, str], log_path: Path, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"API exited: {log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("API not listening after 90 s")


def _variant(name: str, root: Path, backend: str, args: argparse.Namespace, stack: ExitStack) -> Variant:
    """A fresh database (and Redis namespace), a token, and an API process running from `root`."""
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-api-{backend}-{name}-")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMDLM_")}
    env.update(MMDLM_HOME=str(workdir / "home"), MMDLM_LOG_LEVEL="WARNING", PYTHONPATH=str(root))
    env.update(MMDLM_TOKEN_CACHE_S="60", MMDLM_DB_POOL_SIZE=str(args.pool_size))
    db_url: str | None = None
    if backend == "postgres":
        db_url = stack.enter_context(postgres_database("mmdlm_bench"))
        broker, prefix = stack.enter_context(redis_namespace())
        env.update(MMDLM_DATABASE_URL=db_url, MMDLM_BROKER_URL=broker, MMDLM_BROKER_KEY_PREFIX=prefix)
        database_url = db_url
    else:
        database_url = f"sqlite:///{workdir / 'home' / 'mmdlm.sqlite'}"
    # each variant's own migrations: a baseline must not meet a revision it does not know
    subprocess.run(
        [sys.executable, "-m", "services.cli", "migrate"], env={**env, "MMDLM_DATABASE_URL": database_url},
        cwd=root, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    database = Database(database_url)
    with database.begin() as session:
        _, token = create_token(session, f"bench-{secrets.token_hex(3)}")
    database.engine.dispose()
    proc, port = _start_api(env, workdir / "api.log", root)
    stack.callback(stop_process_group, proc)
    return Variant(name, root, Target("127.0.0.1", port, token), db_url, proc.pid)


async def _cell(
    variant: Variant, op: str, mode: str, clients: int, args: argparse.Namespace
) -> dict[str, Any]:
    target = variant.target
    api_before = await api_connections_opened(target)
    pg_before = pg_sessions(variant.db_url)
    cpu_before = _cpu_snapshot(variant.pid, variant.db_url is not None)
    if mode == "closed":
        tally, elapsed = await closed_loop(target, op, clients, args.duration)
    else:
        tally, elapsed = await paced(target, op, clients, args.rate, args.duration)
    cpu_after = _cpu_snapshot(variant.pid, variant.db_url is not None)
    pg_after = pg_sessions(variant.db_url)
    api_after = await api_connections_opened(target)
    target.ids += tally.new_ids
    ms = [x * 1000 for x in tally.latencies]
    return {
        "variant": variant.name, "op": op, "mode": mode, "clients": clients, "requests": len(ms),
        "seconds": elapsed, "throughput_rps": len(ms) / elapsed, "p50_ms": _percentile(ms, 0.5),
        "p99_ms": _percentile(ms, 0.99), "errors": tally.errors, "errors_5xx": tally.server_errors,
        "transport_errors": tally.transport_errors,
        "db_connections_opened_api": None if api_before is None or api_after is None else api_after - api_before,
        "db_sessions_opened_pg": None if pg_before is None or pg_after is None else pg_after - pg_before,
        "jobs_in_table": len(target.ids), "db_pool_size": args.pool_size,
        **{
            f"cpu_us_per_request_{name}": None if cpu_before[name] is None or cpu_after[name] is None or not ms
            else 1e6 * (cpu_after[name] - cpu_before[name]) / len(ms)  # type: ignore[operator]
            for name in cpu_before
        },
    }  # fmt: skip


async def _measure(variants: list[Variant], args: argparse.Namespace) -> None:
    """Every (operation, load) cell on each variant back to back, so that before and after see the
    same machine load."""
    for v in variants:  # warm-up + the jobs reads pick from: the same number on every variant, so
        v.target.ids += await seed_jobs(v.target, args.seed_jobs)  # list/count read equal tables
    shapes = [("closed", c) for c in args.clients] + [(f"paced {args.rate:g}/s", args.paced_clients)]
    for op in args.ops:
        for v in variants:
            await closed_loop(v.target, op, 10, 0.5)  # warm this route's caches
        for mode, clients in shapes:
            for v in variants:
                v.rows.append(await _cell(v, op, mode, clients, args))
                print(_line(v.rows[-1]), flush=True)


def run_backend(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with ExitStack() as stack:
        roots = [("after", args.api_root.resolve())]
        if args.baseline_root is not None:
            roots.append(("before", args.baseline_root.resolve()))
        variants = [_variant(v, root, name, args, stack) for v, root in roots]
        for v in variants:
            print(f"\n{BACKENDS[name]}: {v.name} = API from {v.root} (pid {v.pid})", flush=True)
        print(HEADER, flush=True)
        asyncio.run(_measure(variants, args))
        return {
            "backend": BACKENDS[name],
            "variants": {v.name: {"api_root": str(v.root), "rows": v.rows, "summary": _summary(v.rows, args)} for v in variants},
        }  # fmt: skip


def _find(rows: list[dict[str, Any]], op: str, mode: str, clients: int) -> dict[str, Any] | None:
    return next((r for r in rows if (r["op"], r["mode"], r["clients"]) == (op, mode, clients)), None)


def _summary(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The ratios and counts the targets are stated in (closed loop per client count)."""
    top = max(args.clients)
    out: dict[str, Any] = {}
    for clients in args.clients:
        floor = _find(rows, "healthz", "closed", clients)
        for op in ("status", "list", "events", "submit"):
            row = _find(rows, op, "closed", clients)
            if floor and row:
                out[f"{op}_over_healthz_{clients}"] = row["throughput_rps"] / floor["throughput_rps"]
                api_floor, api_op = floor["cpu_us_per_request_api"], row["cpu_us_per_request_api"]
                if (
                    api_floor and api_op
                ):  # the same ratio for the API process's CPU alone (machine-independent)
                    out[f"{op}_over_healthz_api_cpu_{clients}"] = api_floor / api_op
    paced_status = _find(rows, "status", f"paced {args.rate:g}/s", args.paced_clients)
    out["paced_status_p99_ms"] = paced_status["p99_ms"] if paced_status else None
    out[f"errors_5xx_at_{top}"] = sum(r["errors_5xx"] for r in rows if r["clients"] == top)
    for key in ("db_connections_opened_api", "db_sessions_opened_pg"):
        loaded = [r for r in rows if r["op"] != "healthz" and r[key] is not None]
        if loaded:
            seconds = sum(r["seconds"] for r in loaded)
            out[f"{key}_per_15s"] = 15 * sum(r[key] for r in loaded) / seconds
            out[f"{key}_max_cell"] = max(r[key] for r in loaded)
    return out


def _line(r: dict[str, Any]) -> str:
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    return (
        f"  {r['variant']:7s} {r['op']:8s} {r['mode']:12s} {r['clients']:7d} {r['throughput_rps']:8.1f} "
        f"{num(r['p50_ms'], '8.2f')} {num(r['p99_ms'], '8.2f')} {r['errors']:6d} {r['errors_5xx']:5d} "
        f"{num(r['db_connections_opened_api'], '6.0f')} {num(r['db_sessions_opened_pg'], '6.0f')} "
        f"{num(r.get('cpu_us_per_request_api'), '7.0f')} {num(r.get('cpu_us_per_request_postgres'), '7.0f')} "
        f"{num(r.get('cpu_us_per_request_client'), '7.0f')}"
    )


HEADER = (
    f"  {'variant':7s} {'op':8s} {'mode':12s} {'clients':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
    f"{'errors':>6s} {'5xx':>5s} {'conn':>6s} {'pgsess':>6s} {'api us':>7s} {'pg us':>7s} {'cli us':>7s}"
)
TARGETS = (
    ("status_over_healthz_50", ">= 0.7", lambda v: v >= 0.7),
    ("submit_over_healthz_50", ">= 0.4", lambda v: v >= 0.4),
    ("paced_status_p99_ms", "< 25 ms", lambda v: v < 25),
    ("errors_5xx_at_50", "== 0", lambda v: v == 0),
)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", nargs="+", default=["postgres", "embedded"], choices=list(BACKENDS))
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--clients", nargs="+", type=int, default=[1, 10, 50])
    p.add_argument("--paced-clients", type=int, default=50)
    p.add_argument("--rate", type=float, default=5.0, help="paced mode: requests/s per client")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per (operation, load) cell")
    p.add_argument("--pool-size", type=int, default=10, help="MMDLM_DB_POOL_SIZE of the API")
    p.add_argument("--seed-jobs", type=int, default=200, help="jobs submitted per API before measuring")
    p.add_argument("--api-root", type=Path, default=REPO, help="checkout the API process runs from")
    p.add_argument(
        "--baseline-root", type=Path, default=None,
        help="also run an API from this checkout (e.g. `git worktree add /tmp/base HEAD~1`), cell by cell",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api.json")
    return p.parse_args()


def main() -> None:
    args = _args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    load_before = _load()
    print(f"load average before: {load_before}", flush=True)
    backends = [run_backend(name, args) for name in args.backends]
    load_after = _load()
    print(f"\nload average after: {load_after}")
    for b in backends:
        print(f"\n{b['backend']}")
        print(HEADER)
        print("  " + "-" * (len(HEADER) - 2))
        rows = [r for v in b["variants"].values() for r in v["rows"]]
        for r in sorted(
            rows, key=lambda r: (OPS.index(r["op"]), r["mode"] != "closed", r["clients"], r["variant"])
        ):
            print(_line(r))
        names = list(b["variants"])
        print(f"\n  {'summary':36s} " + " ".join(f"{n:>8s}" for n in names) + "  target")
        for key in b["variants"][names[0]]["summary"]:
            values = [b["variants"][n]["summary"].get(key) for n in names]
            target = next((t for t in TARGETS if t[0] == key), None)
            verdict = ""
            if target is not None and values[0] is not None:
                verdict = f"{target[1]}: {'met' if target[2](values[0]) else 'MISSED'}"
            cells = " ".join(f"{'-' if v is None else format(v, '8.3g'):>8s}" for v in values)
            print(f"  {key:36s} {cells}  {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "api",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_before": load_before,
        "load_average_after": load_after,
        "duration_s_per_cell": args.duration,
        "paced": {"clients": args.paced_clients, "rate_per_client": args.rate},
        "db_pool_size": args.pool_size,
        "seed_jobs": args.seed_jobs,
        "targets": {key: text for key, text, _ in TARGETS},
        "note": "client and server share the same CPUs; closed-loop latency follows Little's law; "
        "events latency = first body byte; conn = pool connects counted by the API (mmdlm_db_connections_"
        "opened_total), pgsess = pg_stat_database.sessions delta",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "backends": backends,
    }  # fmt: skip
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
