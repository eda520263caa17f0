"""The job runner in-process (no Celery): outcomes, retries, cancel callbacks, stuck cancel, lease loss,
log capture; and the worker's wake-up handling of re-delivered messages."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from services.common import lifecycle
from services.common.auth import Principal
from services.common.context import JobContext
from services.common.db import Database
from services.common.kinds import JobKind, load_kinds, register, unregister
from services.common.models import Job, JobEvent, Metric, utcnow
from services.common.runner import describe_error, run_claimed
from services.common.settings import Settings
from services.common.store.local import LocalStore
from services.common.worker import WorkerRuntime, handle_wakeup
from tests.utils.kinds import ProbeSpec

load_kinds(["tests.utils.kinds"])


@pytest.fixture
def settings(tmp_path: Path, db: Database) -> Settings:
    return Settings(
        _env_file=None,
        home=tmp_path / "home",
        database_url=db.url,
        lease_ttl_s=3,
        heartbeat_interval_s=0.1,
        cancel_grace_s=1.0,
        retry_backoff_s=0.0,
        kind_modules=["tests.utils.kinds"],
    )  # type: ignore[call-arg]


def start(
    db: Database, user: Principal, spec: dict, *, max_attempts: int = 3, owner: str = "w"
) -> lifecycle.ClaimedJob:
    with db.begin() as s:
        lifecycle.create_job(
            s, owner_id=user.id, kind=spec["kind"], queue="encode", spec=spec, max_attempts=max_attempts
        )
    claim = lifecycle.claim_next(db, "encode", owner, 3)
    assert claim is not None
    return claim


def run(claim: lifecycle.ClaimedJob, settings: Settings, db: Database) -> object:
    assert settings.store_path is not None
    return run_claimed(claim, settings=settings, db=db, store=LocalStore(settings.store_path))


def job_row(db: Database, job_id: str) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def events(db: Database, job_id: str, type_: str) -> list[dict]:
    with db.session() as s:
        rows = s.execute(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == type_).order_by(JobEvent.id)
        )
        return [e.data for e in rows.scalars()]


def test_success_records_progress_metrics_logs_and_artifact(
    db: Database, user: Principal, settings: Settings
) -> None:
    claim = start(db, user, {"kind": "probe", "steps": 4, "files": 2, "log_lines": 3})
    assert run(claim, settings, db) == "succeeded"
    job = job_row(db, claim.id)
    assert (job.status, job.progress_step, job.progress_total, job.error) == ("succeeded", 4, 4, None)
    assert [e["line"] for e in events(db, claim.id, "log")][:3] == [f"probe log line {i}" for i in range(3)]
    assert events(db, claim.id, "progress")[-1] == {"step": 4, "total": 4, "message": "probing"}
    assert events(db, claim.id, "artifact")[0]["name"] == "output"
    with db.session() as s:
        losses = s.execute(
            select(Metric.step, Metric.value)
            .where(Metric.job_id == claim.id, Metric.name == "loss")
            .order_by(Metric.step)
        ).all()
    assert [(step, round(v, 3)) for step, v in losses] == [(1, 1.0), (2, 0.5), (3, 0.333), (4, 0.25)]
    assert not (settings.work_dir / "jobs" / claim.id).exists()  # type: ignore[operator]


def test_transient_failure_retries_and_keeps_the_traceback(
    db: Database, user: Principal, settings: Settings
) -> None:
    claim = start(db, user, {"kind": "probe", "fail_attempts": 1})
    assert run(claim, settings, db) == "retrying"
    job = job_row(db, claim.id)
    assert job.error == "RuntimeError: probe failure on attempt 1"
    assert any("Traceback" in e["line"] for e in events(db, claim.id, "log") if e["stream"] == "stderr")
    again = lifecycle.claim_next(db, "encode", "w", 3)
    assert again is not None and again.attempt == 2
    assert run(again, settings, db) == "succeeded"


def test_permanent_failure_does_not_retry(db: Database, user: Principal, settings: Settings) -> None:
    claim = start(db, user, {"kind": "probe", "permanent_error": True}, max_attempts=5)
    assert run(claim, settings, db) == "failed"
    assert job_row(db, claim.id).error == "probe: permanent_error was requested"


def test_invalid_stored_spec_fails_permanently(db: Database, user: Principal, settings: Settings) -> None:
    claim = start(db, user, {"kind": "probe", "steps": -3})
    assert run(claim, settings, db) == "failed"
    assert "steps" in (job_row(db, claim.id).error or "")


def test_cancel_reaches_the_runner_and_its_callbacks(
    db: Database, user: Principal, settings: Settings
) -> None:
    fired = threading.Event()
    seen: dict[str, object] = {}

    def runner(ctx: JobContext) -> None:
        ctx.on_cancel(fired.set)
        while not ctx.cancelled.wait(0.05):
            pass
        seen["reason"] = ctx.cancel_reason
        ctx.check_cancelled()

    kind = register(JobKind("cancel-probe", _spec("cancel-probe"), "encode", f"{__name__}:_cancel_runner"))
    _RUNNERS["cancel-probe"] = runner
    try:
        claim = start(db, user, {"kind": "cancel-probe"})
        timer = threading.Timer(0.3, lifecycle.request_cancel, args=(db, claim.id, user.id))
        timer.start()
        t0 = time.monotonic()
        assert run(claim, settings, db) == "cancelled"
        assert time.monotonic() - t0 < 3
        assert fired.is_set() and seen["reason"] == "cancel requested"
        assert job_row(db, claim.id).status == "cancelled"
    finally:
        unregister(kind.name)


def test_a_runner_ignoring_cancel_is_ended_after_the_grace(
    db: Database, user: Principal, settings: Settings
) -> None:
    claim = start(db, user, {"kind": "probe", "steps": 0, "ignore_cancel": True})
    threading.Timer(0.3, lifecycle.request_cancel, args=(db, claim.id, user.id)).start()
    done = threading.Event()

    def target() -> None:
        run(claim, settings, db)
        done.set()

    threading.Thread(target=target, daemon=True).start()  # the runner never returns (in-process: no kill)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and job_row(db, claim.id).status != "cancelled":
        time.sleep(0.1)
    job = job_row(db, claim.id)
    assert job.status == "cancelled" and "did not stop within 1s" in (job.error or "")


def test_lost_lease_stops_the_runner_and_records_nothing(
    db: Database, user: Principal, settings: Settings
) -> None:
    claim = start(db, user, {"kind": "probe", "steps": 40, "step_s": 0.05})
    thief: list[lifecycle.ClaimedJob] = []

    def steal() -> None:  # another worker takes the job over as if our lease had expired
        later = utcnow() + timedelta(seconds=10)
        taken = lifecycle.claim_next(db, "encode", "thief", 60, now=later)
        assert taken is not None
        thief.append(taken)

    threading.Timer(0.3, steal).start()
    assert run(claim, settings, db) is None
    job = job_row(db, claim.id)
    assert job.status == "running" and job.lease_owner == "thief" and job.attempt == 2


def test_redelivered_wakeup_of_a_running_job_is_dropped(
    db: Database, user: Principal, settings: Settings
) -> None:
    """What a second delivery of the same Celery message does while the job's lease is alive."""
    claim = start(db, user, {"kind": "probe"})
    runtime = WorkerRuntime(settings)
    result = handle_wakeup(runtime, app=None, job_id=claim.id)  # type: ignore[arg-type]
    assert result == "dropped: nothing claimable"
    assert job_row(db, claim.id).attempt == 1
    assert handle_wakeup(runtime, app=None, job_id="no-such-job") == "dropped: unknown job"  # type: ignore[arg-type]


def test_wakeup_runs_the_best_job_of_its_queue(db: Database, user: Principal, settings: Settings) -> None:
    with db.begin() as s:
        low = lifecycle.create_job(s, owner_id=user.id, kind="probe", queue="encode", spec={"kind": "probe"})
        high = lifecycle.create_job(
            s, owner_id=user.id, kind="probe", queue="encode", spec={"kind": "probe"}, priority=9
        )
        low_id, high_id = low.id, high.id
    runtime = WorkerRuntime(settings)
    assert handle_wakeup(runtime, app=None, job_id=low_id) == f"ran {high_id}: succeeded"  # type: ignore[arg-type]
    assert handle_wakeup(runtime, app=None, job_id=high_id) == f"ran {low_id}: succeeded"  # type: ignore[arg-type]


def test_describe_error_keeps_our_messages_clean() -> None:
    from services.common.errors import PermanentError
    from services.common.store import StoreUnavailableError

    assert describe_error(PermanentError("bad field x")) == "bad field x"
    assert describe_error(StoreUnavailableError("store down")) == "store down"
    assert describe_error(KeyError("k")) == "KeyError: 'k'"
    assert describe_error(RuntimeError()) == "RuntimeError"


# --- helpers for throw-away kinds --------------------------------------------------------------------------

_RUNNERS: dict[str, object] = {}


def _cancel_runner(ctx: JobContext) -> None:
    _RUNNERS[ctx.kind](ctx)  # type: ignore[operator]


def _spec(name: str) -> type[ProbeSpec]:
    from typing import Literal

    from pydantic import create_model

    return create_model(f"Spec_{name.replace('-', '_')}", __base__=ProbeSpec, kind=(Literal[name], name))  # type: ignore[valid-type]
