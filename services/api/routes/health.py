"""/healthz (the process answers), /readyz (database, broker and store answer), /metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.api.deps import StateDep
from services.common.queue import check_broker

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
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
            probe()
            checks[name] = {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 1)}
        except Exception as exc:
            ok = False
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


def _db(state: Any) -> None:
    with state.db.session() as s:
        s.execute(text("SELECT 1"))


@router.get("/metrics", include_in_schema=False)
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
