from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.settings import Settings


def make(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Settings:
    monkeypatch.chdir(tmp_path)  # no stray .env file
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_defaults_are_the_embedded_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = make(monkeypatch, tmp_path)
    home = (tmp_path / "var").resolve()
    assert s.home == home
    assert s.database_url == f"sqlite:///{home / 'mmdlm.sqlite'}"
    assert s.broker_url == f"sqla+sqlite:///{home / 'broker.sqlite'}"
    assert s.store_backend == "local" and s.store_path == home / "store"
    assert s.is_sqlite and s.embedded_broker and s.should_auto_migrate


def test_environment_selects_production_backends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = make(
        monkeypatch, tmp_path,
        MMDLM_DATABASE_URL="postgresql+psycopg://u:secret@db:5432/mmdlm",
        MMDLM_BROKER_URL="redis://redis:6379/0",
        MMDLM_STORE_BACKEND="s3", MMDLM_S3_ENDPOINT="minio:9000", MMDLM_S3_ACCESS_KEY="ak",
        MMDLM_S3_SECRET_KEY="sk", MMDLM_S3_SECURE="false", MMDLM_S3_PART_SIZE_MB="16",
        MMDLM_KIND_MODULES="a.kinds, b.kinds",
    )  # fmt: skip
    assert not s.is_sqlite and not s.embedded_broker and not s.should_auto_migrate
    assert s.s3_part_size_mb == 16 and s.s3_secure is False
    assert s.kind_modules == ["a.kinds", "b.kinds"]
    redacted = s.redacted()
    assert "secret" not in redacted["database_url"] and "***" in redacted["database_url"]
    assert redacted["s3_secret_key"] != "sk"


def test_s3_without_credentials_names_the_missing_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="MMDLM_S3_ACCESS_KEY, MMDLM_S3_SECRET_KEY"):
        make(monkeypatch, tmp_path, MMDLM_STORE_BACKEND="s3", MMDLM_S3_ENDPOINT="minio:9000")


def test_s3_endpoint_with_scheme_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="without a scheme"):
        make(monkeypatch, tmp_path, MMDLM_STORE_BACKEND="s3", MMDLM_S3_ENDPOINT="http://minio:9000",
             MMDLM_S3_ACCESS_KEY="a", MMDLM_S3_SECRET_KEY="b")  # fmt: skip


def test_heartbeat_must_fit_three_times_in_the_lease(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="MMDLM_HEARTBEAT_INTERVAL_S"):
        make(monkeypatch, tmp_path, MMDLM_LEASE_TTL_S="2", MMDLM_HEARTBEAT_INTERVAL_S="1")


def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="max_body_bytes"):
        make(monkeypatch, tmp_path, MMDLM_MAX_BODY_BYTES="12")
