"""Job lifecycle on the SQL row: the state machine, lease claim/renewal, retries, cancel and the sweeper.

Every transition is ONE conditional UPDATE whose WHERE clause states the allowed source states (and,
for a worker, its lease: owner + attempt). Two processes racing for the same transition therefore
cannot both win, on SQLite and on PostgreSQL alike, and a worker that lost its lease can no longer
write. This is what makes "exactly one attempt runs" true when Celery re-delivers a message.

    queued ---claim---> running ---ok------> succeeded
      |                  |  |  \\--error--> retrying --(backoff, sweeper)--> claim again
      |                  |  \\----error, no attempts left / permanent --> failed
      \\--cancel--> cancelled <--cancel requested, runner stopped--/
    running + lease expired (worker lost) --sweeper--> retrying | failed | cancelled

Priority: a Celery message is only a wake-up for its queue. The receiving worker claims the BEST
waiting job of that queue (highest priority, then oldest), not necessarily the job the message named,
so priority is honoured identically on Redis and on the SQLite broker. There is one message per
waiting job, so every job is eventually claimed; a message that finds nothing to claim is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from services.common.db import Database
from services.common.models import WAITING, Job, JobEvent, JobStatus, new_id, utcnow

logger = logging.getLogger(__name__)

# Allowed transitions; the WHERE clauses below encode exactly these edges (tests check both agree).
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.cancelled}),
    JobStatus.retrying: frozenset({JobStatus.running, JobStatus.cancelled}),
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.retrying, JobStatus.cancelled, JobStatus.running}
    ),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.cancelled: frozenset(),
}


def can_transition(source: JobStatus | str, target: JobStatus | str) -> bool:
    return JobStatus(target) in TRANSITIONS[JobStatus(source)]


@dataclass(frozen=True)
class Lease:
    """Who runs which attempt. Every write a worker makes about its job is fenced by it."""

    job_id: str
    owner: str
    attempt: int


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    kind: str
    queue: str
    spec: dict[str, Any]
    owner_id: int
    priority: int
    attempt: int
    max_attempts: int
    lease: Lease


@dataclass(frozen=True)
class Heartbeat:
    alive: bool  # False: the lease is gone (job expired and moved on, or finished elsewhere)
    cancel_requested: bool


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Delay before attempt `attempt + 1` after attempt `attempt` failed: base * 2^(attempt-1), capped."""
    return min(cap, base * (2 ** max(0, attempt - 1)))


# --- events ---------------------------------------------------------------------------------------------


def add_event(
    session: Session, job_id: str, type_: str, data: dict[str, Any], now: datetime | None = None
) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, data=data, created_at=now or utcnow()))


def _state_event(session: Session, job_id: str, status: str, now: datetime, **data: Any) -> None:
    add_event(
        session, job_id, "state", {"status": status, **{k: v for k, v in data.items() if v is not None}}, now
    )


# --- creation and dispatch ----------------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    owner_id: int,
    kind: str,
    queue: str,
    spec: dict[str, Any],
    priority: int = 0,
    max_attempts: int = 3,
    job_id: str | None = None,
) -> Job:
    """Insert a queued job (and its first event) in the caller's transaction; enqueue after commit.

    job_id: a chosen id, e.g. derived by a job that creates sub-jobs so that creating them twice fails.
    """
    now = utcnow()
    job = Job(
        id=job_id or new_id(),  # known now, so the job and its first event go out in one flush at commit
        owner_id=owner_id,
        kind=kind,
        queue=queue,
        spec=spec,
        status=JobStatus.queued.value,
        priority=priority,
        attempt=0,
        max_attempts=max_attempts,
        cancel_requested=False,
        available_at=now,
        # Counted as dispatched from the start: the caller publishes right after the commit and clears
        # this if that fails. (Marking it after the publish would lock the row just when a worker
        # tries to claim it.)
        enqueued_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    _state_event(session, job.id, JobStatus.queued.value, now)
    return job


def clear_enqueued(db: Database, job_id: str) -> None:
    """The wake-up of a new job could not be published: let the sweeper publish it."""
    with db.begin() as s:
        s.execute(update(Job).where(Job.id == job_id, Job.status.in_(WAITING)).values(enqueued_at=None))


# --- claim and heartbeat ------------------------------------------------------------------------------------


def _claimable(now: datetime) -> Any:
    waiting = and_(Job.status.in_(WAITING), Job.available_at <= now, Job.cancel_requested.is_(False))
    abandoned = and_(
        Job.status == JobStatus.running.value,
        Job.lease_expires_at < now,
        Job.attempt < Job.max_attempts,
        Job.cancel_requested.is_(False),
    )
    return or_(waiting, abandoned)


def _candidates(queue: str, now: datetime, max_running_per_owner: int) -> Any:
    """Claimable jobs of `queue`, best first (highest priority, then oldest)."""
    candidate = (
        select(Job.id)
        .where(Job.queue == queue, _claimable(now))
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
    )
    if max_running_per_owner > 0:
        # Skip the jobs of owners already running their share of this queue (checked at claim time:
        # two claims racing for one owner may exceed it by one).
        busy = (
            select(Job.owner_id)
            .where(Job.queue == queue, Job.status == JobStatus.running.value, Job.lease_expires_at >= now)
            .group_by(Job.owner_id)
            .having(func.count() >= max_running_per_owner)
        )
        candidate = candidate.where(Job.owner_id.not_in(busy))
    return candidate


def has_claimable(
    db: Database, queue: str, now: datetime | None = None, *, max_running_per_owner: int = 0
) -> bool:
    """Is any job of `queue` claimable? (A plain read: no row locks taken.)"""
    with db.session() as s:
        query = _candidates(queue, now or utcnow(), max_running_per_owner).limit(1)
        return s.execute(query).first() is not None


def claim_next(
    db: Database,
    queue: str,
    worker: str,
    ttl_s: float,
    now: datetime | None = None,
    *,
    max_running_per_owner: int = 0,
    only: Sequence[str] | None = None,
) -> ClaimedJob | None:
    """Atomically take the best claimable job of `queue` for `worker`; None if there is none.

    Claimable: queued/retrying and due, or running with an expired lease (its worker vanished) and
    attempts left. The claim is a single UPDATE ... WHERE id = (best candidate) AND <still claimable>;
    on PostgreSQL the candidate row is locked with SKIP LOCKED so concurrent claimers take different jobs.
    `only`: claim only among these job ids (a job that works through its own sub-jobs).
    """
    now = now or utcnow()
    candidate = _candidates(queue, now, max_running_per_owner)
    if only is not None:
        candidate = candidate.where(Job.id.in_(list(only)))
    candidate = candidate.limit(1)
    if db.dialect == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    stmt = (
        update(Job)
        .where(Job.id == candidate.scalar_subquery(), _claimable(now))
        .values(
            status=JobStatus.running.value,
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=ttl_s),
            heartbeat_at=now,
            attempt=Job.attempt + 1,
            started_at=now,
            finished_at=None,
            enqueued_at=None,
            updated_at=now,
        )
        .returning(
            Job.id, Job.kind, Job.queue, Job.spec, Job.owner_id, Job.priority, Job.attempt, Job.max_attempts
        )
    )
    with db.begin() as s:
        row = s.execute(stmt).one_or_none()
        if row is None:
            return None
        _state_event(s, row.id, JobStatus.running.value, now, attempt=row.attempt, worker=worker)
    return ClaimedJob(
        id=row.id,
        kind=row.kind,
        queue=row.queue,
        spec=dict(row.spec),
        owner_id=row.owner_id,
        priority=row.priority,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        lease=Lease(job_id=row.id, owner=worker, attempt=row.attempt),
    )


def _fenced(lease: Lease) -> Any:
    return and_(
        Job.id == lease.job_id,
        Job.lease_owner == lease.owner,
        Job.attempt == lease.attempt,
        Job.status == JobStatus.running.value,
    )


def redispatch_owner(db: Database, owner_id: int, queue: str) -> int:
    """A job of `owner_id` ended: its waiting jobs skipped by the per-user limit get new wake-ups (the
    sweeper publishes them). Returns how many."""
    with db.begin() as s:
        return s.execute(
            update(Job)
            .where(Job.owner_id == owner_id, Job.queue == queue, Job.status.in_(WAITING))
            .values(enqueued_at=None)
        ).rowcount


def heartbeat(
    db: Database,
    lease: Lease,
    ttl_s: float,
    *,
    progress: tuple[int, int | None, str] | None = None,
    events: Sequence[tuple[str, dict[str, Any]]] = (),
    metrics: Sequence[Any] = (),
    now: datetime | None = None,
) -> Heartbeat:
    """Renew the lease and flush buffered progress/events/metrics in one transaction.

    Returns alive=False if the lease is gone; nothing is written in that case.
    """
    now = now or utcnow()
    values: dict[str, Any] = {
        "heartbeat_at": now,
        "lease_expires_at": now + timedelta(seconds=ttl_s),
        "updated_at": now,
    }
    if progress is not None:
        step, total, message = progress
        values.update(progress_step=step, progress_total=total, progress_message=message[:500])
    with db.begin() as s:
        row = s.execute(
            update(Job).where(_fenced(lease)).values(**values).returning(Job.cancel_requested)
        ).one_or_none()
        if row is None:  # nothing was written: the UPDATE matched no row
            return Heartbeat(alive=False, cancel_requested=True)
        for type_, data in events:
            add_event(s, lease.job_id, type_, data, now)
        if metrics:
            s.add_all(metrics)
    return Heartbeat(alive=True, cancel_requested=bool(row.cancel_requested))


def lease_is_held(session: Session, lease: Lease, *, lock: bool = False) -> bool:
    """Inside the caller's transaction: does `lease` still own its job? (locks the row on PostgreSQL)"""
    stmt = select(Job.id).where(_fenced(lease))
    if lock:
        stmt = stmt.with_for_update()
    return session.execute(stmt).first() is not None


# --- endings ------------------------------------------------------------------------------------------------


def finish_succeeded(db: Database, lease: Lease) -> bool:
    now = utcnow()
    with db.begin() as s:
        result = s.execute(
            update(Job)
            .where(_fenced(lease))
            .values(
                status=JobStatus.succeeded.value,
                finished_at=now,
                updated_at=now,
                lease_expires_at=None,
                error=None,
                progress_step=func.coalesce(Job.progress_total, Job.progress_step),
            )
        )
        if result.rowcount != 1:
            return False
        _state_event(s, lease.job_id, JobStatus.succeeded.value, now, attempt=lease.attempt)
    return True


def finish_failed(
    db: Database,
    lease: Lease,
    error: str,
    *,
    retryable: bool,
    backoff_base_s: float,
    backoff_max_s: float,
) -> JobStatus | None:
    """Record a failed attempt: `retrying` (with backoff) while attempts remain and the error is
    retryable, else `failed`. Returns the new status, or None if the lease was lost."""
    now = utcnow()
    error = error[:10_000]
    with db.begin() as s:
        row = s.execute(
            select(Job.attempt, Job.max_attempts, Job.cancel_requested).where(_fenced(lease))
        ).one_or_none()
        if row is None:
            return None
        if row.cancel_requested:
            target = JobStatus.cancelled
        elif retryable and row.attempt < row.max_attempts:
            target = JobStatus.retrying
        else:
            target = JobStatus.failed
        values: dict[str, Any] = {
            "status": target.value,
            "updated_at": now,
            "lease_expires_at": None,
            "error": error,
        }
        delay = None
        if target is JobStatus.retrying:
            delay = backoff_seconds(row.attempt, backoff_base_s, backoff_max_s)
            values.update(available_at=now + timedelta(seconds=delay), enqueued_at=None)
        else:
            values["finished_at"] = now
        result = s.execute(update(Job).where(_fenced(lease)).values(**values))
        if result.rowcount != 1:
            return None
        _state_event(
            s, lease.job_id, target.value, now, attempt=lease.attempt, error=error,
            retry_in_s=round(delay, 3) if delay is not None else None,
        )  # fmt: skip
    return target


def finish_cancelled(db: Database, lease: Lease, message: str = "cancelled by the user") -> bool:
    now = utcnow()
    with db.begin() as s:
        result = s.execute(
            update(Job)
            .where(_fenced(lease))
            .values(
                status=JobStatus.cancelled.value,
                finished_at=now,
                updated_at=now,
                lease_expires_at=None,
                cancel_requested=True,
                error=message,
            )
        )
        if result.rowcount != 1:
            return False
        _state_event(s, lease.job_id, JobStatus.cancelled.value, now, attempt=lease.attempt, message=message)
    return True


def release(db: Database, lease: Lease, reason: str) -> bool:
    """Give a claimed job back without counting the attempt (e.g. the worker is shutting down)."""
    now = utcnow()
    with db.begin() as s:
        result = s.execute(
            update(Job)
            .where(_fenced(lease))
            .values(
                status=JobStatus.retrying.value,
                attempt=Job.attempt - 1,
                lease_expires_at=None,
                available_at=now,
                enqueued_at=None,
                updated_at=now,
            )
        )
        if result.rowcount != 1:
            return False
        _state_event(s, lease.job_id, JobStatus.retrying.value, now, message=reason)
    return True


# --- cancel -------------------------------------------------------------------------------------------------


def request_cancel(db: Database, job_id: str, owner_id: int | None = None) -> str | None:
    """Cancel a job: waiting -> cancelled at once; running -> cancel_requested (the worker stops it).

    Returns the job's status after the call ("cancelled", "running", or a terminal status it already
    had), or None if there is no such job (for this owner).
    """
    now = utcnow()
    owned = [Job.id == job_id] + ([Job.owner_id == owner_id] if owner_id is not None else [])
    with db.begin() as s:
        result = s.execute(
            update(Job)
            .where(*owned, Job.status.in_(WAITING))
            .values(
                status=JobStatus.cancelled.value,
                cancel_requested=True,
                finished_at=now,
                updated_at=now,
                error="cancelled by the user before it started",
            )
        )
        if result.rowcount == 1:
            _state_event(s, job_id, JobStatus.cancelled.value, now, message="cancelled before it started")
            return JobStatus.cancelled.value
        result = s.execute(
            update(Job)
            .where(*owned, Job.status == JobStatus.running.value, Job.cancel_requested.is_(False))
            .values(cancel_requested=True, updated_at=now)
        )
        if result.rowcount == 1:
            add_event(
                s, job_id, "state", {"status": JobStatus.running.value, "message": "cancel requested"}, now
            )
            return JobStatus.running.value
        status = s.execute(select(Job.status).where(*owned)).scalar_one_or_none()
    return status


# --- sweeper ------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    dispatched: int = 0


Publish = Callable[[str, str], None]  # (job_id, queue) -> publish a wake-up; raises if the broker is down


def sweep(
    db: Database,
    publish: Publish,
    *,
    now: datetime | None = None,
    redispatch_after_s: float = 300.0,
    batch: int = 200,
) -> SweepResult:
    """Recover jobs whose worker vanished and publish wake-ups for due jobs that have none.

    Wake-ups are published for waiting jobs that are due and either have none (a retry after its
    backoff, a job whose first publish failed) or had one more than `redispatch_after_s` ago without
    being claimed (its message may have died with a worker: Redis restores it only after its
    visibility timeout and the SQL broker never does). A spare wake-up is harmless.

    Safe to run from every worker at once: each change is a conditional UPDATE, so a job is requeued
    (and its wake-up published) by exactly one sweeper.
    """
    now = now or utcnow()
    result = SweepResult()
    with db.session() as s:
        expired = s.execute(
            select(
                Job.id, Job.attempt, Job.max_attempts, Job.lease_owner, Job.cancel_requested, Job.heartbeat_at
            )
            .where(Job.status == JobStatus.running.value, Job.lease_expires_at < now)
            .limit(batch)
        ).all()
    for job in expired:
        _expire_one(db, job, now, result)
    stale = now - timedelta(seconds=redispatch_after_s)
    with db.session() as s:
        due = s.execute(
            select(Job.id, Job.queue, Job.enqueued_at)
            .where(
                Job.status.in_(WAITING),
                Job.available_at <= now,
                Job.cancel_requested.is_(False),
                or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale),
            )
            .order_by(Job.priority.desc(), Job.created_at)
            .limit(batch)
        ).all()
    for job in due:
        if _dispatch_one(db, job.id, job.queue, job.enqueued_at, now, publish):
            result.dispatched += 1
    return result


def _expire_one(db: Database, job: Any, now: datetime, result: SweepResult) -> None:
    seen = and_(
        Job.id == job.id,
        Job.status == JobStatus.running.value,
        Job.lease_expires_at < now,
        Job.attempt == job.attempt,
        Job.lease_owner == job.lease_owner,
    )
    last = job.heartbeat_at.isoformat(timespec="seconds") if job.heartbeat_at else "never"
    lost = f"worker {job.lease_owner} stopped responding (last heartbeat {last}) during attempt {job.attempt}"
    if job.cancel_requested:
        target, error = JobStatus.cancelled, f"cancelled; {lost}"
    elif job.attempt < job.max_attempts:
        target, error = JobStatus.retrying, lost
    else:
        target, error = JobStatus.failed, f"{lost}; no attempts left ({job.max_attempts})"
    values: dict[str, Any] = {
        "status": target.value,
        "updated_at": now,
        "lease_expires_at": None,
        "error": error,
    }
    if target is JobStatus.retrying:
        values.update(available_at=now, enqueued_at=None)
    else:
        values["finished_at"] = now
    with db.begin() as s:
        if s.execute(update(Job).where(seen).values(**values)).rowcount != 1:
            return
        _state_event(s, job.id, target.value, now, attempt=job.attempt, error=error)
    logger.warning("job %s: %s -> %s", job.id, lost, target.value)
    if target is JobStatus.retrying:
        result.requeued += 1
    elif target is JobStatus.failed:
        result.failed += 1
    else:
        result.cancelled += 1


def _dispatch_one(
    db: Database, job_id: str, queue: str, seen: datetime | None, now: datetime, publish: Publish
) -> bool:
    unchanged = Job.enqueued_at.is_(None) if seen is None else Job.enqueued_at == seen
    with db.begin() as s:
        taken = s.execute(
            update(Job).where(Job.id == job_id, unchanged, Job.status.in_(WAITING)).values(enqueued_at=now)
        ).rowcount
    if taken != 1:
        return False
    try:
        publish(job_id, queue)
    except Exception as exc:
        logger.warning("job %s: could not publish a wake-up to %s (%s); will retry", job_id, queue, exc)
        clear_enqueued(db, job_id)
        return False
    return True
