"""Run one claimed job: build its context, start its monitor, call the kind's runner, record the outcome.

Outcome rules:
  runner returns                      -> succeeded (cancelled if cancel was requested meanwhile)
  JobCancelled / cancel was requested -> cancelled
  PermanentError, a kind's permanent_errors, an invalid stored spec -> failed, no retry
  any other exception                 -> retrying with exponential backoff while attempts remain, then failed
  the lease was lost                  -> nothing is recorded: whoever holds the job now decides
The exception message becomes the job's error; the traceback goes to the job log (stream stderr);
both with host paths replaced by placeholders (`services.common.paths.Scrubber`).
"""

from __future__ import annotations

import logging
import shutil
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from services.common import lifecycle, paths
from services.common.context import JobContext, JobMonitor
from services.common.db import Database
from services.common.errors import FieldError, JobCancelled, PermanentError
from services.common.kinds import get_kind
from services.common.lifecycle import ClaimedJob
from services.common.models import JobStatus
from services.common.paths import Scrubber
from services.common.settings import Settings
from services.common.store import ObjectStore, StoreError

logger = logging.getLogger(__name__)

_OWN_ERRORS = (PermanentError, StoreError, FieldError, JobCancelled)
CAPTURED_LOGGERS = ("mmdlm", "services")


def describe_error(exc: BaseException) -> str:
    """The job error a user reads: our own errors by message, anything else prefixed by its type."""
    text = str(exc).strip()
    if isinstance(exc, _OWN_ERRORS) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def scratch_dir_for(settings: Settings, job_id: str) -> Path:
    assert settings.work_dir is not None
    return settings.work_dir / "jobs" / job_id


def run_claimed(
    claim: ClaimedJob,
    *,
    settings: Settings,
    db: Database,
    store: ObjectStore,
    kill_on_stuck_cancel: bool = False,
) -> JobStatus | None:
    """Execute `claim` to the end and return its new status (None if the lease was lost)."""
    lease = claim.lease
    try:
        kind = get_kind(claim.kind)
        spec = kind.spec.model_validate(claim.spec)
    except (KeyError, ValidationError) as exc:
        message = Scrubber(settings)(f"cannot run this job here: {exc}")
        return lifecycle.finish_failed(db, lease, message, retryable=False, backoff_base_s=0, backoff_max_s=0)
    # Defence in depth: the paths were checked at submit, but a symlink may have changed since, and the
    # owner's roots are those of this worker's configuration.
    roots = paths.owner_roots(settings, db, claim.owner_id)
    try:
        paths.check_spec_paths(spec, roots)
        spec = paths.resolve_model_refs(spec, roots)
    except FieldError as exc:
        return lifecycle.finish_failed(
            db, lease, str(exc), retryable=False, backoff_base_s=0, backoff_max_s=0
        )

    scratch = scratch_dir_for(settings, claim.id)
    scratch.mkdir(parents=True, exist_ok=True)
    ctx = JobContext(
        job_id=claim.id, kind=claim.kind, spec=spec, attempt=claim.attempt, max_attempts=claim.max_attempts,
        owner_id=claim.owner_id, lease=lease, db=db, store=store, settings=settings, scratch_dir=scratch,
        data_roots=roots,
    )  # fmt: skip
    monitor = JobMonitor(ctx, kill_on_stuck_cancel=kill_on_stuck_cancel).start()
    error: BaseException | None = None
    logger.info("job %s (%s): attempt %d/%d started", claim.id, claim.kind, claim.attempt, claim.max_attempts)
    try:
        with _capture_logs(ctx):
            kind.load_runner()(ctx)
    except Exception as exc:
        error = exc
        if not isinstance(exc, (JobCancelled, PermanentError, StoreError)):
            ctx.log(traceback.format_exc(), stream="stderr")
    finally:
        monitor.stop()
    if monitor.forced_cancel:
        return JobStatus.cancelled
    try:
        ctx.flush()
    except Exception as exc:
        logger.warning("job %s: final flush failed: %s", claim.id, exc)
    if ctx.lease_lost:
        logger.warning(
            "job %s: attempt %d lost its lease; its outcome is not recorded", claim.id, claim.attempt
        )
        return None

    if ctx.cancelled.is_set() or isinstance(error, JobCancelled):
        status = JobStatus.cancelled if lifecycle.finish_cancelled(db, lease) else None
    elif error is None:
        status = JobStatus.succeeded if lifecycle.finish_succeeded(db, lease) else None
    else:
        permanent = isinstance(error, (PermanentError, FieldError, *kind.permanent_errors))
        status = lifecycle.finish_failed(
            db, lease, ctx.scrub(describe_error(error)), retryable=not permanent,
            backoff_base_s=settings.retry_backoff_s, backoff_max_s=settings.retry_backoff_max_s,
        )  # fmt: skip
    logger.info("job %s: attempt %d ended %s%s", claim.id, claim.attempt, status,
                f" ({describe_error(error)})" if error is not None else "")  # fmt: skip
    if status is not None and status is not JobStatus.retrying and not settings.keep_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return status


class _ContextHandler(logging.Handler):
    """Forwards library/service log records of the running job into its log stream."""

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(level=logging.INFO)
        self.ctx = ctx
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.ctx.log(self.format(record), stream="log")
        except Exception:
            self.handleError(record)


@contextmanager
def _capture_logs(ctx: JobContext) -> Iterator[None]:
    handler = _ContextHandler(ctx)
    loggers = [logging.getLogger(name) for name in CAPTURED_LOGGERS]
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, previous, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
