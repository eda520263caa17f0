"""Migration 0002 adds the jobs.heartbeat_at index to a database already at 0001 (rows kept) and takes
it away again on downgrade, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

from services.common.db import make_engine
from services.common.migrate import alembic_config, current_revision, head_revision, upgrade


def _job_indexes(url: str) -> set[str]:
    engine = make_engine(url, one_shot=True)
    try:
        with engine.connect() as conn:
            return {index["name"] for index in inspect(conn).get_indexes("jobs")}
    finally:
        engine.dispose()


def test_0002_indexes_heartbeats_of_an_existing_database(database_url: str) -> None:
    command.downgrade(alembic_config(database_url), "0001")
    assert "ix_jobs_heartbeat" not in _job_indexes(database_url)
    engine = make_engine(database_url, one_shot=True)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name, created_at) VALUES ('m2', CURRENT_TIMESTAMP)"))
    upgrade(database_url)
    assert current_revision(database_url) == head_revision()
    assert "ix_jobs_heartbeat" in _job_indexes(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE name = 'm2'")).scalar_one() == 1
    engine.dispose()
