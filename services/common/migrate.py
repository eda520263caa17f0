"""`alembic upgrade head` as a function, so `mmdlm migrate`, embedded start-up and tests share it.

Embedded mode migrates at every start; several processes (API, workers) may start at once, so the
SQLite upgrade is serialised with a file lock, and PostgreSQL with a transaction-level advisory lock.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.common.db import make_engine

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
_PG_LOCK_KEY = 0x6D6D646C6D  # "mmdlm"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"
    return heads[0]


def known_revisions() -> set[str]:
    """Every revision this code's migration scripts know (a database at any other one is newer)."""
    return {
        script.revision
        for script in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()
    }


def current_revision(url: str) -> str | None:
    engine = make_engine(url, one_shot=True)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (idempotent)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        lock_path = Path(database + ".migrate.lock") if database and database != ":memory:" else None
        with _file_lock(lock_path):
            command.upgrade(alembic_config(url), revision)
        return
    engine = make_engine(url, one_shot=True)
    try:
        with engine.begin() as conn:
            if parsed.get_backend_name() == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
