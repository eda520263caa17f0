"""Read queries shared by the gateway and the kinds' `check` functions. Every query that takes an
`owner_id` returns nothing for another user's rows, so a handler cannot leak them by mistake."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.auth import Principal
from services.common.errors import FieldError
from services.common.models import Artifact, Job, JobEvent, Metric


def get_job(session: Session, job_id: str, owner_id: int) -> Job | None:
    return session.execute(select(Job).where(Job.id == job_id, Job.owner_id == owner_id)).scalar_one_or_none()


def get_job_with_artifacts(session: Session, job_id: str, owner_id: int) -> tuple[Job, list[str]] | None:
    """The job and the ids of the artifacts it produced, in ONE query (the status hot path)."""
    rows = session.execute(
        select(Job, Artifact.id)
        .outerjoin(Artifact, Artifact.producer_job_id == Job.id)
        .where(Job.id == job_id, Job.owner_id == owner_id)
        .order_by(Artifact.created_at)
    ).all()
    if not rows:
        return None
    return rows[0][0], [artifact_id for _, artifact_id in rows if artifact_id is not None]


def list_jobs(
    session: Session,
    owner_id: int,
    *,
    status: Sequence[str] = (),
    kind: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """A page of the user's jobs, newest first, and the total count for the same filters."""
    filters = [Job.owner_id == owner_id]
    if status:
        filters.append(Job.status.in_(list(status)))
    if kind:
        filters.append(Job.kind == kind)
    total = session.execute(select(func.count()).select_from(Job).where(*filters)).scalar_one()
    rows = session.execute(
        select(Job).where(*filters).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).scalars()
    return list(rows), int(total)


def events_after(session: Session, job_id: str, after_id: int, limit: int = 500) -> list[JobEvent]:
    return list(
        session.execute(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
            .order_by(JobEvent.id)
            .limit(limit)
        ).scalars()
    )


def job_metrics(
    session: Session,
    job_id: str,
    *,
    names: Sequence[str] = (),
    since_step: int | None = None,
    limit: int = 100_000,
) -> list[Metric]:
    filters = [Metric.job_id == job_id]
    if names:
        filters.append(Metric.name.in_(list(names)))
    if since_step is not None:
        filters.append(Metric.step >= since_step)
    return list(
        session.execute(
            select(Metric).where(*filters).order_by(Metric.name, Metric.step, Metric.id).limit(limit)
        ).scalars()
    )


def get_artifact(session: Session, artifact_id: str, owner_id: int) -> Artifact | None:
    return session.execute(
        select(Artifact).where(Artifact.id == artifact_id, Artifact.owner_id == owner_id)
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


def job_artifact_ids(session: Session, job_ids: Sequence[str]) -> dict[str, list[str]]:
    if not job_ids:
        return {}
    rows = session.execute(
        select(Artifact.producer_job_id, Artifact.id)
        .where(Artifact.producer_job_id.in_(list(job_ids)))
        .order_by(Artifact.created_at)
    ).all()
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
