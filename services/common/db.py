"""Engines and sessions. One engine per (process, URL): prefork workers must not share pooled
connections with their parent, so the cache is keyed by pid as well.

SQLite runs in WAL mode with a long busy timeout so that the API, the workers and the sweeper can write
the same file concurrently. Every state change in `lifecycle` is a single conditional UPDATE, so the
pysqlite default of starting a transaction at the first write is enough; no read-then-write races.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

_LOCK = threading.Lock()
_ENGINES: dict[tuple[int, str], Engine] = {}


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False, one_shot: bool = False) -> Engine:
    """A new engine with the pragmas / pool settings this project relies on.

    one_shot: no connection pool (migrations, CLI admin commands), so nothing lingers after dispose.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if one_shot:
        kwargs["poolclass"] = NullPool
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if not one_shot:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_recycle=1800)
    return create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def get_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    key = (os.getpid(), url)
    engine = _ENGINES.get(key)
    if engine is None:
        with _LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                engine = _ENGINES[key] = make_engine(url, pool_size=pool_size, echo=echo)
    return engine


def dispose_inherited() -> None:
    """Forget engines created by a parent process (call right after fork) without closing its sockets."""
    with _LOCK:
        for (pid, _), engine in list(_ENGINES.items()):
            if pid != os.getpid():
                engine.dispose(close=False)
                _ENGINES.pop((pid, _))


class Database:
    """An engine plus a session factory; the one object the API and the workers pass around."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self._pool_size = pool_size
        self._echo = echo
        self._makers: dict[int, sessionmaker[Session]] = {}
        self._readers: dict[int, sessionmaker[Session]] = {}

    @property
    def engine(self) -> Engine:
        return get_engine(self.url, pool_size=self._pool_size, echo=self._echo)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

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

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self.session() as session, session.begin():
            yield session
