"""The Alembic migrations create exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from services.common.db import make_engine
from services.common.migrate import alembic_config, current_revision, head_revision, upgrade
from services.common.models import Base


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = make_engine(database_url, one_shot=True)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
    assert current_revision(database_url) == head_revision()


def test_downgrade_and_upgrade_again(tmp_path) -> None:  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade(url)
    upgrade(url)  # idempotent
    command.downgrade(alembic_config(url), "base")
    assert current_revision(url) is None
    upgrade(url)
    assert current_revision(url) == head_revision()
