"""One settings object for every process (API, workers, CLI), read from `MMDLM_*` environment variables.

Defaults are the embedded mode: a SQLite job table, a SQLite-backed Celery broker and a local object
store, all under `./var`, so a laptop or CI runs the same code paths as production with no server.
Production points `MMDLM_DATABASE_URL` at PostgreSQL, `MMDLM_BROKER_URL` at Redis and
`MMDLM_STORE_BACKEND=s3` at MinIO/S3. The backend is chosen here, never by a code edit.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MMDLM_", env_file=".env", env_ignore_empty=True, extra="ignore", validate_default=True
    )

    home: Path = Field(default=Path("var"), description="root of every embedded-mode file")

    # --- SQL job table -------------------------------------------------------------------------------
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = sqlite file under home")
    db_pool_size: int = Field(default=10, ge=1)
    db_echo: bool = False
    auto_migrate: bool | None = Field(
        default=None, description="run `alembic upgrade head` at start; None = only for SQLite"
    )

    # --- Celery broker -------------------------------------------------------------------------------
    broker_url: str = Field(default="", description="Celery broker; empty = sqla+sqlite file under home")
    broker_key_prefix: str = Field(default="", description="Redis key prefix (isolates deployments)")
    broker_visibility_timeout_s: int = Field(default=3600, ge=60)
    broker_poll_interval_s: float = Field(default=0.05, gt=0, description="sqla broker poll period")

    # --- object store ----------------------------------------------------------------------------------
    store_backend: Literal["local", "s3"] = "local"
    store_path: Path | None = Field(default=None, description="local backend root; None = home/store")
    s3_endpoint: str = Field(default="", description="host[:port] of the S3 server, no scheme")
    s3_public_endpoint: str = Field(default="", description="host[:port] used in presigned URLs")
    s3_bucket: str = "mmdlm"
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")
    s3_region: str | None = None
    s3_secure: bool = True
    s3_cert_check: bool = True
    s3_create_bucket: bool = True
    s3_connect_timeout_s: float = Field(default=10.0, gt=0)
    s3_read_timeout_s: float = Field(default=300.0, gt=0)
    s3_max_retries: int = Field(default=3, ge=0)
    s3_part_size_mb: int = Field(default=64, ge=5, le=5120, description="multipart part size")
    presign_expiry_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)

    # --- workers and job lifecycle ----------------------------------------------------------------------
    work_dir: Path | None = Field(default=None, description="job scratch dirs; None = home/work")
    cache_dir: Path | None = Field(
        default=None,
        description="staged artifacts (under artifacts/; the library caches its reference LM and digits beside them); None = home/cache",
    )
    lease_ttl_s: float = Field(default=60.0, gt=0, description="a silent worker loses its job after this")
    heartbeat_interval_s: float = Field(default=0.5, gt=0, description="lease renewal + flush + cancel poll")
    sweep_interval_s: float = Field(default=2.0, gt=0)
    redispatch_after_s: float = Field(
        default=300.0, gt=0, description="re-publish a wake-up for a job still waiting after this"
    )
    max_running_per_user: int = Field(
        default=0, ge=0, description="running jobs per user and queue (0 = no limit); the rest wait"
    )
    default_max_attempts: int = Field(default=3, ge=1, le=100)
    retry_backoff_s: float = Field(default=10.0, ge=0)
    retry_backoff_max_s: float = Field(default=600.0, ge=0)
    cancel_grace_s: float = Field(
        default=60.0, gt=0, description="after this a runner ignoring cancel is killed"
    )
    keep_scratch: bool = Field(default=False, description="keep a succeeded job's scratch dir")
    startup_checks: bool = Field(
        default=True,
        description="workers (and `mmdlm migrate`) check broker, database and store at start and exit "
        "with one line if one is unusable",
    )
    startup_wait_s: float = Field(
        default=10.0, ge=0, le=3600, description="how long those start-up checks retry an unreachable service"
    )
    data_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="folders job specs may name local paths in (folder sources, local tokenizers and "
        "models), separated by os.pathsep or commas; `{user}` in a root is the submitting user's name "
        "(each user sees only their own folder); relative spec paths start in the first root; "
        "empty = home/data; `none` = no local paths at all",
    )
    kind_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="extra modules that register job kinds (comma separated)"
    )

    # --- gateway --------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="larger request bodies get 413")
    token_cache_s: float = Field(default=5.0, ge=0, description="auth lookups cached this long")
    sse_poll_s: float = Field(default=0.25, gt=0)
    log_level: str = "INFO"

    # --- sampler service (services/sampler; its own settings are MMDLM_SAMPLER_* in services/sampler) -----
    sampler_url: str = Field(
        default="http://127.0.0.1:8001", description="where the gateway finds the sampler"
    )
    sampler_timeout_s: float = Field(default=600.0, gt=0, description="gateway -> sampler request timeout")

    # --- CLI client -----------------------------------------------------------------------------------
    api_url: str = "http://127.0.0.1:8000"
    token: SecretStr | None = None
    http_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("kind_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in re.split(rf"[,{re.escape(os.pathsep)}]", value) if part.strip()]
        return value

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # Absolute so that subprocesses started from another cwd still find the same files.
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'mmdlm.sqlite'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.home / 'broker.sqlite'}"
        if self.store_path is None:
            self.store_path = self.home / "store"
        if self.work_dir is None:
            self.work_dir = self.home / "work"
        if self.cache_dir is None:
            self.cache_dir = self.home / "cache"
        if not self.data_roots:
            self.data_roots = [str(self.home / "data")]
        elif [r.lower() for r in self.data_roots] == ["none"]:
            self.data_roots = []
        # absolute, so that the API and workers started from other folders agree
        self.data_roots = [os.path.abspath(os.path.expanduser(r)) for r in self.data_roots]
        if self.store_backend == "s3":
            missing = [
                name
                for name, value in (
                    ("MMDLM_S3_ENDPOINT", self.s3_endpoint),
                    ("MMDLM_S3_ACCESS_KEY", self.s3_access_key),
                    ("MMDLM_S3_SECRET_KEY", self.s3_secret_key.get_secret_value()),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"MMDLM_STORE_BACKEND=s3 needs {', '.join(missing)}")
            if "://" in self.s3_endpoint:
                raise ValueError(
                    f"MMDLM_S3_ENDPOINT must be host[:port] without a scheme (got {self.s3_endpoint!r}); "
                    "use MMDLM_S3_SECURE=false for plain http"
                )
        if self.heartbeat_interval_s * 3 > self.lease_ttl_s:
            raise ValueError(
                f"MMDLM_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s}) must be at most a third of "
                f"MMDLM_LEASE_TTL_S ({self.lease_ttl_s}) so a busy worker never loses its lease"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    def redacted(self) -> dict[str, object]:
        """Settings for logs and `mmdlm config`: secrets masked, passwords stripped from URLs."""
        data = self.model_dump(mode="json")
        for key in ("database_url", "broker_url"):
            data[key] = _strip_password(str(data[key]))
        return data


def _strip_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests build `Settings(...)` directly instead."""
    return Settings()
