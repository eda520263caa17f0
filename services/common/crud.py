"""Read queries shared by the gateway and the kinds' `check` functions. Every query that takes an
`owner_id` returns nothing for another user's rows, so a handler cannot leak them by mistake.

The gateway's hot queries are built ONCE, here, with bound parameters: building a select per request
(operators, coercions, the cache key) cost SQLAlchemy about as much CPU as running it on SQLite, and a
prebuilt statement also memoizes its compiled-cache key. Values always travel as parameters, never as
literals, so the compiled cache and PostgreSQL's prepared statements (psycopg prepares a query it has
run `prepare_threshold` times on a connection) are reused. The read paths take a Core `Connection`
(`Database.read()`) and return job-shaped rows: the ORM's identity map and instance loading were the
other half of the cost. A row has the same attribute names as `Job` (`JobPublic.of` takes either).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Float, Integer, Row, String, bindparam, func, insert, select, text
from sqlalchemy.orm import Session

from services.common.auth import Principal
from services.common.db import Database
from services.common.errors import FieldError
from services.common.models import (
    Artifact,
    Job,
    JobEvent,
    JobStatus,
    JsonType,
    Metric,
    UTCDateTime,
    new_id,
    utcnow,
)

_jobs = Job.__table__
_OWNED_JOB = select(Job).where(Job.id == bindparam("job_id"), Job.owner_id == bindparam("owner_id"))
_JOB_WITH_ARTIFACTS = (
    select(_jobs, Artifact.id.label("artifact_id"))
    .outerjoin(Artifact, Artifact.producer_job_id == Job.id)
    .where(Job.id == bindparam("job_id"), Job.owner_id == bindparam("owner_id"))
    .order_by(Artifact.created_at)
)
_EVENTS_AFTER = (
    select(JobEvent.id, JobEvent.type, JobEvent.data, JobEvent.created_at)
    .where(JobEvent.job_id == bindparam("job_id"), JobEvent.id > bindparam("after_id"))
    .order_by(JobEvent.id)
    .limit(bindparam("limit"))
)
_JOB_STATUS = select(Job.status).where(Job.id == bindparam("job_id"))
_OWNED_JOB_STATUS = select(Job.status).where(
    Job.id == bindparam("job_id"), Job.owner_id == bindparam("owner_id")
)
_ARTIFACT_IDS = (
    select(Artifact.producer_job_id, Artifact.id)
    .where(Artifact.producer_job_id.in_(bindparam("job_ids", expanding=True)))
    .order_by(Artifact.created_at)
)
_OWNED_ARTIFACT = select(Artifact).where(
    Artifact.id == bindparam("artifact_id"), Artifact.owner_id == bindparam("owner_id")
)


# A new job and its first `state` event: built once; on PostgreSQL ONE statement (the event inserted from
# the job insert's RETURNING in a CTE), so in autocommit it is one round trip and still atomic.
_NEW_JOB_COLUMNS = (
    "id", "owner_id", "kind", "queue", "spec", "status", "priority", "attempt", "max_attempts",
    "cancel_requested", "available_at", "enqueued_at", "created_at", "updated_at",
)  # fmt: skip
_INSERT_JOB = insert(_jobs).values({name: bindparam(name) for name in _NEW_JOB_COLUMNS})
_INSERT_EVENT = insert(JobEvent.__table__).values(
    job_id=bindparam("event_job_id"), type=bindparam("event_type"), data=bindparam("event_data"),
    created_at=bindparam("event_at"),
)  # fmt: skip
_new_job = _INSERT_JOB.returning(_jobs.c.id).cte("new_job")
INSERT_JOB_AND_EVENT = insert(JobEvent.__table__).from_select(
    ["job_id", "type", "data", "created_at"],
    select(
        _new_job.c.id,
        bindparam("event_type", type_=String()),
        bindparam("event_data", type_=JsonType),
        bindparam("created_at", type_=UTCDateTime()),
    ),
)


def new_job_values(
    *, owner_id: int, kind: str, queue: str, spec: dict[str, Any], priority: int = 0, max_attempts: int = 3
) -> dict[str, Any]:
    """The parameters of `INSERT_JOB_AND_EVENT` (and of `_INSERT_JOB` + `_INSERT_EVENT`): a queued job
    and its first state event (`stored_job(values)` is the stored row)."""
    now = utcnow()
    return {
        "id": new_id(), "owner_id": owner_id, "kind": kind, "queue": queue, "spec": spec,
        "status": JobStatus.queued.value, "priority": priority, "attempt": 0, "max_attempts": max_attempts,
        "cancel_requested": False, "available_at": now,
        # counted as dispatched from the start, as in lifecycle.create_job: the caller clears it if the
        # publish fails, and the sweeper republishes a wake-up that stays unconsumed
        "enqueued_at": now, "created_at": now, "updated_at": now,
        "event_type": "state", "event_data": {"status": JobStatus.queued.value},
    }  # fmt: skip


def job_columns(values: dict[str, Any]) -> dict[str, Any]:
    return {name: values[name] for name in _NEW_JOB_COLUMNS}


_JOB_FIELDS = tuple(c.key for c in _jobs.columns)


def stored_job(values: dict[str, Any]) -> Any:
    """The row `INSERT_JOB_AND_EVENT` stored from `values`, shaped like `Job` (the columns it leaves
    NULL are None) without building an ORM instance: what `JobPublic.of` reads."""
    return SimpleNamespace(**{**dict.fromkeys(_JOB_FIELDS), **job_columns(values)})


def insert_job(db: Database, values: dict[str, Any]) -> Any:
    """Store a queued job and its first state event (`new_job_values`), as `lifecycle.create_job` does,
    without the ORM's unit of work (the submit hot path). On PostgreSQL one statement in autocommit does
    both rows (one round trip, atomic); elsewhere both run in one transaction. Returns the job as a
    `stored_job` (for `JobPublic.of`); its wake-up is published by the caller afterwards."""
    job = job_columns(values)
    if db.dialect == "postgresql":
        with db.autocommit() as conn:
            conn.execute(INSERT_JOB_AND_EVENT, values)
    else:
        event = {"event_job_id": values["id"], "event_at": values["created_at"]}
        with db.engine.begin() as conn:
            conn.execute(_INSERT_JOB, job)
            conn.execute(
                _INSERT_EVENT,
                {**event, "event_type": values["event_type"], "event_data": values["event_data"]},
            )
    return Job(**job)


_STATUS_SLOTS = tuple(f"status_{i}" for i in range(len(JobStatus)))


def _job_list_statements(with_status: bool, with_kind: bool) -> tuple[Any, Any]:
    """(count, page) for one filter combination. The page is joined with the jobs' artifacts (one row per
    artifact, `artifact_id` None for a job without one), so one query answers a page. A status filter
    is one bound parameter per status (unused slots repeat the first value), never an expanding IN:
    static SQL that every driver prepares once."""
    filters = [Job.owner_id == bindparam("owner_id")]
    if with_status:
        filters.append(Job.status.in_([bindparam(slot, type_=String()) for slot in _STATUS_SLOTS]))
    if with_kind:
        filters.append(Job.kind == bindparam("kind"))
    count = select(func.count()).select_from(_jobs).where(*filters)
    page = (
        select(_jobs)
        .where(*filters)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
        .subquery("page")
    )
    with_artifacts = (
        select(page, Artifact.id.label("artifact_id"))
        .outerjoin(Artifact, Artifact.producer_job_id == page.c.id)
        .order_by(page.c.created_at.desc(), page.c.id.desc(), Artifact.created_at)
    )
    return count, with_artifacts


_JOB_LISTS = {(s, k): _job_list_statements(s, k) for s in (False, True) for k in (False, True)}


def job_list_query(
    owner_id: int, *, status: Sequence[str] = (), kind: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[Any, Any, dict[str, Any]]:
    """(count statement, page statement, parameters) of `list_jobs`, for any executor."""
    count, page = _JOB_LISTS[bool(status), bool(kind)]
    params: dict[str, Any] = {"owner_id": owner_id, "limit": limit, "offset": offset}
    if status:
        wanted = list(dict.fromkeys(status))
        if len(wanted) > len(_STATUS_SLOTS):
            raise ValueError(f"at most {len(_STATUS_SLOTS)} distinct statuses")
        wanted += [wanted[0]] * (len(_STATUS_SLOTS) - len(wanted))
        params.update(zip(_STATUS_SLOTS, wanted, strict=True))
    if kind:
        params["kind"] = kind
    return count, page, params


def job_page_of(rows: Sequence[Any]) -> list[tuple[Any, list[str]]]:
    """The page's jobs, in order, each with its artifact ids, from the rows of a `job_list_query` page."""
    page: dict[str, tuple[Any, list[str]]] = {}
    for row in rows:
        entry = page.get(row.id)
        if entry is None:
            entry = page[row.id] = (row, [])
        if row.artifact_id is not None:
            entry[1].append(row.artifact_id)
    return list(page.values())


def get_job(session: Session, job_id: str, owner_id: int) -> Job | None:
    return session.execute(_OWNED_JOB, {"job_id": job_id, "owner_id": owner_id}).scalar_one_or_none()


def get_job_with_artifacts(
    conn: Connection | Session, job_id: str, owner_id: int
) -> tuple[Row[Any], list[str]] | None:
    """The job (a row shaped like `Job`) and the ids of the artifacts it produced, in ONE query (the
    status hot path)."""
    return job_with_artifacts_of(
        conn.execute(_JOB_WITH_ARTIFACTS, {"job_id": job_id, "owner_id": owner_id}).all()
    )


def job_with_artifacts_of(rows: Sequence[Any]) -> tuple[Any, list[str]] | None:
    """`get_job_with_artifacts`'s answer from the rows of `JOB_WITH_ARTIFACTS` (any executor)."""
    if not rows:
        return None
    return rows[0], [row.artifact_id for row in rows if row.artifact_id is not None]


JOB_WITH_ARTIFACTS = _JOB_WITH_ARTIFACTS
JOB_STATUS = _JOB_STATUS
OWNED_JOB_STATUS = _OWNED_JOB_STATUS
EVENTS_AFTER = _EVENTS_AFTER
"""The prebuilt hot statements, for executors other than a SQLAlchemy connection (the gateway's
event-loop reads, services.api.loopdb); parameters as in the functions that run them here."""


def job_status(conn: Connection | Session, job_id: str, owner_id: int | None = None) -> str | None:
    """The job's status; None if it does not exist (or, given `owner_id`, is not that user's)."""
    if owner_id is None:
        return conn.execute(_JOB_STATUS, {"job_id": job_id}).scalar_one_or_none()
    return conn.execute(_OWNED_JOB_STATUS, {"job_id": job_id, "owner_id": owner_id}).scalar_one_or_none()


def list_jobs(
    conn: Connection | Session,
    owner_id: int,
    *,
    status: Sequence[str] = (),
    kind: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[tuple[Any, list[str]]], int]:
    """A page of the user's jobs (rows shaped like `Job`, each with its artifact ids), newest first, and
    the total count for the same filters."""
    count, page, params = job_list_query(owner_id, status=status, kind=kind, limit=limit, offset=offset)
    total = conn.execute(count, params).scalar_one()
    return job_page_of(conn.execute(page, params).all()), int(total)


def events_after(conn: Connection | Session, job_id: str, after_id: int, limit: int = 500) -> list[Row[Any]]:
    """Events with an id above `after_id`, oldest first: rows of (id, type, data, created_at)."""
    return list(conn.execute(_EVENTS_AFTER, {"job_id": job_id, "after_id": after_id, "limit": limit}).all())


def get_artifact(session: Session, artifact_id: str, owner_id: int) -> Artifact | None:
    return session.execute(
        _OWNED_ARTIFACT, {"artifact_id": artifact_id, "owner_id": owner_id}
    ).scalar_one_or_none()


def list_artifacts(
    session: Session,
    owner_id: int,
    *,
    job_id: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Artifact], int]:
    filters = [Artifact.owner_id == owner_id]
    if job_id:
        filters.append(Artifact.producer_job_id == job_id)
    if kind:
        filters.append(Artifact.kind == kind)
    total = session.execute(select(func.count()).select_from(Artifact).where(*filters)).scalar_one()
    rows = session.execute(
        select(Artifact)
        .where(*filters)
        .order_by(Artifact.created_at.desc(), Artifact.id)
        .limit(limit)
        .offset(offset)
    ).scalars()
    return list(rows), int(total)


def job_artifact_ids(conn: Connection | Session, job_ids: Sequence[str]) -> dict[str, list[str]]:
    if not job_ids:
        return {}
    rows = conn.execute(_ARTIFACT_IDS, {"job_ids": list(job_ids)}).all()
    out: dict[str, list[str]] = {}
    for job_id, artifact_id in rows:
        out.setdefault(job_id, []).append(artifact_id)
    return out


def count_jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: int(n) for status, n in rows}


def require_artifact(
    session: Session, user: Principal, artifact_id: str, *, field: str, kind: str | None = None
) -> Artifact:
    """For a kind's `check`: the user's artifact `artifact_id`, else FieldError(field) -> HTTP 422."""
    artifact = get_artifact(session, artifact_id, user.id)
    if artifact is None:
        raise FieldError(field, f"artifact {artifact_id!r} not found")
    if kind is not None and artifact.kind != kind:
        raise FieldError(
            field, f"artifact {artifact_id!r} is a {artifact.kind!r} artifact, expected {kind!r}"
        )
    return artifact


# --- dashboard reads (metric columns, system view) --------------------------------------------------------


def job_metric_columns(
    conn: Connection | Session,
    job_id: str,
    *,
    names: Sequence[str] = (),
    since_step: int | None = None,
    limit: int = 100_000,
) -> list[Row[Any]]:
    """(name, step, value) rows of a job's metrics ordered by name then step, at most `limit`: Core rows,
    not ORM objects (loading 100,000 `Metric` instances cost most of a curve's read)."""
    filters = [Metric.job_id == job_id]
    if names:
        filters.append(Metric.name.in_(list(names)))
    if since_step is not None:
        filters.append(Metric.step >= since_step)
    query = (
        select(Metric.name, Metric.step, Metric.value)
        .where(*filters)
        .order_by(Metric.name, Metric.step, Metric.id)
        .limit(limit)
    )
    return list(conn.execute(query).all())


# A curve downsampled inside the database (the rule of services/api/downsample.py, which tests compare it
# with): reading 100,000 rows into Python to keep 2,000 cost nearly all of a dashboard curve's time. A
# series of `n` points over steps s0..s1 is cut into equal step ranges (max_points // 4 of them, or // 5
# when it holds a non-finite value and max_points >= 5) and each range keeps the ids of its first and last
# point, of its first finite minimum and maximum, and of its first non-finite point. Each of those is an
# index seek or a range scan of (job_id, name, step) per bucket: no sort and no window over the series
# (window functions over 100,000 rows were slower than the Python cut on SQLite). Integer arithmetic only,
# so SQLite and PostgreSQL give the same rows; `abs(value) < :infinity` is the finiteness test on both
# (PostgreSQL's NaN sorts above Infinity; SQLite cannot store a NaN in this NOT NULL column).
_METRIC_SPAN_SQL = """
WITH RECURSIVE span AS (
    SELECT name, count(*) AS n, min(step) AS s0, max(step) AS s1,
        min(CASE WHEN abs(value) < :infinity THEN 1 ELSE 0 END) AS all_finite
    FROM metrics WHERE job_id = :job_id{filters}
    GROUP BY name
)"""
_METRIC_BUCKETS_SQL = (
    _METRIC_SPAN_SQL
    + """, sized AS (
    SELECT name, n, s0, s1, gaps, buckets,
        CASE WHEN s1 = s0 THEN 1 ELSE (s1 - s0 - 1) / buckets + 1 END AS width FROM (
        SELECT name, n, s0, s1, gaps, CASE WHEN gaps = 1 THEN :max_points / 5 ELSE :max_points / 4 END AS buckets
        FROM (SELECT span.*, CASE WHEN all_finite = 0 AND :max_points >= 5 THEN 1 ELSE 0 END AS gaps FROM span) g
    ) s WHERE n > :max_points
), k(k) AS (
    SELECT 0 UNION ALL SELECT k + 1 FROM k WHERE k + 1 < :max_points / 4
), bucket AS (  -- steps lo..last, the last bucket up to s1: no sum passes s1 (no overflow near 2^63)
    SELECT name, gaps, lo,
        CASE WHEN k = buckets - 1 OR lo > s1 - (width - 1) THEN s1 ELSE lo + (width - 1) END AS last FROM (
        SELECT sized.name, sized.gaps, sized.s1, sized.width, sized.buckets, k.k, sized.s0 + k.k * sized.width AS lo
        FROM sized JOIN k ON k.k < sized.buckets AND k.k * sized.width <= sized.s1 - sized.s0
    ) b
), picked(id) AS (
    SELECT (SELECT m.id FROM metrics m WHERE {range} ORDER BY m.step, m.id LIMIT 1) FROM bucket b
    UNION SELECT (SELECT m.id FROM metrics m WHERE {range} ORDER BY m.step DESC, m.id DESC LIMIT 1) FROM bucket b
    UNION SELECT (SELECT m.id FROM metrics m WHERE {range} AND abs(m.value) < :infinity
                  ORDER BY m.value, m.step, m.id LIMIT 1) FROM bucket b
    UNION SELECT (SELECT m.id FROM metrics m WHERE {range} AND abs(m.value) < :infinity
                  ORDER BY m.value DESC, m.step, m.id LIMIT 1) FROM bucket b
    UNION SELECT (SELECT m.id FROM metrics m WHERE {range} AND NOT abs(m.value) < :infinity
                  ORDER BY m.step, m.id LIMIT 1) FROM bucket b WHERE b.gaps = 1
    UNION SELECT m.id FROM metrics m JOIN span ON m.job_id = :job_id AND m.name = span.name
        AND m.step >= span.s0 WHERE span.n <= :max_points
)
SELECT m.name, m.step, m.value, span.n FROM metrics m JOIN span ON span.name = m.name
WHERE m.job_id = :job_id AND m.id IN (SELECT id FROM picked)
ORDER BY m.name, m.step, m.id
""".replace("{range}", "m.job_id = :job_id AND m.name = b.name AND m.step >= b.lo AND m.step <= b.last")
)
# Fewer than 4 points allowed (no room for a bucket): the last one, with the first, and the first one at
# or after the middle step.
_METRIC_FEW_SQL = (
    _METRIC_SPAN_SQL
    + """, picked(id) AS (
    SELECT (SELECT m.id FROM metrics m WHERE m.job_id = :job_id AND m.name = span.name AND m.step >= span.s0
            ORDER BY m.step DESC, m.id DESC LIMIT 1) FROM span
    UNION SELECT (SELECT m.id FROM metrics m WHERE m.job_id = :job_id AND m.name = span.name AND m.step >= span.s0
            ORDER BY m.step, m.id LIMIT 1) FROM span WHERE :max_points >= 2
    UNION SELECT (SELECT m.id FROM metrics m WHERE m.job_id = :job_id AND m.name = span.name
            AND m.step >= span.s0 + (span.s1 - span.s0) / 2 ORDER BY m.step, m.id LIMIT 1) FROM span
        WHERE :max_points >= 3
    UNION SELECT m.id FROM metrics m JOIN span ON m.job_id = :job_id AND m.name = span.name
        AND m.step >= span.s0 WHERE span.n <= :max_points
)
SELECT m.name, m.step, m.value, span.n FROM metrics m JOIN span ON span.name = m.name
WHERE m.job_id = :job_id AND m.id IN (SELECT id FROM picked)
ORDER BY m.name, m.step, m.id
"""
)


def _metric_points_statement(template: str, with_names: bool, with_since: bool) -> Any:
    filters = " AND name IN :names" if with_names else ""
    filters += " AND step >= :since_step" if with_since else ""
    statement = text(template.replace("{filters}", filters)).bindparams(
        bindparam("max_points", type_=Integer()), bindparam("infinity", type_=Float())
    )
    return statement.bindparams(bindparam("names", expanding=True)) if with_names else statement


_METRIC_POINTS = {
    (few, n, s): _metric_points_statement(_METRIC_FEW_SQL if few else _METRIC_BUCKETS_SQL, n, s)
    for few in (False, True)
    for n in (False, True)
    for s in (False, True)
}


def job_metric_points(
    conn: Connection | Session,
    job_id: str,
    *,
    max_points: int,
    names: Sequence[str] = (),
    since_step: int | None = None,
) -> list[Row[Any]]:
    """(name, step, value, count) rows of a job's metric series, each cut to at most `max_points` points by
    the database (first, min, max and last of equal step ranges, plus the first non-finite point of each),
    in name then step order; `count` is the series' length before the cut. The rule is
    services/api/downsample.py's, which tests compare it with."""
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    statement = _METRIC_POINTS[max_points < 4, bool(names), since_step is not None]
    params: dict[str, Any] = {"job_id": job_id, "max_points": max_points, "infinity": math.inf}
    if names:
        params["names"] = list(names)
    if since_step is not None:
        params["since_step"] = since_step
    return list(conn.execute(statement, params).all())


def count_jobs_by_queue(conn: Connection | Session, statuses: Sequence[str]) -> dict[tuple[str, str], int]:
    """{(queue, status): jobs} over every user's jobs in `statuses` (served by ix_jobs_claim)."""
    rows = conn.execute(
        select(Job.queue, Job.status, func.count())
        .where(Job.status.in_(list(statuses)))
        .group_by(Job.queue, Job.status)
    ).all()
    return {(queue, status): int(n) for queue, status, n in rows}


def count_owner_jobs(conn: Connection | Session, owner_id: int, statuses: Sequence[str]) -> dict[str, int]:
    """{status: jobs} of one user's jobs in `statuses`."""
    rows = conn.execute(
        select(Job.status, func.count())
        .where(Job.owner_id == owner_id, Job.status.in_(list(statuses)))
        .group_by(Job.status)
    ).all()
    return {status: int(n) for status, n in rows}


def recent_leases(conn: Connection | Session, since: Any, limit: int = 5000) -> list[Row[Any]]:
    """(lease_owner, status, heartbeat_at) of jobs whose worker heartbeat is newer than `since`: the
    workers the platform has seen lately, from what the lease protocol already records (no broker call)."""
    return list(
        conn.execute(
            select(Job.lease_owner, Job.status, Job.heartbeat_at)
            .where(Job.lease_owner.is_not(None), Job.heartbeat_at >= since)
            .order_by(Job.heartbeat_at.desc())
            .limit(limit)
        ).all()
    )
