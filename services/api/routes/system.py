"""GET /v1/system: what the platform is doing now, for the dashboard's system page.

Everything comes from what the platform already records, in three indexed queries and no broker round
trip: queue depths and running jobs from the job table, and the workers seen from the job leases (a worker
heartbeats every job it runs; its lease owner is `host:pid:child:nonce`). An idle worker holds no lease, so
it shows only once it has run a job within the window. The platform has no admin role: every signed-in user
sees the same aggregates (counts, worker names, versions) and never another user's jobs.
"""

from __future__ import annotations

import platform
from datetime import timedelta
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import APIRouter, Query

import mmdlm
from services.api.deps import CurrentUser, StateDep
from services.api.schemas import QueueState, SystemPublic, WorkerSeen
from services.common import crud
from services.common.kinds import QUEUES
from services.common.models import WAITING, JobStatus, utcnow

router = APIRouter(prefix="/v1", tags=["system"])

ACTIVE = (*WAITING, JobStatus.running.value)
PACKAGES = ("torch", "fastapi", "sqlalchemy", "celery", "pydantic", "numpy")


@cache
def versions() -> dict[str, str | None]:
    """Installed versions read from package metadata: the gateway imports no torch to report it."""
    out: dict[str, str | None] = {"mmdlm": mmdlm.__version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def worker_name(lease_owner: str) -> str:
    """`host:pid:child:nonce` (services.common.worker) -> `host:pid`, one name per worker process."""
    parts = lease_owner.rsplit(":", 2)
    return parts[0] if len(parts) == 3 else lease_owner


@router.get("/system", response_model=SystemPublic)
def system(
    user: CurrentUser,
    state: StateDep,
    window_s: Annotated[
        int, Query(ge=10, le=7 * 86400, description="workers seen: a job heartbeat within this many seconds")
    ] = 3600,
) -> SystemPublic:
    """Queues with their depths, running jobs, the workers seen lately, versions and backends."""
    with state.db.read() as conn:
        by_queue = crud.count_jobs_by_queue(conn, ACTIVE)
        mine = crud.count_owner_jobs(conn, user.id, ACTIVE)
        leases = crud.recent_leases(conn, utcnow() - timedelta(seconds=window_s))
    names = sorted({*QUEUES, *(kind.queue for kind in state.kinds.values()), *(q for q, _ in by_queue)})
    queues = [
        QueueState(
            name=name,
            queued=by_queue.get((name, JobStatus.queued.value), 0),
            retrying=by_queue.get((name, JobStatus.retrying.value), 0),
            running=by_queue.get((name, JobStatus.running.value), 0),
        )
        for name in names
    ]
    workers: dict[str, dict[str, Any]] = {}
    for owner, status_, heartbeat in leases:
        seen = workers.setdefault(worker_name(owner), {"last_seen": heartbeat, "running": 0, "jobs": 0})
        seen["last_seen"] = max(seen["last_seen"], heartbeat)
        seen["jobs"] += 1
        seen["running"] += status_ == JobStatus.running.value
    settings = state.settings
    return SystemPublic(
        versions=versions(),
        backends={
            "database": settings.database_url.split(":", 1)[0].split("+")[0],  # sqlite | postgresql
            "broker": settings.broker_url.split(":", 1)[0],  # sqla+sqlite | redis
            "store": settings.store_backend,  # local | s3
        },
        queues=queues,
        running_jobs=sum(q.running for q in queues),
        you={s: mine.get(s, 0) for s in ACTIVE},
        window_s=window_s,
        workers=[
            WorkerSeen(name=name, **seen)
            for name, seen in sorted(workers.items(), key=lambda item: item[1]["last_seen"], reverse=True)
        ],
    )
