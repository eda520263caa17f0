"""Start-up checks of the long-running commands (`mmdlm worker`, `serve`, `serve-sampler`, `migrate`).

A process started with a wrong or unreachable broker, database or object store should say so in one
line and exit, not die later in a 100-line traceback of Celery's connection retries (or run on,
failing every job). Each check is bounded: short connect timeouts, retried for at most
`MMDLM_STARTUP_WAIT_S` so that services started together (compose, a pod beside its database) still
come up. A URL that can never work (unknown scheme or driver, malformed) fails at once.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.common.settings import Settings

logger = logging.getLogger(__name__)

ATTEMPT_TIMEOUT_S = 5.0
"""The most one connection attempt may take (a black-holed host), whatever is left of the wait."""
RETRY_S = 0.5
_DB_REFUSALS = ("does not exist", "password authentication failed", "no pg_hba.conf entry")


class PreflightError(Exception):
    """What is wrong and what to do, in one line."""


class _Permanent(PreflightError):
    """A problem that waiting cannot fix (a malformed URL, an unknown driver)."""


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[float], None]  # raises PreflightError; the argument is its timeout in seconds


def oneline(exc: BaseException) -> str:
    """An exception as one short line: a DBAPI error's own first line, without SQLAlchemy's SQL,
    parameters and 'Background on this error' link."""
    inner = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    text = lines[0] if lines else type(inner).__name__
    text = text.removeprefix("connection failed: ")
    return text[:300]


def redact(url: str) -> str:
    """A URL for messages: the password replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


# --- the checks ------------------------------------------------------------------------------------------


def database_check(settings: Settings, *, schema: bool) -> Check:
    """Connect (and with `schema`, require a migrated schema: what a worker needs to claim jobs)."""
    url = settings.database_url

    def run(timeout_s: float) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        shown = redact(url)
        _require_driver(url)
        parsed = make_url(url)
        postgres = parsed.get_backend_name() == "postgresql"
        try:
            if parsed.get_backend_name() == "sqlite":
                from services.common.db import make_engine

                engine = make_engine(url, one_shot=True)  # creates the file's folder: may fail
            else:
                args = {"connect_timeout": max(1, int(timeout_s))} if postgres else {}
                engine = create_engine(url, poolclass=NullPool, connect_args=args)
        except OSError as exc:
            raise PreflightError(f"database {shown} not usable: {oneline(exc)} (check MMDLM_HOME)") from None
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                if schema:
                    from alembic.runtime.migration import MigrationContext

                    if MigrationContext.configure(conn).get_current_revision() is None:
                        raise PreflightError(f"database {shown} has no MM-DLM schema: run `mmdlm migrate`")
        except PreflightError:
            raise
        except Exception as exc:
            reason = oneline(exc)
            # the server answered, and no wait changes its answer (a database starting up is retried)
            if any(m in reason for m in _DB_REFUSALS):
                raise _Permanent(f"database {shown} refused: {reason} (check MMDLM_DATABASE_URL)") from None
            raise PreflightError(
                f"database {shown} unreachable: {reason} (check MMDLM_DATABASE_URL)"
            ) from None
        finally:
            engine.dispose()

    return Check("database", run)


def broker_check(settings: Settings) -> Check:
    url = settings.broker_url

    def run(timeout_s: float) -> None:
        from kombu import Connection

        shown = redact(url)
        _require_transport(url)
        try:
            with Connection(url, connect_timeout=timeout_s) as connection:
                connection.ensure_connection(max_retries=1, timeout=timeout_s)
                if connection.transport.driver_type == "redis":
                    connection.default_channel.client.ping()
        except Exception as exc:
            raise PreflightError(
                f"broker {shown} unreachable: {oneline(exc)} (check MMDLM_BROKER_URL; is Redis running?)"
            ) from None

    return Check("broker", run)


def store_check(settings: Settings) -> Check:
    def run(timeout_s: float) -> None:
        from services.common.store import StoreError, open_store

        # one short attempt per try: the wait loop retries, not the S3 client's own backoff
        quick = settings.model_copy(
            update={"s3_connect_timeout_s": timeout_s, "s3_read_timeout_s": timeout_s, "s3_max_retries": 0}
        )
        store = open_store(quick)
        try:
            store.check()
        except StoreError as exc:
            raise PreflightError(
                f"{oneline(exc)} (check MMDLM_STORE_BACKEND, MMDLM_STORE_PATH or MMDLM_S3_*)"
            ) from None

    return Check("store", run)


# --- running them ----------------------------------------------------------------------------------------


def require(settings: Settings, checks: list[Check], wait_s: float | None = None) -> None:
    """Run `checks` until all pass or `wait_s` (default MMDLM_STARTUP_WAIT_S) is spent; then raise
    PreflightError naming every one still failing. A permanent problem raises at once."""
    wait_s = settings.startup_wait_s if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    pending = list(checks)
    logged = False
    while True:
        problems: list[str] = []
        still: list[Check] = []
        for check in pending:
            left = deadline - time.monotonic()
            try:
                check.run(min(ATTEMPT_TIMEOUT_S, max(1.0, left)))
            except _Permanent:
                raise
            except PreflightError as exc:
                problems.append(str(exc))
                still.append(check)
        if not still:
            return
        if time.monotonic() + RETRY_S >= deadline:
            if len(problems) > 1:
                raise PreflightError("; ".join(problems))
            raise PreflightError(problems[0])
        if not logged:
            logger.warning("waiting up to %gs for: %s", wait_s, "; ".join(problems))
            logged = True
        pending = still
        time.sleep(RETRY_S)


def worker_checks(settings: Settings, *, schema: bool = True) -> list[Check]:
    """What a worker needs before it can run anything: the broker, the (migrated) database, the store.

    The HTTP servers (`serve`, `serve-sampler`) stay up while a dependency is down (they answer 503
    and /readyz names it): only settings that can never work stop them (`check_config`)."""
    return [broker_check(settings), database_check(settings, schema=schema), store_check(settings)]


def check_config(settings: Settings, *, broker: bool) -> None:
    """Only what can never work, with no connection: an unknown database driver or broker scheme, a
    malformed URL, a job-kind module that does not exist. Also for the HTTP servers, which must start
    while a dependency is merely down."""
    _require_driver(settings.database_url)
    if broker:
        _require_transport(settings.broker_url)
    for name in settings.kind_modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a missing parent package
            found = False
        if not found:
            raise _Permanent(
                f"MMDLM_KIND_MODULES: no module named {name!r} on this machine "
                "(comma-separated importable modules that register job kinds)"
            )


def _require_driver(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url).get_dialect()  # an unknown or missing driver fails here, before any connection
    except (ArgumentError, ImportError, ValueError) as exc:
        raise _Permanent(
            f"MMDLM_DATABASE_URL {redact(url)!r} is not usable: {oneline(exc)} "
            "(e.g. postgresql+psycopg://user:pass@host:5432/mmdlm, or empty for the embedded SQLite)"
        ) from None


def _require_transport(url: str) -> None:
    from kombu import Connection

    try:
        Connection(url).transport  # noqa: B018 - resolving it is the check (an unknown scheme raises)
    except (KeyError, ImportError, ValueError) as exc:
        scheme = urlsplit(url).scheme or url
        raise _Permanent(
            f"MMDLM_BROKER_URL {redact(url)!r}: unknown broker transport {scheme!r} ({oneline(exc)}); "
            "use redis://host:6379/0, or leave it empty for the embedded broker"
        ) from None
