"""/v1/jobs: submit, list, read, cancel. (The SSE stream lives in `events.py`, metrics in `metrics.py`.)

No `from __future__ import annotations` here: the request body type is built from the kind registry
at start-up, and FastAPI must see the real type object in the handler signature.
"""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from mmdlm.config.base import INT64_MAX
from services.api.deps import CurrentUser, StateDep
from services.api.schemas import JobPublic, JobsPublic, split_options
from services.api.state import AppState
from services.common import crud, lifecycle
from services.common.auth import Principal
from services.common.http_errors import responses
from services.common.kinds import JobKind
from services.common.models import JobStatus

logger = logging.getLogger(__name__)

NOT_FOUND = "job not found"


def _json(model: BaseModel, status_code: int = 200) -> Response:
    """Serialize once with pydantic (the hot paths skip FastAPI's re-validation of the response)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


SUBMIT_EXAMPLES = {
    "train": {
        "summary": "train an MDLM on a dataset artifact",
        "value": {"kind": "train", "dataset": "0f8e5c1d2b3a4e6f8a9b0c1d2e3f4a5b", "steps": 200,
                  "model": {"family": "mdlm", "model": "cpu-nano"}, "checkpoint": {"interval": 50}, "priority": 5},
    },
    "prepare-data": {
        "summary": "tokenize the bundled corpus",
        "value": {"kind": "prepare-data", "source": {"type": "bundled"}, "seq_len": 128},
    },
}  # fmt: skip
"""Request examples of POST /v1/jobs (every kind's full schema is in /v1/kinds)."""


def _read_job_sync(state: AppState, job_id: str, owner_id: int) -> tuple[Any, list[str]] | None:
    with state.db.read() as conn:
        return crud.get_job_with_artifacts(conn, job_id, owner_id)


async def read_job(state: AppState, job_id: str, owner_id: int) -> tuple[Any, list[str]] | None:
    """The caller's job and its artifact ids, read on the event loop (services.api.loopdb): no thread hop."""
    if state.reads.enabled:
        rows = await state.reads.fetch(crud.JOB_WITH_ARTIFACTS, {"job_id": job_id, "owner_id": owner_id})
        return crud.job_with_artifacts_of(rows)
    return await run_in_threadpool(_read_job_sync, state, job_id, owner_id)


def _list_sync(state: AppState, owner_id: int, filters: dict[str, Any]) -> tuple[list[Any], int]:
    with state.db.read() as conn:
        return crud.list_jobs(conn, owner_id, **filters)


def _check_sync(state: AppState, kind: JobKind, spec: BaseModel, user: Principal) -> None:
    assert kind.check is not None
    with state.db.reader() as session:
        kind.check(spec, session, user)


async def prepare_submission(state: AppState, body: BaseModel, user: Principal) -> dict[str, Any]:
    """Validate the spec and run its kind's check (FieldError -> 422): the new job's row values. Nothing
    is stored yet. No thread hop for a kind whose check makes no query (`JobKind.check_on_loop`)."""
    spec, spec_data, options = split_options(body)  # `spec`: the validated body, a `kind.spec` instance
    kind = state.kinds[spec_data["kind"]]
    max_attempts = options.max_attempts or kind.max_attempts or state.settings.default_max_attempts
    if kind.check is not None:  # read-only checks (references, quotas, paths)
        if kind.check_on_loop:
            kind.check(spec, None, user)
        else:
            await run_in_threadpool(_check_sync, state, kind, spec, user)
    return crud.new_job_values(
        owner_id=user.id, kind=kind.name, queue=kind.queue, spec=spec_data, priority=options.priority,
        max_attempts=max_attempts,
    )  # fmt: skip


async def store_submission(state: AppState, values: dict[str, Any]) -> Any:
    """Store the queued job, then hand its wake-up to the background publisher (after the commit, off
    the request path: services.api.publisher). On PostgreSQL one statement on the event loop
    (services.api.loopdb); SQLite's write waits on the file lock, so it runs in the threadpool."""
    if state.reads.backend == "postgresql":
        await state.reads.execute(crud.INSERT_JOB_AND_EVENT, values)
        job = crud.stored_job(values)
    else:
        job = await run_in_threadpool(crud.insert_job, state.db, values)
    state.wakeups.submit(job.id, job.queue)
    return job


def build_router(job_create: Any) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic, responses=responses(413))
    async def submit_job(
        body: Annotated[job_create, Body(openapi_examples=SUBMIT_EXAMPLES)],
        user: CurrentUser,
        request: Request,
    ) -> Response:  # type: ignore[valid-type]
        """Validate the spec, store a queued job, then publish its wake-up (after the commit, off the
        request path: services.api.publisher). Served by services.api.fastpath when the token is cached
        and the body valid; this handler answers the rest (and is the route the OpenAPI declares)."""
        state: AppState = request.app.state.mmdlm
        job = await store_submission(state, await prepare_submission(state, body, user))
        return _json(JobPublic.of(job), status.HTTP_201_CREATED)

    @router.get("", response_model=JobsPublic)
    async def list_jobs(
        user: CurrentUser,
        request: Request,
        status_: Annotated[list[JobStatus] | None, Query(alias="status")] = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    ) -> Response:
        """The caller's jobs, newest first; filter by `status` (repeatable) and `kind`. Two reads (count,
        and the page joined with its artifacts) on the event loop: no thread hop."""
        state: AppState = request.app.state.mmdlm
        filters = {"status": [s.value for s in status_ or []], "kind": kind, "limit": limit, "offset": offset}
        if state.reads.enabled:
            count, page, params = crud.job_list_query(user.id, **filters)
            total = (await state.reads.fetch(count, params))[0][0]
            jobs = crud.job_page_of(await state.reads.fetch(page, params))
        else:
            jobs, total = await run_in_threadpool(_list_sync, state, user.id, filters)
        return _json(
            JobsPublic(
                data=[JobPublic.of(job, produced) for job, produced in jobs],
                count=total,
                limit=limit,
                offset=offset,
            )
        )

    @router.get("/{job_id}", response_model=JobPublic, responses=responses(404))
    async def get_job(job_id: str, user: CurrentUser, request: Request) -> Response:
        """No thread hop: the read runs on the event loop. Served by services.api.fastpath when the token
        is cached and the job found; this handler answers the rest."""
        found = await read_job(request.app.state.mmdlm, job_id, user.id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
        return _json(JobPublic.of(*found))

    @router.post(
        "/{job_id}/cancel",
        response_model=JobPublic,
        responses={202: {"model": JobPublic}, **responses(404, 409)},
    )
    def cancel_job(job_id: str, user: CurrentUser, state: StateDep, response: Response) -> JobPublic:
        """Waiting jobs are cancelled at once (200); running ones stop within seconds (202)."""
        outcome = lifecycle.request_cancel(state.db, job_id, owner_id=user.id)
        if outcome is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
        if outcome in (JobStatus.succeeded.value, JobStatus.failed.value):
            raise HTTPException(status.HTTP_409_CONFLICT, f"job already {outcome}; nothing to cancel")
        if outcome == JobStatus.running.value:
            response.status_code = status.HTTP_202_ACCEPTED
        with state.db.session() as session:
            job = crud.get_job(session, job_id, user.id)
            assert job is not None
            return JobPublic.of(job, crud.job_artifact_ids(session, [job.id]).get(job.id))

    return router
