"""GET /v1/jobs/{id}/events: server-sent events that replay and then follow a job.

Each stored event (state change, progress, log line, artifact) is sent with its table id as the SSE
`id`, so a client that reconnects with `Last-Event-ID` (or `?after=`) continues exactly where it
stopped. The stream ends with an `end` event once the job is terminal and every event was sent.
Database reads run in the threadpool; nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from sqlalchemy import select
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from services.api.deps import CurrentUser, SessionDep, StateDep
from services.api.state import AppState
from services.common import crud
from services.common.models import TERMINAL, Job, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
BATCH = 500


@router.get("/{job_id}/events", response_class=EventSourceResponse)
def job_events(
    job_id: str,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    after: Annotated[int | None, Query(ge=0, description="replay events with a larger id")] = None,
    follow: Annotated[bool, Query(description="keep the stream open until the job ends")] = True,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    if crud.get_job(session, job_id, user.id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    start = after if after is not None else _parse_last_id(last_event_id)
    return EventSourceResponse(_stream(state, request, job_id, start, follow), ping=15, send_timeout=30)


def _parse_last_id(value: str | None) -> int:
    if value is None or value.strip() == "":
        return 0
    try:
        return max(0, int(value))
    except ValueError:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "Last-Event-ID must be an integer event id"
        ) from None


def _read(state: AppState, job_id: str, after: int) -> tuple[str | None, list[tuple[int, str, dict]]]:
    with state.db.reader() as s:
        # Status first, then events: the final state event commits with the status, so once a terminal
        # status is seen, every event of the job is already visible to the next query.
        status_ = s.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
        events = crud.events_after(s, job_id, after, limit=BATCH)
        return status_, [(e.id, e.type, {**e.data, "at": e.created_at.isoformat()}) for e in events]


async def _stream(
    state: AppState, request: Request, job_id: str, after: int, follow: bool
) -> AsyncIterator[ServerSentEvent]:
    last = after
    while True:
        status_, events = await run_in_threadpool(_read, state, job_id, last)
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
