"""GET /v1/jobs/{id}/events: server-sent events that replay and then follow a job.

Each stored event (state change, progress, log line, artifact) is sent with its table id as the SSE
`id`, so a client that reconnects with `Last-Event-ID` (or `?after=`) continues exactly where it
stopped. The stream ends with an `end` event once the job is terminal and every event was sent.
Database reads run on the event loop through `services.api.loopdb` (no thread hop; nothing waits on
the loop), or in the threadpool where that is not available (in-memory SQLite).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from mmdlm.config.base import INT64_MAX
from services.api.deps import CurrentUser, StateDep
from services.api.state import AppState
from services.common import crud
from services.common.http_errors import responses
from services.common.models import TERMINAL, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
BATCH = 500


EVENTS_EXAMPLE = (
    'id: 41\nevent: progress\ndata: {"step": 20, "total": 200, "message": "", "at": "2026-01-01T00:00:00+00:00"}\n\n'
    'event: end\ndata: {"status": "succeeded", "last_event_id": 57}\n\n'
)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"description": "server-sent events (`id` = event id), ending with `end`",
              "content": {"text/event-stream": {"example": EVENTS_EXAMPLE}}},
        **responses(400, 404),
    },
)  # fmt: skip
async def job_events(
    job_id: str,
    request: Request,
    user: CurrentUser,
    state: StateDep,
    after: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="replay events with a larger id")
    ] = None,
    follow: Annotated[bool, Query(description="keep the stream open until the job ends")] = True,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    start = after if after is not None else _parse_last_id(last_event_id)
    # The ownership check and the first batch before the response starts, on the event loop (no thread
    # hop, services.api.loopdb): a 404 is still a 404, and the first event goes out at once.
    first = await _read(state, job_id, start, owner_id=user.id)
    if first[0] is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    return EventSourceResponse(
        _stream(state, request, job_id, first, start, follow), ping=15, send_timeout=30
    )


def _parse_last_id(value: str | None) -> int:
    if value is None or value.strip() == "":
        return 0
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "Last-Event-ID: must be an integer event id"
        ) from None
    if number > INT64_MAX:  # event ids are BIGINT: a larger cursor would overflow the query
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"Last-Event-ID: must be at most {INT64_MAX}")
    return max(0, number)


Batch = tuple[str | None, list[tuple[int, str, dict]]]


async def _read(state: AppState, job_id: str, after: int, owner_id: int | None = None) -> Batch:
    reads = state.reads
    if not reads.enabled:
        return await run_in_threadpool(_read_sync, state, job_id, after, owner_id)
    # Status first, then events: see _read_sync.
    if owner_id is None:
        rows = await reads.fetch(crud.JOB_STATUS, {"job_id": job_id})
    else:
        rows = await reads.fetch(crud.OWNED_JOB_STATUS, {"job_id": job_id, "owner_id": owner_id})
    if not rows:
        return None, []
    events = await reads.fetch(crud.EVENTS_AFTER, {"job_id": job_id, "after_id": after, "limit": BATCH})
    return rows[0].status, [(e.id, e.type, {**e.data, "at": e.created_at.isoformat()}) for e in events]


def _read_sync(state: AppState, job_id: str, after: int, owner_id: int | None = None) -> Batch:
    with state.db.read() as conn:
        # Status first, then events: the final state event commits with the status, so once a terminal
        # status is seen, every event of the job is already visible to the next query.
        status_ = crud.job_status(conn, job_id, owner_id)
        if status_ is None:
            return None, []
        events = crud.events_after(conn, job_id, after, limit=BATCH)
    return status_, [(e.id, e.type, {**e.data, "at": e.created_at.isoformat()}) for e in events]


async def _stream(
    state: AppState, request: Request, job_id: str, first: Batch, after: int, follow: bool
) -> AsyncIterator[ServerSentEvent]:
    last = after
    batch: Batch | None = first
    while True:
        status_, events = batch if batch is not None else await _read(state, job_id, last)
        batch = None
        for event_id, type_, data in events:
            last = event_id
            yield ServerSentEvent(id=str(event_id), event=type_, data=json.dumps(data))
        if len(events) == BATCH:
            continue  # more to replay right away
        if status_ is None or JobStatus(status_) in TERMINAL or not follow:
            yield ServerSentEvent(event="end", data=json.dumps({"status": status_, "last_event_id": last}))
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(state.settings.sse_poll_s)
