"""`JobContext`: everything a runner gets, and the monitor thread that keeps its lease alive.

A runner is `run(ctx: JobContext) -> None`. It reports through `ctx` and never touches the database:

    ctx.progress(step, total, "tokenizing")      # latest value wins; flushed every heartbeat
    ctx.log("line", stream="stdout")              # buffered, shown by `mmdlm logs` / SSE
    ctx.metrics(step, {"loss": 2.3})              # buffered, written in batches
    if ctx.cancelled.is_set(): ...                # or ctx.check_cancelled() to raise JobCancelled
    ctx.on_cancel(lambda: os.killpg(pgid, SIGTERM))   # called once, from the monitor thread
    path = ctx.stage_artifact(dataset_id, kind="dataset")
    artifact_id = ctx.publish_directory(out_dir, kind="dataset", name="dataset")

The monitor thread runs for the whole runner: every `heartbeat_interval_s` it renews the lease and
flushes buffered progress, events and metrics in ONE transaction, and reads `cancel_requested`. When
cancel is requested (or the lease is lost) it sets `ctx.cancelled` and calls the cancel callbacks. If
the runner still has not returned `cancel_grace_s` later, the job is marked cancelled anyway and, in a
Celery pool process, the process exits so the pool replaces it: a cancel always ends the work. A runner
with its own stop sequence (SIGTERM, wait, SIGKILL) must finish it well within MMDLM_CANCEL_GRACE_S.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mmdlm.confine import PathRoots
from services.common import artifacts, lifecycle
from services.common.db import Database
from services.common.errors import JobCancelled
from services.common.lifecycle import Lease
from services.common.models import Metric, utcnow
from services.common.paths import Scrubber, user_roots
from services.common.settings import Settings
from services.common.store import ObjectStore

logger = logging.getLogger(__name__)

MAX_LINE = 8_000  # characters kept of one log line
MAX_BUFFERED_LINES = 5_000  # per flush; beyond this lines are counted and dropped, never block the runner


@dataclass
class _Buffers:
    progress: tuple[int, int | None, str] | None = None
    progress_dirty: bool = False
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    dropped_lines: int = 0


class JobContext:
    """What a runner sees of its job. Thread-safe: runner threads and subprocess readers may report."""

    def __init__(
        self,
        *,
        job_id: str,
        kind: str,
        spec: BaseModel,
        attempt: int,
        max_attempts: int,
        owner_id: int,
        lease: Lease,
        db: Database,
        store: ObjectStore,
        settings: Settings,
        scratch_dir: Path,
        data_roots: PathRoots | None = None,
    ) -> None:
        self.job_id = job_id
        self.kind = kind
        self.spec = spec
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.owner_id = owner_id
        self.lease = lease
        self.db = db
        self.store = store
        self.settings = settings
        self.scratch_dir = scratch_dir
        # the owner's data roots: what the runner passes to the library (`mmdlm.confine`)
        self.data_roots = data_roots if data_roots is not None else user_roots(settings, None)
        # every line and message a user reads goes through it: no host paths (services.common.paths)
        self.scrub = Scrubber(settings, scratch=scratch_dir, roots=self.data_roots)
        self.cancelled = threading.Event()
        self.cancel_reason: str | None = None
        self.lease_lost = False
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._buffers = _Buffers()
        self._callbacks: list[Callable[[], None]] = []
        self._callbacks_fired = False
        self._failed_flushes = 0

    # --- reporting ---------------------------------------------------------------------------------------

    def progress(self, step: int, total: int | None = None, message: str = "") -> None:
        """Where the job is: `step` of `total` (None when unknown), with a short phase message."""
        value = (int(step), None if total is None else int(total), self.scrub(str(message))[:500])
        event = ("progress", {"step": value[0], "total": value[1], "message": value[2]})
        with self._lock:
            self._buffers.progress = value
            self._buffers.progress_dirty = True
            # Keep the event stream in order but coalesce bursts: consecutive updates replace each other.
            events = self._buffers.events
            if events and events[-1][0] == "progress":
                events[-1] = event
            else:
                events.append(event)

    def log(self, line: str, stream: str = "stdout") -> None:
        """One log line (kept in the job's event stream). Never blocks; floods are counted and dropped."""
        text = self.scrub(str(line).rstrip("\n"))
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE] + f"... [{len(text) - MAX_LINE} characters cut]"
        with self._lock:
            if len(self._buffers.events) >= MAX_BUFFERED_LINES:
                self._buffers.dropped_lines += 1
                return
            self._buffers.events.append(("log", {"stream": stream, "line": text}))

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Scalar metrics of one step, e.g. `ctx.metrics(100, {"loss": 2.31, "lr": 3e-4})`."""
        now = utcnow()
        rows = []
        for name, value in values.items():
            number = float(value)
            if not math.isfinite(number):
                # SQLite cannot store NaN; say so in the log instead of losing the whole batch.
                self.log(f"metric {name} at step {step} is {number}; not stored", stream="stderr")
                continue
            rows.append(
                Metric(job_id=self.job_id, step=int(step), name=str(name)[:128], value=number, created_at=now)
            )
        with self._lock:
            self._buffers.metrics.extend(rows)

    def event(self, type_: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._buffers.events.append((type_, data))

    # --- cancel ------------------------------------------------------------------------------------------

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (once, from the monitor thread) when the job is cancelled or its lease is lost.

        If cancel already happened, the callback runs immediately. Returns a function that unregisters it.
        Typical use: terminate a subprocess group (`os.killpg(pgid, signal.SIGTERM)`).
        """
        with self._lock:
            fire_now = self._callbacks_fired
            if not fire_now:
                self._callbacks.append(callback)
        if fire_now:
            _safe_call(callback)

        def unregister() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unregister

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled (or this worker lost it); call it between steps."""
        if self.cancelled.is_set():
            raise JobCancelled(self.cancel_reason or "cancelled")

    def _trigger_cancel(self, reason: str) -> None:
        with self._lock:
            if self._callbacks_fired:
                return
            self._callbacks_fired = True
            self.cancel_reason = reason
            callbacks = list(self._callbacks)
        self.cancelled.set()
        logger.info("job %s: %s; stopping the runner", self.job_id, reason)
        for callback in callbacks:
            _safe_call(callback)

    # --- artifacts ---------------------------------------------------------------------------------------

    def stage_artifact(self, artifact_id: str, dest: Path | None = None, *, kind: str | None = None) -> Path:
        """Local, verified copy of an artifact of this job's owner (default: the shared cache folder)."""
        assert self.settings.cache_dir is not None
        target = dest if dest is not None else self.settings.cache_dir / "artifacts" / artifact_id
        return artifacts.stage_artifact(
            self.db, self.store, artifact_id, Path(target), owner_id=self.owner_id, kind=kind
        )

    def publish_directory(
        self, local_dir: Path, *, kind: str, name: str, metadata: dict[str, Any] | None = None
    ) -> str:
        """Store `local_dir` as artifact `name` of this job; idempotent per (job, name)."""
        artifact_id = artifacts.publish_directory(
            self.db, self.store, lease=self.lease, owner_id=self.owner_id, local_dir=Path(local_dir),
            kind=kind, name=name, metadata=metadata,
        )  # fmt: skip
        self.event("artifact", {"artifact_id": artifact_id, "kind": kind, "name": name})
        return artifact_id

    def publish_file(
        self, local_path: Path, *, kind: str, name: str, metadata: dict[str, Any] | None = None
    ) -> str:
        artifact_id = artifacts.publish_file(
            self.db, self.store, lease=self.lease, owner_id=self.owner_id, local_path=Path(local_path),
            kind=kind, name=name, metadata=metadata,
        )  # fmt: skip
        self.event("artifact", {"artifact_id": artifact_id, "kind": kind, "name": name})
        return artifact_id

    def find_artifact(self, name: str) -> str | None:
        """The id of artifact `name` if an earlier attempt of this job already published it."""
        found = artifacts.find_published(self.db, self.job_id, name)
        return found.id if found is not None else None

    # --- flushing ----------------------------------------------------------------------------------------

    def flush(self) -> lifecycle.Heartbeat:
        """Renew the lease and write everything buffered; called by the monitor and at the end."""
        with self._flush_lock:
            with self._lock:
                buffers, self._buffers = self._buffers, _Buffers(progress=self._buffers.progress)
            events = list(buffers.events)
            progress = buffers.progress if buffers.progress_dirty else None
            if buffers.dropped_lines:
                events.append(
                    ("log", {"stream": "stderr", "line": f"[{buffers.dropped_lines} log lines dropped]"})
                )
            try:
                beat = lifecycle.heartbeat(
                    self.db, self.lease, self.settings.lease_ttl_s,
                    progress=progress, events=events, metrics=buffers.metrics,
                )  # fmt: skip
            except Exception:
                # Put the data back so the next beat retries it (the DB may be briefly unavailable),
                # but not forever: data that keeps failing would otherwise block every heartbeat.
                self._failed_flushes += 1
                if self._failed_flushes < 3:
                    with self._lock:
                        self._buffers.events[:0] = buffers.events
                        self._buffers.metrics[:0] = buffers.metrics
                        self._buffers.progress_dirty = self._buffers.progress_dirty or buffers.progress_dirty
                else:
                    logger.error("job %s: dropping %d events and %d metrics that failed to flush 3 times",
                                 self.job_id, len(buffers.events), len(buffers.metrics))  # fmt: skip
                raise
            self._failed_flushes = 0
        if not beat.alive:
            self.lease_lost = True
            self._trigger_cancel("lease lost (the job was taken over or finished elsewhere)")
        elif beat.cancel_requested:
            self._trigger_cancel("cancel requested")
        return beat


class JobMonitor:
    """The background thread of one running job: heartbeat, flush, cancel detection, stuck-cancel kill."""

    def __init__(self, ctx: JobContext, *, kill_on_stuck_cancel: bool) -> None:
        self.ctx = ctx
        self.kill_on_stuck_cancel = kill_on_stuck_cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"job-monitor-{ctx.job_id[:8]}", daemon=True)
        self.forced_cancel = False

    def start(self) -> JobMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        settings = self.ctx.settings
        cancel_seen_at: float | None = None
        last_ok = time.monotonic()
        while not self._stop.wait(settings.heartbeat_interval_s):
            try:
                self.ctx.flush()
                last_ok = time.monotonic()
            except Exception as exc:
                logger.warning("job %s: heartbeat failed: %s", self.ctx.job_id, exc)
                if time.monotonic() - last_ok > settings.lease_ttl_s:
                    # The lease has certainly expired by now: someone else may run the job.
                    self.ctx.lease_lost = True
                    self.ctx._trigger_cancel("heartbeats failing for longer than the lease")
            if self.ctx.cancelled.is_set():
                cancel_seen_at = cancel_seen_at or time.monotonic()
                if not self.ctx.lease_lost and time.monotonic() - cancel_seen_at > settings.cancel_grace_s:
                    self._force_cancel()
                    return

    def _force_cancel(self) -> None:
        grace = self.ctx.settings.cancel_grace_s
        message = f"cancelled; the runner did not stop within {grace:g}s"
        self.forced_cancel = True
        try:
            self.ctx.flush()
        except Exception:
            pass
        done = lifecycle.finish_cancelled(self.ctx.db, self.ctx.lease, message)
        logger.error("job %s: %s", self.ctx.job_id, message)
        if done and self.kill_on_stuck_cancel:
            logger.error(
                "job %s: terminating worker process %d so the pool replaces it", self.ctx.job_id, os.getpid()
            )
            logging.shutdown()
            os._exit(75)


def _safe_call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        logger.exception("cancel callback %r failed", callback)
