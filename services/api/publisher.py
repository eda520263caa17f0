"""Wake-ups of submitted jobs, published off the request path by one background thread.

Why: a Celery publish cost ~0.4-0.8 ms of CPU and one broker round trip inside the submit handler (on
the embedded broker a SQL transaction on the broker tables). The job row is the truth and is committed
before `submit` is called, so the answer does not need to wait for the wake-up:

- a publish that fails (broker down past the retry policy) clears the job's `enqueued_at`, and the
  sweeper publishes it once the broker is back (as the inline publish did);
- a process that dies with wake-ups still queued here leaves jobs marked enqueued: the sweeper
  republishes a wake-up that stayed unconsumed past its staleness limit, so nothing is lost, only late;
- `close()` (the app's shutdown) drains what is queued before returning, bounded by `timeout_s`.

One thread, so the broker sees one producer connection from this process, and publishes leave in
submit order. What is queued when the thread wakes (at most `BATCH`) goes out together
(`queue.publish_many`: one round trip on Redis); a batch that fails is retried one wake-up at a time
with `queue.publish`'s retry policy, so a failure is still settled per job.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

from celery import Celery

from services.common import lifecycle
from services.common.db import Database
from services.common.queue import publish, publish_many

logger = logging.getLogger(__name__)

_STOP = ("", "")
BATCH = 256


class WakeupPublisher:
    def __init__(
        self,
        celery: Celery,
        db: Database,
        send: Callable[[Celery, str, str], None] = publish,
        send_many: Callable[[Celery, Sequence[tuple[str, str]]], None] | None = publish_many,
    ) -> None:
        self.celery = celery
        self.db = db
        self.send = send
        self.send_many = send_many
        self._queue: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.published = 0
        self.failed = 0

    def submit(self, job_id: str, queue_name: str) -> None:
        """Queue the wake-up of a committed job; returns at once."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="mmdlm-wakeups", daemon=True)
                    self._thread.start()
        self._queue.put((job_id, queue_name))

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            self._publish([wakeup for wakeup in batch if wakeup != _STOP])
            if stop:
                return

    def _publish(self, batch: list[tuple[str, str]]) -> None:
        if not batch:
            return
        if self.send_many is not None:
            try:
                self.send_many(self.celery, batch)
                self.published += len(batch)
                return
            except Exception as exc:  # a second delivery is harmless (the SQL lease decides who runs)
                logger.info("batch of %d wake-ups not sent (%s): sending them one by one", len(batch), exc)
        for job_id, queue_name in batch:
            try:
                self.send(self.celery, job_id, queue_name)
                self.published += 1
            except Exception as exc:
                self.failed += 1
                logger.warning("job %s stored but its wake-up could not be published: %s", job_id, exc)
                try:  # the row is the truth: the sweeper publishes it once the broker is back
                    lifecycle.clear_enqueued(self.db, job_id)
                except Exception as db_exc:
                    logger.warning("job %s: could not mark its wake-up as unsent: %s", job_id, db_exc)

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 10.0) -> None:
        """Publish what is queued (bounded by `timeout_s`), then stop the thread."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout_s)
        if thread.is_alive():
            logger.warning("%d job wake-up(s) not published at shutdown: the sweeper will", self.pending())
        self._thread = None
