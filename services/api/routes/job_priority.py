"""PATCH /v1/jobs/{id}: reprioritize a job that is still waiting (queued, or retrying after backoff).

Priority orders claims within a queue (lifecycle.claim_next), so a new value takes effect at the next
claim. A running or finished job answers 409: its priority no longer decides anything.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from pydantic import ConfigDict, Field
from sqlalchemy import select

from mmdlm.config.base import StrictModel
from services.api.deps import CurrentUser, StateDep
from services.api.schemas import JobOptions, JobPublic
from services.common import crud
from services.common.http_errors import responses
from services.common.lifecycle import add_event
from services.common.models import WAITING, Job, utcnow

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobUpdate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"priority": 10}]})

    priority: int = Field(ge=-100, le=100, description=JobOptions.model_fields["priority"].description)


@router.patch("/{job_id}", response_model=JobPublic, responses=responses(404, 409, 413))
def update_job(job_id: str, body: JobUpdate, user: CurrentUser, state: StateDep) -> JobPublic:
    """Change the priority of a waiting job (409 once it runs or has ended)."""
    with state.db.session() as session, session.begin():
        job = session.execute(
            select(Job).where(Job.id == job_id, Job.owner_id == user.id).with_for_update()
        ).scalar_one_or_none()
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
        if job.status not in WAITING:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"job is {job.status}; priority can only change while it waits"
            )
        old, job.priority, job.updated_at = job.priority, body.priority, utcnow()
        add_event(
            session, job.id, "state", {"status": job.status, "message": f"priority {old} -> {body.priority}"}
        )
        session.flush()
        return JobPublic.of(job, crud.job_artifact_ids(session, [job.id]).get(job.id))
