"""The worker process: one Celery task that claims and runs jobs, plus the sweeper thread.

`mmdlm worker --queues encode,train,sample` calls `run_worker`. The pool is prefork with one job per
child process by default (`--concurrency`), so a job that ignores cancel can be ended by exiting its
child, and memory a job leaks dies with it. Every worker also runs a sweeper thread in its main
process (no separate beat process): it requeues jobs whose worker vanished and publishes wake-ups that
are due (retries after backoff, jobs whose first publish failed).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from celery import Celery, signals
from sqlalchemy import select

from services.common import lifecycle, preflight
from services.common.db import Database, dispose_inherited
from services.common.kinds import QUEUES, load_kinds
from services.common.migrate import upgrade
from services.common.models import Job
from services.common.queue import TASK_NAME, create_celery, declare_queues, publish
from services.common.runner import run_claimed
from services.common.settings import Settings
from services.common.store import ObjectStore, StoreError, open_store

logger = logging.getLogger(__name__)

CLAIM_TRIES = 20
CLAIM_RETRY_S = 0.05


@dataclass
class WorkerRuntime:
    """Per-process state of a worker (the pool children re-create their engine after fork)."""

    settings: Settings
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    in_pool_child: bool = False
    _db: Database | None = None
    _store: ObjectStore | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings.database_url, pool_size=4)
        return self._db

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = open_store(self.settings)
        return self._store


def handle_wakeup(runtime: WorkerRuntime, app: Celery, job_id: str) -> str:
    """What one message does: claim the best waiting job of the named job's queue and run it.

    Returns a short description (for logs and tests): "ran <id>: <status>" or "dropped: ...".
    """
    db = runtime.db
    with db.session() as s:
        queue = s.execute(select(Job.queue).where(Job.id == job_id)).scalar_one_or_none()
    if queue is None:
        logger.warning("wake-up for unknown job %s dropped", job_id)
        return "dropped: unknown job"
    owner = f"{runtime.name}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    limit = runtime.settings.max_running_per_user  # running jobs per user and queue; 0 = no limit
    claim = None
    for _ in range(CLAIM_TRIES):
        claim = lifecycle.claim_next(
            db, queue, owner, runtime.settings.lease_ttl_s, max_running_per_owner=limit
        )
        # Nothing claimed although a job waits: its row was locked for a moment (a cancel, a sweep,
        # another claimer on PostgreSQL's SKIP LOCKED). Look again rather than drop the wake-up.
        if claim is not None or not lifecycle.has_claimable(db, queue, max_running_per_owner=limit):
            break
        time.sleep(CLAIM_RETRY_S)
    if claim is None:
        logger.info(
            "wake-up for %s: nothing claimable in queue %s (running elsewhere or finished)", job_id, queue
        )
        return "dropped: nothing claimable"
    status = run_claimed(
        claim,
        settings=runtime.settings,
        db=db,
        store=runtime.store,
        kill_on_stuck_cancel=runtime.in_pool_child,
    )
    if limit and status is not None:  # a slot of this owner is free: wake its waiting jobs
        lifecycle.redispatch_owner(db, claim.owner_id, claim.queue)
    if status is lifecycle.JobStatus.retrying or limit:
        # Publish the retry's wake-up as soon as it is due, without waiting for the next sweep.
        _sweep_once(runtime, app)
    return f"ran {claim.id}: {status}"


def _sweep_once(runtime: WorkerRuntime, app: Celery) -> lifecycle.SweepResult:
    return lifecycle.sweep(
        runtime.db,
        lambda job_id, queue: publish(app, job_id, queue),
        redispatch_after_s=runtime.settings.redispatch_after_s,
    )


class Sweeper:
    """Periodic sweep in a daemon thread of the worker's main process."""

    def __init__(self, runtime: WorkerRuntime, app: Celery) -> None:
        self.runtime = runtime
        self.app = app
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mmdlm-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.runtime.settings.sweep_interval_s):
            try:
                result = _sweep_once(self.runtime, self.app)
                if result.requeued or result.failed or result.cancelled:
                    logger.info("sweep: %s", result)
            except Exception as exc:
                logger.warning("sweep failed: %s", exc)


def build_worker_app(settings: Settings) -> tuple[Celery, WorkerRuntime]:
    load_kinds(settings.kind_modules)
    app = create_celery(settings)
    runtime = WorkerRuntime(settings)
    sweeper: list[Sweeper] = []

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def wake(job_id: str) -> str:
        return handle_wakeup(runtime, app, job_id)

    @signals.worker_process_init.connect(weak=False)
    def _child_init(**_: object) -> None:
        dispose_inherited()
        runtime._db = None
        runtime._store = None
        runtime.in_pool_child = True

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        try:
            runtime.store.check()
        except StoreError as exc:
            logger.error("object store not usable: %s (jobs that need it will fail and retry)", exc)
        s = Sweeper(runtime, app)
        s.start()
        sweeper.append(s)

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: object) -> None:
        for s in sweeper:
            s.stop()

    del wake, _child_init, _ready, _shutdown
    return app, runtime


def run_worker(
    settings: Settings,
    queues: Sequence[str] = QUEUES,
    *,
    concurrency: int = 1,
    pool: str = "prefork",
    hostname: str | None = None,
    loglevel: str = "INFO",
) -> None:
    """Block running a Celery worker that consumes `queues`."""
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown:
        raise ValueError(f"unknown queues {unknown}; choose from {list(QUEUES)}")
    # Fail at start, in one line (PreflightError), rather than in Celery's connection retries later.
    preflight.check_config(settings, broker=True)
    if settings.startup_checks:
        preflight.require(
            settings, preflight.worker_checks(settings, schema=not settings.should_auto_migrate)
        )
    if settings.should_auto_migrate:
        upgrade(settings.database_url)
    app, _ = build_worker_app(settings)
    declare_queues(app)
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--hostname={hostname or f'mmdlm-{os.getpid()}@%h'}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    app.worker_main(argv)
