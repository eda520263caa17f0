"""pytest fixtures shared by every test package (loaded by tests/conftest.py).

Servers (session scope, started once, isolated per use):
  s3_server          a SeaweedFS S3 server on free ports (`S3Server`: endpoint, keys, `.env(bucket)`)
  postgres_url       a fresh PostgreSQL database for the whole session (URL; dropped at the end)
  postgres_database  a factory: `with postgres_database() as url:` a fresh database per use
Backends:
  backend            parametrized: `embedded` (SQLite + sqla+sqlite broker + local store) and
                     `production` (PostgreSQL + Redis + S3); each use gets a fresh database,
                     Redis namespace and bucket
  make_backend       a factory: `make_backend("embedded" | "production")`
Platforms (a real API + real workers, see tests/utils/harness.py):
  platform_factory   `platform_factory(backend, workers=[["encode"], ["train", "sample"]], env={...})`;
                     every platform it starts is stopped at the end of the test
  platform           one platform per (test module, backend) with one worker on all queues, for
                     tests that only submit jobs (it is shared: do not kill its workers)

Tests that need PostgreSQL/Redis are skipped with a reason when the servers are absent, except under
CI (`CI` set), where that is an error.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.utils.harness import Backend, Platform
from tests.utils.servers import (
    S3Server,
    ServerUnavailable,
    postgres_available,
    postgres_database,
    redis_available,
    redis_namespace,
    seaweed_s3,
)

BACKENDS = ("embedded", "production")


def need(condition: bool, message: str) -> None:
    """Missing prerequisites skip a test on a developer machine and fail it under CI."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _require(available: bool, what: str) -> None:
    need(
        available,
        f"{what} is not running"
        + (" (CI must start it: see .ci/run)" if os.environ.get("CI") else " on this machine"),
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    try:
        with seaweed_s3(tmp_path_factory.mktemp("s3")) as server:
            yield server
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    _require(postgres_available(), "PostgreSQL (127.0.0.1:5432)")
    with postgres_database() as url:
        yield url


@pytest.fixture(name="postgres_database", scope="session")
def postgres_database_fixture() -> Callable[[], Any]:
    _require(postgres_available(), "PostgreSQL (127.0.0.1:5432)")
    return postgres_database


@pytest.fixture
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Backend]]:
    with ExitStack() as stack:

        def make(name: str) -> Backend:
            return stack.enter_context(_backend(name, request, tmp_path / f"backend-{secrets.token_hex(3)}"))

        yield make


@contextmanager
def _backend(name: str, request: pytest.FixtureRequest, workdir: Path) -> Iterator[Backend]:
    if name == "embedded":
        workdir.mkdir(parents=True, exist_ok=True)
        yield Backend("embedded", {"MMDLM_HOME": str(workdir)})
        return
    if name != "production":
        raise ValueError(f"unknown backend {name!r}")
    _require(postgres_available(), "PostgreSQL (127.0.0.1:5432)")
    _require(redis_available(), "Redis (127.0.0.1:6379)")
    s3: S3Server = request.getfixturevalue("s3_server")
    with postgres_database() as db_url, redis_namespace() as (broker_url, prefix):
        yield Backend(
            "production",
            {
                "MMDLM_DATABASE_URL": db_url,
                "MMDLM_BROKER_URL": broker_url,
                "MMDLM_BROKER_KEY_PREFIX": prefix,
                **s3.env(bucket=f"mmdlm-test-{secrets.token_hex(4)}"),
            },
        )


def _backend_marks(name: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.postgres, pytest.mark.redis] if name == "production" else []


BACKEND_PARAMS = [pytest.param(name, marks=_backend_marks(name), id=name) for name in BACKENDS]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest, make_backend: Callable[[str], Backend]) -> Backend:
    return make_backend(request.param)


@pytest.fixture
def platform_factory(tmp_path: Path) -> Iterator[Callable[..., Platform]]:
    with ExitStack() as stack:

        def start(backend: Backend, **kwargs: Any) -> Platform:
            workdir = tmp_path / f"platform-{secrets.token_hex(3)}"
            return stack.enter_context(Platform(backend, workdir, **kwargs))

        yield start


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def platform(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    workdir = tmp_path_factory.mktemp(f"platform-{request.param}")
    with (
        _backend(request.param, request, workdir / "backend") as backend,
        Platform(backend, workdir / "p") as p,
    ):
        yield p


@pytest.fixture(scope="session")
def debug_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared slice of the bundled corpus per session (training, CLI, eval and learning tests)."""
    from mmdlm.training.debug import prepare_debug_dataset

    # getbasetemp() is shared by the whole session, so every test directory reuses one preparation
    return prepare_debug_dataset(tmp_path_factory.getbasetemp() / "datasets")
