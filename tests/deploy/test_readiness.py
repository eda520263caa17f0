"""Readiness follows the schema: a gateway on a real PostgreSQL database that `mmdlm migrate` has not
brought to the code's head revision answers /readyz 503 with the reason, and 200 once it has."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from services.api.main import create_app
from services.api.routes import health
from services.common.db import make_engine
from services.common.migrate import head_revision, upgrade
from services.common.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(_env_file=None, home=tmp_path / "h", database_url=url, auto_migrate=False)  # type: ignore[call-arg]


def _set_revision(url: str, revision: str) -> None:
    engine = make_engine(url, one_shot=True)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        engine.dispose()


def test_readyz_waits_for_the_schema_head(
    tmp_path: Path,
    postgres_database: Callable[[], AbstractContextManager[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with postgres_database() as url:
        with TestClient(create_app(_settings(tmp_path, url))) as client:
            # a database nobody migrated: not ready, and the answer says what to do
            response = client.get("/readyz")
            assert response.status_code == 503, response.text
            check = response.json()["checks"]["database"]
            assert (
                check["ok"] is False and "no schema" in check["error"] and "mmdlm migrate" in check["error"]
            )
            assert head_revision() in check["error"]

            upgrade(url)
            # the cached answer holds for SCHEMA_CACHE_S: probes stay cheap
            assert client.get("/readyz").status_code == 503
            monkeypatch.setattr(health, "SCHEMA_CACHE_S", 0.0)
            response = client.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json()["checks"]["database"]["schema"] == head_revision()

            # a database stamped at a newer release's revision (rolling upgrade): still ready, flagged
            _set_revision(url, "0999_from_a_newer_release")
            body = client.get("/readyz").json()
            assert body["status"] == "ok" and body["checks"]["database"]["ahead"] is True
            _set_revision(url, head_revision())


def test_readyz_reports_a_schema_behind_the_code(
    tmp_path: Path,
    postgres_database: Callable[[], AbstractContextManager[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database at this code's head, but the code is made to expect a later head (`0999_next`): the
    check must report the database as behind, naming both revisions."""
    from services.common import migrate

    with postgres_database() as url:
        upgrade(url)
        real_head = head_revision()
        monkeypatch.setattr(health, "head_revision", lambda: "0999_next")
        monkeypatch.setattr(health, "known_revisions", lambda: {real_head, "0999_next"})
        monkeypatch.setattr(health, "SCHEMA_CACHE_S", 0.0)
        with TestClient(create_app(_settings(tmp_path, url))) as client:
            response = client.get("/readyz")
        assert response.status_code == 503
        error = response.json()["checks"]["database"]["error"]
        assert f"at {real_head}, behind this code's 0999_next" in error
        assert migrate.known_revisions() >= {real_head}


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    health._schema_cache.clear()
    yield
    health._schema_cache.clear()
