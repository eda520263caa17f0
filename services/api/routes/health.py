"""/healthz (the process answers), /readyz (database at the code's schema, broker and store answer),
/metrics.

Readiness includes the schema revision so that a gateway started against a database that `mmdlm migrate`
has not upgraded yet takes no traffic (it would fail on missing tables or columns) until the migration
has run. The answer is cached for `SCHEMA_CACHE_S`: probes every few seconds cost one query at most that
often.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from alembic.runtime.migration import MigrationContext
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.api.deps import StateDep
from services.common.migrate import head_revision, known_revisions
from services.common.queue import check_broker

router = APIRouter(tags=["health"])
READY_SCHEMA = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {"status": {"enum": ["ok", "unavailable"]}, "checks": {"type": "object"}},
    "examples": [{"status": "ok", "checks": {"database": {"ok": True, "ms": 0.4}, "broker": {"ok": True, "ms": 1.1}}}],
}  # fmt: skip

SCHEMA_CACHE_S = 10.0


class SchemaNotReady(RuntimeError):
    """The database schema is behind the code (or missing): run `mmdlm migrate`."""


@dataclass
class _SchemaAnswer:
    at: float
    detail: dict[str, Any]
    error: str | None


_schema_cache: dict[str, _SchemaAnswer] = {}
_schema_lock = threading.Lock()


@router.get("/healthz", responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"description": "every dependency answers", "content": {"application/json": {"schema": READY_SCHEMA}}},
        503: {"description": "a dependency is down (the probe's body, not an error body: `checks` says which)",
              "content": {"application/json": {"schema": READY_SCHEMA}}},
    },
)  # fmt: skip
def readyz(state: StateDep) -> JSONResponse:
    checks: dict[str, Any] = {}
    ok = True
    for name, probe in (
        ("database", lambda: _db(state)),
        ("broker", lambda: check_broker(state.celery, timeout_s=3.0)),
        ("store", state.store.check),
    ):
        start = time.perf_counter()
        try:
            extra = probe() or {}
            checks[name] = {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 1), **extra}
        except Exception as exc:
            ok = False
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


def _db(state: Any) -> dict[str, Any]:
    with state.db.session() as s:
        s.execute(text("SELECT 1"))
    return schema_status(state.db)


def schema_status(db: Any, max_age_s: float | None = None) -> dict[str, Any]:
    """{"schema": revision, "head": code's head[, "ahead": True]}; raises SchemaNotReady when the
    database is behind the code. A revision this code does not know is a newer release's migration
    (a rolling upgrade in progress, whose migrations keep the previous release working): ready."""
    max_age_s = SCHEMA_CACHE_S if max_age_s is None else max_age_s
    now = time.monotonic()
    with _schema_lock:
        cached = _schema_cache.get(db.url)
        if cached is None or now - cached.at >= max_age_s:
            cached = _schema_cache[db.url] = _check_schema(db, now)
    if cached.error is not None:
        raise SchemaNotReady(cached.error)
    return cached.detail


def _check_schema(db: Any, now: float) -> _SchemaAnswer:
    head = head_revision()
    with db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    detail: dict[str, Any] = {"schema": current, "head": head}
    if current == head:
        return _SchemaAnswer(now, detail, None)
    if current is None:
        return _SchemaAnswer(now, detail, f"database has no schema (code needs {head}): run `mmdlm migrate`")
    if current in known_revisions():
        return _SchemaAnswer(
            now, detail, f"database schema is at {current}, behind this code's {head}: run `mmdlm migrate`"
        )
    return _SchemaAnswer(now, {**detail, "ahead": True}, None)


@router.get("/metrics", include_in_schema=False)
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
