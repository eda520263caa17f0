"""Hot reads on the event loop: the status read and the events stream's reads run with no threadpool
hop, no SQLAlchemy execution machinery and no pool checkout.

Why: under load one status read cost ~0.9 ms of the API's CPU, and most of it was not the query: the
threadpool hop (~70 us), the pool checkout/return of an autocommit connection (~170 us: isolation level
set and reset) and SQLAlchemy's execute path (~100 us over the driver's own). Here:

- PostgreSQL: a small pool of asyncpg connections, opened lazily up to `MMDLM_DB_POOL_SIZE` and kept
  (replaced after `POOL_RECYCLE_S`, or when found broken); asyncpg prepares each statement once per
  connection and caches it. asyncpg, not psycopg's async connection: ~35 us of CPU per read against
  ~95 us (same query, same machine), and this is the one path where that is most of the cost.
  Waiting for a connection longer than `timeout_s` raises SQLAlchemy's pool `TimeoutError`, an
  unreachable or refusing server SQLAlchemy's `OperationalError`: both are already a 503 +
  Retry-After (services.common.http_errors).
- SQLite: one connection used right on the loop (WAL readers never wait for writers; a read by primary
  key is ~10 us), with `busy_timeout=0` and `query_only`: if SQLite ever answers "busy" (a WAL recovery),
  the read is redone in the threadpool on the ordinary engine, so the loop never sleeps on a lock.

The statements are `services.common.crud`'s prebuilt ones, compiled once per dialect; rows get the
dialect's own result processors (UTC datetimes, JSON), so a row here equals the ORM/Core path's row.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import asyncpg
import sqlalchemy.exc
from sqlalchemy import Dialect
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.sql import Insert, Select
from starlette.concurrency import run_in_threadpool

from services.common.db import POOL_RECYCLE_S, Database


class Prepared:
    """One prebuilt statement compiled for one dialect: SQL text, parameter order with the dialect's bind
    processors (UTC datetimes, JSON), and for a select a row factory applying its result processors
    (named-tuple rows with the select's column keys)."""

    def __init__(self, stmt: Select[Any] | Insert, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        self.positional = compiled.positiontup is not None
        self.order: list[str] = list(compiled.positiontup or [])
        # values the compiler bound itself (SQLite's `OFFSET ?` of a LIMIT without an offset)
        self.defaults = {k: v for k, v in compiled.params.items() if v is not None}
        self.binds: dict[str, Callable[[Any], Any]] = dict(compiled._bind_processors)  # type: ignore[attr-defined]
        columns = list(stmt.selected_columns) if isinstance(stmt, Select) else []
        keys = [c.key or f"col{i}" for i, c in enumerate(columns)]
        self.row_type: Any = NamedTuple("Row", [(k, Any) for k in keys]) if keys else tuple  # type: ignore[misc]
        self.processors: list[tuple[int, Callable[[Any], Any]]] = []
        for i, column in enumerate(columns):
            processor = column.type._cached_result_processor(dialect, None)
            if processor is not None:
                self.processors.append((i, processor))

    def params(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        if self.defaults:
            values = {**self.defaults, **values}
        if self.binds:
            values = {
                k: (self.binds[k](v) if k in self.binds and v is not None else v) for k, v in values.items()
            }
        return [values[name] for name in self.order] if self.positional else values

    def rows(self, raw: Sequence[Sequence[Any]]) -> list[Any]:
        out = []
        make = self.row_type._make
        for row in raw:
            if self.processors:
                row = list(row)
                for i, processor in self.processors:
                    row[i] = processor(row[i])
            out.append(make(row))
        return out


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class LoopDB:
    """Reads for the event loop; `fetch(stmt, params)` returns processed rows. Build once per app."""

    def __init__(self, db: Database, *, size: int, timeout_s: float = 30.0) -> None:
        self.db = db
        url = make_url(db.url)
        self.backend = url.get_backend_name()
        # statements compiled for the driver that runs them: `$1` parameters for asyncpg
        self.dialect: Dialect = asyncpg_dialect() if self.backend == "postgresql" else db.engine.dialect
        self.size = max(1, size)
        self.timeout_s = timeout_s
        self._prepared: dict[int, Prepared] = {}
        self._idle: deque[tuple[float, asyncpg.Connection]] = deque()
        self._slots: asyncio.Semaphore | None = None
        self._sqlite: sqlite3.Connection | None = None
        self.connections_opened = 0
        self._busy = 0
        self._dsn = (
            url.set(drivername="postgresql").render_as_string(hide_password=False)
            if self.backend == "postgresql"
            else None
        )
        self._sqlite_path = url.database if self.backend == "sqlite" else None

    @property
    def enabled(self) -> bool:
        """False where reads stay on the threadpool path (in-memory SQLite: per-thread databases)."""
        if self.backend == "postgresql":
            return True
        return self.backend == "sqlite" and self._sqlite_path not in (None, "", ":memory:")

    @property
    def in_use(self) -> int:
        """PostgreSQL connections running a read now (SQLite's one connection is never held)."""
        return self._busy

    def prepared(self, stmt: Select[Any] | Insert) -> Prepared:
        found = self._prepared.get(id(stmt))
        if found is None:
            found = self._prepared[id(stmt)] = Prepared(stmt, self.dialect)
        return found

    async def fetch(self, stmt: Select[Any], values: dict[str, Any]) -> list[Any]:
        prepared = self.prepared(stmt)
        params = prepared.params(values)
        if self.backend == "sqlite":
            try:
                raw = self._sqlite_conn().execute(prepared.sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                raw = await run_in_threadpool(self._fetch_sync, prepared, params)
            return prepared.rows(raw)
        return prepared.rows(await self._on_pg(prepared.sql, params, write=False))

    async def execute(self, stmt: Insert, values: dict[str, Any]) -> None:
        """One write statement in autocommit (PostgreSQL only: SQLite writes wait on the file's write lock,
        so they stay in the threadpool)."""
        if self.backend != "postgresql":
            raise RuntimeError("LoopDB.execute runs on PostgreSQL only")
        prepared = self.prepared(stmt)
        await self._on_pg(prepared.sql, prepared.params(values), write=True)

    def _fetch_sync(self, prepared: Prepared, params: Any) -> list[Any]:
        with self.db.read() as conn:
            return list(conn.exec_driver_sql(prepared.sql, tuple(params)))

    def _sqlite_conn(self) -> sqlite3.Connection:
        conn = self._sqlite
        if conn is None:
            conn = sqlite3.connect(self._sqlite_path or "", check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA query_only=ON")
            self._sqlite = conn
            self.connections_opened += 1
        return conn

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        for name in ("json", "jsonb"):  # decoded like the sync driver does (SQLAlchemy's JSON type); values
            # bound through SQLAlchemy's JSON bind processor arrive as JSON text already
            await conn.set_type_codec(name, encoder=_json_text, decoder=json.loads, schema="pg_catalog")
        self.connections_opened += 1
        return conn

    async def _on_pg(self, sql: str, params: Any, *, write: bool) -> Any:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        if self._slots.locked():  # every connection busy: wait, bounded (no timer otherwise)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise sqlalchemy.exc.TimeoutError(
                    f"no free connection in the gateway's read pool (size {self.size}) after "
                    f"{self.timeout_s} s"
                ) from None
        else:
            await self._slots.acquire()
        conn: asyncpg.Connection | None = None
        born = 0.0
        self._busy += 1
        try:
            now = time.monotonic()
            while self._idle:
                born, candidate = self._idle.pop()
                if not candidate.is_closed() and now - born < POOL_RECYCLE_S:
                    conn = candidate
                    break
                candidate.terminate()
            if conn is None:
                conn = await self._connect()
                born = now
            rows = await (conn.execute(sql, *params) if write else conn.fetch(sql, *params))
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            if conn is not None:
                conn.terminate()
            raise sqlalchemy.exc.OperationalError(sql, params, exc) from exc  # -> 503 + Retry-After
        except BaseException:
            if conn is not None:
                conn.terminate()  # interrupted mid-query (a cancelled request): never reuse it
            raise
        finally:
            self._busy -= 1
            self._slots.release()
        self._idle.append((born, conn))
        return rows

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop()[1].close(timeout=2)
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
