"""Engines and sessions. One engine per (process, URL): prefork workers must not share pooled
connections with their parent, so the cache is keyed by pid as well.

SQLite runs in WAL mode with a long busy timeout so that the API, the workers and the sweeper can write
the same file concurrently. Every state change in `lifecycle` is a single conditional UPDATE, so the
pysqlite default of starting a transaction at the first write is enough; no read-then-write races.

Pools: the gateway's has no pre-ping (it cost a second round trip per request); its connections are
recycled after `POOL_RECYCLE_S` instead, and a connection found dead fails its request (503) while
SQLAlchemy invalidates the pool's older connections. Workers and CLI commands, where a round trip per
checkout costs nothing that matters, keep the pre-ping on PostgreSQL and ride through a server restart. The gateway caps its threadpool at the pool size, so every thread that
needs a connection finds one idle and the pool never opens overflow connections (which are closed again on
return: under 40 threads and a 10+10 pool that was ~1,000 new PostgreSQL connections per 15 s).
`connections_opened(engine)` counts the pool's 'connect' events (exported as a gateway metric).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

_LOCK = threading.Lock()
_ENGINES: dict[tuple[int, str, bool], Engine] = {}
POOL_RECYCLE_S = 1800
"""Pooled connections older than this are replaced at checkout (no per-checkout ping)."""


class _ConnectCounter:
    """A pool 'connect' listener counting the DBAPI connections an engine opened."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, _dbapi_connection: Any, _record: Any) -> None:
        with self._lock:
            self.count += 1


_COUNTERS: weakref.WeakKeyDictionary[Engine, _ConnectCounter] = weakref.WeakKeyDictionary()


def connections_opened(engine: Engine) -> int:
    """How many database connections this engine's pool opened since it was made."""
    counter = _COUNTERS.get(engine)
    return 0 if counter is None else counter.count


def make_engine(
    url: str, *, pool_size: int = 10, echo: bool = False, one_shot: bool = False, pre_ping: bool = True
) -> Engine:
    """A new engine with the pragmas / pool settings this project relies on.

    pool_size: connections kept open; as many overflow connections may open on top for a thread that
    holds two at once (rare), closed again on return. pre_ping: test each connection at checkout
    (server databases only; the gateway turns it off, see the module docstring).
    one_shot: no connection pool (migrations, CLI admin commands), so nothing lingers after dispose.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    in_memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
    if one_shot:
        kwargs["poolclass"] = NullPool
    elif not in_memory:  # (in-memory SQLite keeps SQLAlchemy's one-connection-per-thread pool)
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=POOL_RECYCLE_S)
        kwargs["pool_pre_ping"] = pre_ping and parsed.get_backend_name() != "sqlite"
    if parsed.get_backend_name() == "sqlite":
        if not in_memory:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, **kwargs)
    counter = _COUNTERS[engine] = _ConnectCounter()
    event.listen(engine, "connect", counter)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def get_engine(url: str, *, pool_size: int = 10, echo: bool = False, pre_ping: bool = True) -> Engine:
    key = (os.getpid(), url, pre_ping)
    engine = _ENGINES.get(key)
    if engine is None:
        with _LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                engine = _ENGINES[key] = make_engine(url, pool_size=pool_size, echo=echo, pre_ping=pre_ping)
    return engine


def dispose_inherited() -> None:
    """Forget engines created by a parent process (call right after fork) without closing its sockets."""
    with _LOCK:
        for key, engine in list(_ENGINES.items()):
            if key[0] != os.getpid():
                engine.dispose(close=False)
                _ENGINES.pop(key)


class Database:
    """An engine plus a session factory; the one object the API and the workers pass around."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False, pre_ping: bool = True) -> None:
        self.url = url
        self._pool_size = pool_size
        self._pre_ping = pre_ping
        self._echo = echo
        self._makers: dict[int, sessionmaker[Session]] = {}
        self._readers: dict[int, sessionmaker[Session]] = {}
        self._autocommit: dict[int, Engine] = {}

    @property
    def engine(self) -> Engine:
        return get_engine(self.url, pool_size=self._pool_size, echo=self._echo, pre_ping=self._pre_ping)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def pool_size(self) -> int:
        """Connections the pool keeps open: the gateway sizes its threadpool to it."""
        return self._pool_size

    @property
    def connections_opened(self) -> int:
        """Connections this process's pool opened so far (a steady pool stops opening new ones)."""
        return connections_opened(self.engine)

    def session(self) -> Session:
        maker = self._makers.get(os.getpid())
        if maker is None:
            maker = self._makers[os.getpid()] = sessionmaker(self.engine, expire_on_commit=False)
        return maker()

    def reader(self) -> Session:
        """A session for read-only work, in autocommit mode: on PostgreSQL a read then costs one round
        trip instead of BEGIN + query + ROLLBACK (each statement sees its own snapshot). Never write
        through it."""
        maker = self._readers.get(os.getpid())
        if maker is None:
            autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
            maker = self._readers[os.getpid()] = sessionmaker(autocommit, expire_on_commit=False)
        return maker()

    def read(self) -> Connection:
        """A Core connection in autocommit mode for read-only hot paths (`crud`'s prebuilt queries):
        one round trip per statement and no ORM bookkeeping. Use as `with db.read() as conn:`;
        never write through it."""
        return self.autocommit()

    def autocommit(self) -> Connection:
        """A Core connection in autocommit mode: each statement commits on its own (one round trip),
        `with conn.begin():` groups several. For reads (`read()`) and single-statement writes."""
        engine = self._autocommit.get(os.getpid())
        if engine is None:
            engine = self._autocommit[os.getpid()] = self.engine.execution_options(
                isolation_level="AUTOCOMMIT"
            )
        return engine.connect()

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self.session() as session, session.begin():
            yield session
