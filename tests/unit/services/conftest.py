"""Fixtures of the platform unit tests: a migrated database on SQLite and on PostgreSQL (module scope,
emptied before each test), a user, and both object-store backends."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete

from services.common.auth import Principal, get_or_create_user
from services.common.db import Database
from services.common.migrate import upgrade
from services.common.models import ApiToken, Artifact, Job, JobEvent, Metric, User
from services.common.store import ObjectStore
from services.common.store.local import LocalStore
from services.common.store.s3 import S3Store
from tests.utils.servers import S3Server, postgres_database

DB_PARAMS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module", params=DB_PARAMS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'mmdlm.sqlite'}"
        upgrade(url)
        yield url
        return
    request.getfixturevalue("postgres_database")  # skips (or fails under CI) without a server
    with postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url, pool_size=4)
    with database.begin() as s:
        for model in (Metric, JobEvent, Artifact, Job, ApiToken, User):
            s.execute(delete(model))
    yield database
    database.engine.dispose()


@pytest.fixture
def user(db: Database) -> Principal:
    with db.begin() as s:
        row = get_or_create_user(s, "alice")
        return Principal(row.id, row.name)


@pytest.fixture
def other_user(db: Database) -> Principal:
    with db.begin() as s:
        row = get_or_create_user(s, "bob")
        return Principal(row.id, row.name)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server: S3Server = request.getfixturevalue("s3_server")
    return S3Store(
        endpoint=server.endpoint, bucket=f"unit-{secrets.token_hex(4)}", access_key=server.access_key,
        secret_key=server.secret_key, secure=False, region="us-east-1", connect_timeout_s=3, read_timeout_s=30,
        max_retries=1, part_size=5 << 20,
    )  # fmt: skip
