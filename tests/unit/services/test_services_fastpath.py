"""The gateway's fast path (issue 11, item 5): pools without pre-ping and a threadpool no larger than the
pool, no sync dependency on any route (one threadpool hop per request at most), and hot queries that
reuse SQLAlchemy's compiled cache and PostgreSQL's prepared statements."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from anyio import to_thread
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import event, update
from sqlalchemy.engine.interfaces import CacheStats

from services.api.loopdb import LoopDB
from services.api.main import create_app
from services.api.publisher import WakeupPublisher
from services.api.schemas import JobPublic
from services.common import crud, lifecycle
from services.common.auth import Principal
from services.common.db import POOL_RECYCLE_S, Database, make_engine
from services.common.models import Artifact, Job, JobStatus, utcnow
from services.common.queue import create_celery
from services.common.settings import Settings


def test_the_gateway_pool_does_not_ping_and_recycles_instead(tmp_path: Path) -> None:
    """A pre-ping was a second round trip per request; recycling bounds a connection's age instead.
    Workers keep the ping on PostgreSQL (a round trip per checkout costs them nothing that matters)."""
    url = "postgresql+psycopg://u@127.0.0.1:1/x"  # no connection is made below
    settings = Settings(_env_file=None, home=tmp_path, database_url=url, db_pool_size=7)  # type: ignore[call-arg]
    pool: Any = create_app(settings).state.mmdlm.db.engine.pool
    assert (pool.size(), pool._pre_ping, pool._recycle) == (7, False, POOL_RECYCLE_S)
    worker: Any = make_engine(url, pool_size=4).pool
    assert (worker.size(), worker._pre_ping, worker._recycle) == (4, True, POOL_RECYCLE_S)
    sqlite: Any = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}", pool_size=3).pool
    assert (sqlite.size(), sqlite._pre_ping) == (3, False)


def test_threadpool_is_capped_at_the_pool_size(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=tmp_path, db_pool_size=6)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        tokens = client.portal.call(lambda: to_thread.current_default_thread_limiter().total_tokens)
        metrics = client.get("/metrics").text
    assert tokens == 6
    assert "mmdlm_db_connections_opened_total" in metrics and "mmdlm_db_connections_in_use" in metrics


def _is_async(call: Callable[..., Any]) -> bool:
    target = call if inspect.isfunction(call) or inspect.ismethod(call) else getattr(call, "__call__", call)  # noqa: B004
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI's lazily included router
            yield from _api_routes(route.original_router.routes)


def test_no_route_has_a_sync_dependency(tmp_path: Path) -> None:
    """FastAPI runs each sync dependency in the threadpool (a sync generator twice): a request may hop
    once, for its sync handler, and no more."""
    app = create_app(Settings(_env_file=None, home=tmp_path))  # type: ignore[call-arg]
    sync: list[str] = []
    visited: set[str] = set()

    def walk(route: APIRoute, dependant: Any) -> None:
        for dep in dependant.dependencies:
            visited.add(type(dep.call).__name__ if not inspect.isfunction(dep.call) else dep.call.__name__)
            if dep.call is not None and not _is_async(dep.call):
                sync.append(f"{route.path}: {getattr(dep.call, '__name__', dep.call)!r}")
            walk(route, dep)

    routes = list(_api_routes(app.routes))
    assert any(r.path == "/v1/jobs/{job_id}" for r in routes)
    for route in routes:
        walk(route, route.dependant)
    assert {"BearerAuth", "get_state", "get_session"} <= visited
    assert sync == []


def _seed(db: Database, user: Principal) -> str:
    with db.begin() as s:
        job = lifecycle.create_job(s, owner_id=user.id, kind="probe", queue="encode", spec={"kind": "probe"})
    return job.id


def _hot_reads(db: Database, user: Principal, job_id: str) -> None:
    with db.read() as conn:
        found = crud.get_job_with_artifacts(conn, job_id, user.id)
        assert found is not None and found[0].id == job_id and found[1] == []
        assert crud.job_status(conn, job_id, user.id) == JobStatus.queued.value
        assert [e.type for e in crud.events_after(conn, job_id, 0)] == ["state"]
        rows, total = crud.list_jobs(conn, user.id, limit=5)
        assert total == 1 and rows[0][0].id == job_id and rows[0][1] == []
        rows, total = crud.list_jobs(conn, user.id, status=["queued", "running"], kind="probe")
        assert total == 1
        assert crud.job_artifact_ids(conn, [job_id, "x" * 32]) == {}
    with db.reader() as session:
        job = crud.get_job(session, job_id, user.id)
        assert job is not None and job.spec == {"kind": "probe"}
        assert crud.get_artifact(session, "x" * 32, user.id) is None


def test_hot_queries_reuse_the_compiled_cache(db: Database, user: Principal, other_user: Principal) -> None:
    """A statement built with literal values or a per-call lambda compiles again on every request;
    the second round of the gateway's reads must be all cache hits."""
    job_id = _seed(db, user)
    seen: list[tuple[str, CacheStats]] = []

    def record(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        seen.append((statement.split()[0], context.cache_hit))

    event.listen(db.engine, "after_cursor_execute", record)
    try:
        _hot_reads(db, user, job_id)
        first = len(seen)
        _hot_reads(db, user, job_id)
    finally:
        event.remove(db.engine, "after_cursor_execute", record)
    assert first > 5
    assert [hit for _, hit in seen[first:]] == [CacheStats.CACHE_HIT] * first
    with db.read() as conn:  # and the owner filter still holds
        assert crud.get_job_with_artifacts(conn, job_id, other_user.id) is None
        assert crud.job_status(conn, job_id, other_user.id) is None


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # prepared statements: PostgreSQL only
def test_postgres_prepares_the_status_query(db: Database, user: Principal) -> None:
    """psycopg prepares a statement it ran `prepare_threshold` (5) times on a connection."""
    assert db.dialect == "postgresql"
    job_id = _seed(db, user)
    with db.read() as conn:
        for _ in range(6):
            assert crud.get_job_with_artifacts(conn, job_id, user.id) is not None
        prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
    assert any("LEFT OUTER JOIN artifacts" in text for text in prepared), prepared


# --- hot reads on the event loop, submit without the ORM, wake-ups off the request path -----------------


def _seed_rich(db: Database, user: Principal) -> str:
    """A job with a produced artifact, progress and a few events: every column kind the reads convert."""
    job_id = _seed(db, user)
    with db.begin() as s:
        lifecycle.add_event(s, job_id, "log", {"line": "héllo ✓", "n": 1})
        lifecycle.add_event(s, job_id, "progress", {"step": 2, "total": 9})
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(progress_step=2, progress_total=9, progress_message="two")
        )
        for name in ("b-first", "a-second"):
            s.add(
                Artifact(
                    owner_id=user.id, producer_job_id=job_id, kind="dataset", name=name, uri=f"u/{name}",
                    sha256="0" * 64, bytes=1, meta={}, created_at=utcnow(),
                )
            )  # fmt: skip
            s.flush()
    return job_id


def test_loop_reads_equal_the_sync_reads(db: Database, user: Principal, other_user: Principal) -> None:
    """The status read, the job list and the events batch on the event loop (asyncpg / sqlite3 with the
    dialect's result processors) give the very rows the SQLAlchemy path gives: UTC datetimes, JSON,
    booleans, artifact order, filters, and nothing of another user's."""
    job_id = _seed_rich(db, user)
    _seed(db, user)  # a newer job without artifacts, first on the list's page
    with db.read() as conn:
        job, artifacts = crud.get_job_with_artifacts(conn, job_id, user.id) or (None, [])
        events = crud.events_after(conn, job_id, 0)
    expected = JobPublic.of(job, artifacts).model_dump_json()
    reads = LoopDB(db, size=2)
    assert reads.enabled

    async def run() -> None:
        try:
            for _ in range(3):  # a reused connection (and, on PostgreSQL, its prepared statement)
                rows = await reads.fetch(crud.JOB_WITH_ARTIFACTS, {"job_id": job_id, "owner_id": user.id})
                found = crud.job_with_artifacts_of(rows)
                assert found is not None and JobPublic.of(*found).model_dump_json() == expected
            loop_events = await reads.fetch(
                crud.EVENTS_AFTER, {"job_id": job_id, "after_id": 0, "limit": 500}
            )
            assert [tuple(e) for e in loop_events] == [tuple(e) for e in events]
            assert loop_events[1].data == {"line": "héllo ✓", "n": 1}
            assert loop_events[0].created_at.utcoffset() == timedelta(0)
            after = await reads.fetch(
                crud.EVENTS_AFTER, {"job_id": job_id, "after_id": events[1].id, "limit": 1}
            )
            assert [e.id for e in after] == [events[2].id]
            status = await reads.fetch(crud.OWNED_JOB_STATUS, {"job_id": job_id, "owner_id": user.id})
            assert [r.status for r in status] == [JobStatus.queued.value]
            for stmt, params in (
                (crud.JOB_WITH_ARTIFACTS, {"job_id": job_id, "owner_id": other_user.id}),
                (crud.OWNED_JOB_STATUS, {"job_id": job_id, "owner_id": other_user.id}),
            ):
                assert await reads.fetch(stmt, params) == []
            for query in (
                {}, {"status": ["queued", "failed", "queued"]}, {"kind": "probe"}, {"status": ["running"]},
                {"limit": 1, "offset": 1},
            ):  # fmt: skip
                count, page, params = crud.job_list_query(user.id, **query)  # type: ignore[arg-type]
                with db.read() as conn:
                    jobs, total = crud.list_jobs(conn, user.id, **query)  # type: ignore[arg-type]
                assert (await reads.fetch(count, params))[0][0] == total
                loop_jobs = crud.job_page_of(await reads.fetch(page, params))
                assert [JobPublic.of(*j).model_dump_json() for j in loop_jobs] == [
                    JobPublic.of(*j).model_dump_json() for j in jobs
                ]
                if not query:  # the rich job, with its artifacts in order, and the plain one
                    assert total == 2 and JobPublic.of(*loop_jobs[1]).model_dump_json() == expected
            count, _, params = crud.job_list_query(other_user.id)
            assert (await reads.fetch(count, params))[0][0] == 0
            assert reads.connections_opened == 1 and reads.in_use == 0
            if db.dialect == "sqlite":  # the fallback when SQLite answers "busy": same rows, in a thread
                prepared = reads.prepared(crud.JOB_WITH_ARTIFACTS)
                params = prepared.params({"job_id": job_id, "owner_id": user.id})
                found = crud.job_with_artifacts_of(prepared.rows(reads._fetch_sync(prepared, params)))
                assert found is not None and JobPublic.of(*found).model_dump_json() == expected
        finally:
            await reads.close()

    asyncio.run(run())


@pytest.mark.postgres
def test_loop_reads_of_an_unreachable_database_are_a_503_error(tmp_path: Path) -> None:
    """A refused connection surfaces as SQLAlchemy's OperationalError, which the gateway answers with a
    503 + Retry-After like every other database outage (services.common.http_errors)."""
    reads = LoopDB(Database("postgresql+psycopg://u@127.0.0.1:1/x"), size=1)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        asyncio.run(reads.fetch(crud.JOB_STATUS, {"job_id": "x"}))
    assert reads.in_use == 0


def test_insert_on_the_event_loop_stores_what_the_sync_insert_stores(db: Database, user: Principal) -> None:
    """The submit's one-statement insert through asyncpg (SQLAlchemy's bind processors: JSON, UTC
    datetimes) stores the row and first event the SQLAlchemy path stores. SQLite refuses writes on the
    loop (they would wait on the file lock there)."""
    spec = {"kind": "probe", "text": "héllo ✓", "nested": {"a": [1, 2.5, None]}}
    made = [crud.new_job_values(owner_id=user.id, kind="probe", queue="encode", spec=spec) for _ in range(2)]
    reads = LoopDB(db, size=1)
    if db.dialect != "postgresql":
        with pytest.raises(RuntimeError, match="PostgreSQL only"):
            asyncio.run(reads.execute(crud.INSERT_JOB_AND_EVENT, made[0]))
        return

    async def run() -> None:
        try:
            await reads.execute(crud.INSERT_JOB_AND_EVENT, made[0])
        finally:
            await reads.close()

    asyncio.run(run())
    crud.insert_job(db, made[1])
    stored = []
    with db.read() as conn:
        for values in made:
            job, artifacts = crud.get_job_with_artifacts(conn, values["id"], user.id) or (None, [])
            events = crud.events_after(conn, values["id"], 0)
            stored.append(
                (JobPublic.of(job, artifacts).model_dump(exclude={"id"}), [(e.type, e.data) for e in events])
            )
            assert JobPublic.of(job, artifacts) == JobPublic.of(crud.stored_job(values))
            assert job.created_at == values["created_at"] and events[0].created_at == values["created_at"]
    assert stored[0][1] == [("state", {"status": "queued"})]
    first, second = (dict(s[0]) for s in stored)
    for key in ("created_at", "updated_at"):
        first.pop(key), second.pop(key)
    assert first == second and first["spec"] == spec


def test_insert_job_stores_what_create_job_stores(db: Database, user: Principal) -> None:
    """The submit path's Core insert (one statement on PostgreSQL) writes the same job row and first
    event as `lifecycle.create_job`, and returns the job as it was stored."""
    spec = {"kind": "probe", "steps": 1, "nested": {"a": [1, 2]}}
    job = crud.insert_job(
        db,
        crud.new_job_values(
            owner_id=user.id, kind="probe", queue="encode", spec=spec, priority=3, max_attempts=2
        ),
    )
    reference = _seed(db, user)
    with db.read() as conn:
        stored, artifacts = crud.get_job_with_artifacts(conn, job.id, user.id) or (None, [])
        events = crud.events_after(conn, job.id, 0)
        ref_events = crud.events_after(conn, reference, 0)
    assert JobPublic.of(job).model_dump() == JobPublic.of(stored, artifacts).model_dump()
    assert (stored.spec, stored.priority, stored.max_attempts, stored.attempt) == (spec, 3, 2, 0)
    assert stored.enqueued_at == stored.created_at == stored.available_at == events[0].created_at
    assert (
        [(e.type, e.data) for e in events]
        == [(e.type, e.data) for e in ref_events]
        == [("state", {"status": "queued"})]
    )


def test_wakeups_are_published_in_order_and_a_failed_one_goes_to_the_sweeper(
    db: Database, user: Principal, tmp_path: Path
) -> None:
    """The background publisher sends every wake-up in submit order; when the broker refuses, the job's
    `enqueued_at` is cleared so that the sweeper publishes it once the broker is back."""
    jobs = [_seed(db, user) for _ in range(3)]
    sent: list[tuple[str, str]] = []
    settings = Settings(_env_file=None, home=tmp_path)  # type: ignore[call-arg]
    celery = create_celery(settings)
    ok = WakeupPublisher(celery, db, send_many=lambda app, batch: sent.extend(batch))
    for job_id in jobs:
        ok.submit(job_id, "encode")
    ok.close()
    assert sent == [(j, "encode") for j in jobs] and ok.published == 3
    # a batch the broker refuses is retried one wake-up at a time, each settled on its own
    one_by_one: list[tuple[str, str]] = []

    def refuse(app: object, batch: object) -> None:
        raise ConnectionError("broker gone")

    retried = WakeupPublisher(celery, db, send=lambda app, j, q: one_by_one.append((j, q)), send_many=refuse)
    for job_id in jobs:
        retried.submit(job_id, "encode")
    retried.close()
    assert one_by_one == [(j, "encode") for j in jobs] and retried.published == 3 and retried.failed == 0
    down = Settings(_env_file=None, home=tmp_path, broker_url="redis://127.0.0.1:1/0")  # type: ignore[call-arg]
    failing = WakeupPublisher(create_celery(down), db)
    failing.submit(jobs[0], "encode")
    failing.close(timeout_s=60)
    assert failing.failed == 1
    with db.reader() as s:
        assert s.get(Job, jobs[0]).enqueued_at is None  # type: ignore[union-attr]
        assert s.get(Job, jobs[1]).enqueued_at is not None  # type: ignore[union-attr]
