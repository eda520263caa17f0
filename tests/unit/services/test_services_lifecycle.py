"""Lifecycle rules on the SQL row, on SQLite and PostgreSQL: state machine, lease claim and expiry,
fencing, retries with backoff, cancel, the sweeper."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.common import lifecycle
from services.common.auth import Principal
from services.common.db import Database
from services.common.lifecycle import TRANSITIONS, can_transition
from services.common.models import Job, JobEvent, JobStatus, utcnow

TTL = 30.0


def submit(
    db: Database, user: Principal, *, queue: str = "encode", priority: int = 0, max_attempts: int = 3
) -> str:
    with db.begin() as s:
        job = lifecycle.create_job(
            s, owner_id=user.id, kind="probe", queue=queue, spec={"kind": "probe"}, priority=priority,
            max_attempts=max_attempts,
        )  # fmt: skip
        return job.id


def row(db: Database, job_id: str) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_transition_table_matches_the_documented_machine() -> None:
    assert all(not TRANSITIONS[s] for s in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled))
    assert can_transition("queued", "running") and can_transition("running", "retrying")
    assert not can_transition("queued", "succeeded") and not can_transition("succeeded", "running")
    assert not can_transition("retrying", "failed")


def test_every_observed_transition_is_allowed(db: Database, user: Principal) -> None:
    """Drive one job through retry, success; another through cancel; check each step against TRANSITIONS."""
    a = submit(db, user)
    claim = lifecycle.claim_next(db, "encode", "w1", TTL)
    assert claim is not None and claim.id == a
    lifecycle.finish_failed(db, claim.lease, "boom", retryable=True, backoff_base_s=0, backoff_max_s=0)
    claim = lifecycle.claim_next(db, "encode", "w1", TTL)
    assert claim is not None
    assert lifecycle.finish_succeeded(db, claim.lease)
    b = submit(db, user)
    lifecycle.request_cancel(db, b, user.id)
    for job_id in (a, b):
        seq = _state_sequence(db, job_id)
        for source, target in zip(seq, seq[1:], strict=False):
            assert can_transition(source, target), f"{source} -> {target} in {seq}"


def _state_sequence(db: Database, job_id: str) -> list[str]:
    with db.session() as s:
        rows = s.execute(
            select(JobEvent.data)
            .where(JobEvent.job_id == job_id, JobEvent.type == "state")
            .order_by(JobEvent.id)
        ).scalars()
        return [r["status"] for r in rows if r.get("message") != "cancel requested"]


def test_claim_takes_highest_priority_then_oldest(db: Database, user: Principal) -> None:
    low = submit(db, user, priority=0)
    high = submit(db, user, priority=5)
    low2 = submit(db, user, priority=0)
    other_queue = submit(db, user, queue="train", priority=100)
    order = []
    while (claim := lifecycle.claim_next(db, "encode", "w", TTL)) is not None:
        order.append(claim.id)
    assert order == [high, low, low2]
    assert row(db, other_queue).status == "queued"


def test_claim_sets_the_lease_and_counts_the_attempt(db: Database, user: Principal) -> None:
    job_id = submit(db, user)
    claim = lifecycle.claim_next(db, "encode", "worker-1", TTL)
    assert claim is not None and claim.attempt == 1 and claim.lease.owner == "worker-1"
    job = row(db, job_id)
    assert job.status == "running" and job.lease_owner == "worker-1" and job.attempt == 1
    assert job.lease_expires_at is not None and job.lease_expires_at > utcnow() + timedelta(seconds=TTL - 5)
    assert lifecycle.claim_next(db, "encode", "worker-2", TTL) is None  # live lease: nothing to claim


def test_concurrent_claims_never_share_a_job(db: Database, user: Principal) -> None:
    jobs = {submit(db, user) for _ in range(12)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (claim := lifecycle.claim_next(db, "encode", name, TTL)) is not None:
            with lock:
                claimed.append(claim.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(jobs)  # each exactly once


def test_expired_lease_is_claimable_and_fences_the_old_owner(db: Database, user: Principal) -> None:
    job_id = submit(db, user)
    old = lifecycle.claim_next(db, "encode", "old", TTL)
    assert old is not None
    later = utcnow() + timedelta(seconds=TTL + 1)
    new = lifecycle.claim_next(db, "encode", "new", TTL, now=later)
    assert new is not None and new.id == job_id and new.attempt == 2
    # the old attempt can no longer write anything about the job
    assert lifecycle.heartbeat(db, old.lease, TTL).alive is False
    assert lifecycle.finish_succeeded(db, old.lease) is False
    assert (
        lifecycle.finish_failed(db, old.lease, "x", retryable=True, backoff_base_s=0, backoff_max_s=0) is None
    )
    assert lifecycle.heartbeat(db, new.lease, TTL).alive is True
    assert lifecycle.finish_succeeded(db, new.lease)
    assert row(db, job_id).status == "succeeded"


def test_heartbeat_extends_the_lease_and_flushes(db: Database, user: Principal) -> None:
    job_id = submit(db, user)
    claim = lifecycle.claim_next(db, "encode", "w", 5)
    assert claim is not None
    before = row(db, job_id).lease_expires_at
    beat = lifecycle.heartbeat(
        db, claim.lease, 60, progress=(3, 10, "working"), events=[("log", {"line": "hi"})]
    )
    assert beat.alive and not beat.cancel_requested
    job = row(db, job_id)
    assert job.lease_expires_at is not None and before is not None and job.lease_expires_at > before
    assert (job.progress_step, job.progress_total, job.progress_message) == (3, 10, "working")


def test_retry_backoff_then_failure_when_attempts_run_out(db: Database, user: Principal) -> None:
    job_id = submit(db, user, max_attempts=2)
    c1 = lifecycle.claim_next(db, "encode", "w", TTL)
    assert c1 is not None
    status = lifecycle.finish_failed(
        db, c1.lease, "first", retryable=True, backoff_base_s=30, backoff_max_s=60
    )
    assert status is JobStatus.retrying
    job = row(db, job_id)
    assert job.error == "first" and job.available_at > utcnow() + timedelta(seconds=25)
    assert lifecycle.claim_next(db, "encode", "w", TTL) is None  # backing off
    c2 = lifecycle.claim_next(db, "encode", "w", TTL, now=utcnow() + timedelta(seconds=31))
    assert c2 is not None and c2.attempt == 2
    status = lifecycle.finish_failed(
        db, c2.lease, "second", retryable=True, backoff_base_s=30, backoff_max_s=60
    )
    assert status is JobStatus.failed
    job = row(db, job_id)
    assert job.status == "failed" and job.error == "second" and job.finished_at is not None


def test_permanent_errors_fail_at_once(db: Database, user: Principal) -> None:
    job_id = submit(db, user, max_attempts=5)
    claim = lifecycle.claim_next(db, "encode", "w", TTL)
    assert claim is not None
    assert (
        lifecycle.finish_failed(
            db, claim.lease, "bad input", retryable=False, backoff_base_s=0, backoff_max_s=0
        )
        is JobStatus.failed
    )
    assert row(db, job_id).attempt == 1


@pytest.mark.parametrize(("attempt", "expected"), [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)])
def test_backoff_doubles_and_is_capped(attempt: int, expected: float) -> None:
    assert lifecycle.backoff_seconds(attempt, 2.0, 60.0) == expected


def test_cancel_waiting_job_is_immediate(db: Database, user: Principal, other_user: Principal) -> None:
    job_id = submit(db, user)
    assert lifecycle.request_cancel(db, job_id, other_user.id) is None  # not theirs
    assert lifecycle.request_cancel(db, job_id, user.id) == "cancelled"
    assert row(db, job_id).status == "cancelled"
    assert lifecycle.claim_next(db, "encode", "w", TTL) is None
    assert lifecycle.request_cancel(db, job_id, user.id) == "cancelled"  # idempotent


def test_cancel_running_job_is_requested_then_recorded(db: Database, user: Principal) -> None:
    job_id = submit(db, user)
    claim = lifecycle.claim_next(db, "encode", "w", TTL)
    assert claim is not None
    assert lifecycle.request_cancel(db, job_id, user.id) == "running"
    assert lifecycle.heartbeat(db, claim.lease, TTL).cancel_requested is True
    assert lifecycle.finish_cancelled(db, claim.lease)
    job = row(db, job_id)
    assert job.status == "cancelled" and job.finished_at is not None


def test_cancel_of_a_finished_job_reports_its_status(db: Database, user: Principal) -> None:
    job_id = submit(db, user)
    claim = lifecycle.claim_next(db, "encode", "w", TTL)
    assert claim is not None and lifecycle.finish_succeeded(db, claim.lease)
    assert lifecycle.request_cancel(db, job_id, user.id) == "succeeded"
    assert row(db, job_id).status == "succeeded"


def test_sweeper_requeues_then_fails_lost_jobs(db: Database, user: Principal) -> None:
    job_id = submit(db, user, max_attempts=2)
    published: list[tuple[str, str]] = []
    assert lifecycle.claim_next(db, "encode", "w1", TTL) is not None
    t1 = utcnow() + timedelta(seconds=TTL + 1)
    result = lifecycle.sweep(db, lambda j, q: published.append((j, q)), now=t1)
    assert (result.requeued, result.dispatched) == (1, 1) and published == [(job_id, "encode")]
    job = row(db, job_id)
    assert job.status == "retrying" and "stopped responding" in (job.error or "")
    c2 = lifecycle.claim_next(db, "encode", "w2", TTL, now=t1)
    assert c2 is not None and c2.attempt == 2
    result = lifecycle.sweep(db, lambda j, q: published.append((j, q)), now=t1 + timedelta(seconds=TTL + 1))
    assert result.failed == 1
    job = row(db, job_id)
    assert job.status == "failed" and "no attempts left" in (job.error or "")


def test_sweeper_cancels_a_lost_job_whose_cancel_was_requested(db: Database, user: Principal) -> None:
    job_id = submit(db, user)
    assert lifecycle.claim_next(db, "encode", "w1", TTL) is not None
    lifecycle.request_cancel(db, job_id, user.id)
    result = lifecycle.sweep(db, lambda j, q: None, now=utcnow() + timedelta(seconds=TTL + 1))
    assert result.cancelled == 1 and row(db, job_id).status == "cancelled"


def test_sweeper_publishes_a_missing_wakeup_exactly_once(db: Database, user: Principal) -> None:
    job_id = submit(db, user)
    published: list[str] = []
    lock = threading.Lock()

    def publish(j: str, _q: str) -> None:
        with lock:
            published.append(j)

    assert lifecycle.sweep(db, publish).dispatched == 0  # its wake-up counts as sent at creation
    lifecycle.clear_enqueued(db, job_id)  # ... but the API could not publish it
    threads = [threading.Thread(target=lifecycle.sweep, args=(db, publish)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert published == [job_id]
    assert lifecycle.sweep(db, publish).dispatched == 0


def test_a_long_unclaimed_job_gets_another_wakeup(db: Database, user: Principal) -> None:
    job_id = submit(db, user)
    got: list[str] = []
    assert lifecycle.sweep(db, lambda j, q: got.append(j), redispatch_after_s=60).dispatched == 0
    later = utcnow() + timedelta(seconds=61)
    assert lifecycle.sweep(db, lambda j, q: got.append(j), now=later, redispatch_after_s=60).dispatched == 1
    assert lifecycle.sweep(db, lambda j, q: got.append(j), now=later, redispatch_after_s=60).dispatched == 0
    assert got == [job_id]


def test_failed_publish_is_retried_by_the_next_sweep(db: Database, user: Principal) -> None:
    job_id = submit(db, user)
    lifecycle.clear_enqueued(db, job_id)

    def broken(_j: str, _q: str) -> None:
        raise ConnectionError("broker down")

    assert lifecycle.sweep(db, broken).dispatched == 0
    assert row(db, job_id).enqueued_at is None
    got: list[str] = []
    assert lifecycle.sweep(db, lambda j, q: got.append(j)).dispatched == 1 and got == [job_id]


def test_has_claimable_reads_without_claiming(db: Database, user: Principal) -> None:
    assert not lifecycle.has_claimable(db, "encode")
    job_id = submit(db, user)
    assert lifecycle.has_claimable(db, "encode") and not lifecycle.has_claimable(db, "train")
    assert row(db, job_id).status == "queued"


def test_release_gives_the_attempt_back(db: Database, user: Principal) -> None:
    job_id = submit(db, user)
    claim = lifecycle.claim_next(db, "encode", "w", TTL)
    assert claim is not None and lifecycle.release(db, claim.lease, "shutting down")
    job = row(db, job_id)
    assert job.status == "retrying" and job.attempt == 0
