"""Checkpoints, metrics and logs of a training job in the object store, so any worker can resume it.

Store layout (all under `runs/<job_id>/`):
    checkpoints/step-00000100/...      the files of the run dir's checkpoint, uploaded as they are
    index/step-00000100.json           the commit marker, written LAST: {step, files [{path, sha256, bytes}],
                                       best_val, best_step, uploaded_at}. A checkpoint without a marker
                                       does not exist for `restore`, so an upload cut by a crash is harmless.
    metrics.jsonl                      rank 0's metrics lines up to the newest committed checkpoint (at
                                       least), uploaded before each marker: the loss curve survives the worker
    logs/attempt-<n>/rank-<r>.<stream>.log, torchrun.log   every rank's output, uploaded at each sync and
                                       at the end of the attempt (logs outlive the machine; C.2 lost logs)
Pruning keeps the newest `keep_last` committed checkpoints plus the best one by validation loss; it
deletes the marker before the files, so a reader never finds a marker whose files are gone.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.artifacts import FileRecord, scan_directory
from services.common.store import ObjectStore, StoreError

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")  # the loop's checkpoint folder names (mmdlm.training.checkpoint)


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def local_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run dir (the loop renames `.tmp-*` into `step-*` when complete)."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = STEP_DIR.match(path.name)
        if m and (path / "trainer_state.json").is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


@dataclass(frozen=True)
class Marker:
    step: int
    files: list[FileRecord]
    best_val: float | None
    best_step: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "step": self.step, "files": [f.as_dict() for f in self.files], "best_val": self.best_val,
            "best_step": self.best_step, "uploaded_at": time.time(),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Marker:
        return cls(
            step=int(data["step"]), files=[FileRecord(**f) for f in data["files"]],
            best_val=data.get("best_val"), best_step=data.get("best_step"),
        )  # fmt: skip


class RunStore:
    """The object-store side of one job's run (see the module docstring)."""

    def __init__(self, store: ObjectStore, job_id: str) -> None:
        self.store = store
        self.prefix = f"runs/{job_id}/"

    def checkpoint_prefix(self, step: int) -> str:
        return f"{self.prefix}checkpoints/{step_name(step)}/"

    def marker_key(self, step: int) -> str:
        return f"{self.prefix}index/{step_name(step)}.json"

    @property
    def metrics_key(self) -> str:
        return f"{self.prefix}metrics.jsonl"

    def logs_prefix(self, attempt: int) -> str:
        return f"{self.prefix}logs/attempt-{attempt}/"

    # --- reading ----------------------------------------------------------------------------------------

    def markers(self) -> list[Marker]:
        found = []
        for info in self.store.list(f"{self.prefix}index/"):
            try:
                found.append(Marker.from_json(json.loads(self.store.get_bytes(info.key))))
            except (StoreError, ValueError, KeyError) as exc:
                logger.warning("ignoring unreadable checkpoint marker %s: %s", info.key, exc)
        return sorted(found, key=lambda m: m.step)

    def latest(self) -> Marker | None:
        markers = self.markers()
        return markers[-1] if markers else None

    def restore(self, ckpt_root: Path) -> Marker | None:
        """Make `ckpt_root` hold exactly the newest committed checkpoint (verified), or nothing.

        Local checkpoints are dropped: the store is the truth, and a checkpoint this machine wrote but
        never committed may belong to an attempt that lost its lease.
        """
        latest = self.latest()
        keep = ckpt_root / step_name(latest.step) if latest is not None else None
        if ckpt_root.is_dir():
            for path in ckpt_root.iterdir():
                if path != keep or not _matches(path, latest):
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
        if latest is None or keep is None:
            return None
        if keep.is_dir():
            return latest  # this machine already holds the same files
        tmp = ckpt_root / f".restore-{keep.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        prefix = self.checkpoint_prefix(latest.step)
        for record in latest.files:
            info = self.store.get_file(prefix + record.path, tmp / record.path)
            if info.sha256 != record.sha256 or info.bytes != record.bytes:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StoreError(f"checkpoint {prefix}{record.path} is corrupt in the store (sha256 differs)")
        tmp.rename(keep)
        return latest

    def metrics_lines(self) -> list[str]:
        if self.store.stat(self.metrics_key) is None:
            return []
        return self.store.get_bytes(self.metrics_key).decode("utf-8", errors="replace").splitlines()

    # --- writing ----------------------------------------------------------------------------------------

    def upload(
        self, step: int, local_dir: Path, before_commit: Callable[[], None] | None = None
    ) -> Marker | None:
        """Upload one local checkpoint and commit it; None if the loop deleted it meanwhile."""
        prefix = self.checkpoint_prefix(step)
        try:
            files = scan_directory(local_dir)
            state = json.loads((local_dir / "trainer_state.json").read_text())
            self.store.delete_prefix(prefix)  # debris of an upload cut short
            for record in files:
                info = self.store.put_file(prefix + record.path, local_dir / record.path)
                if info.bytes != record.bytes:
                    raise StoreError(
                        f"{prefix}{record.path}: stored {info.bytes} bytes, expected {record.bytes}"
                    )
        except (FileNotFoundError, NotADirectoryError):
            logger.info("checkpoint %s was pruned locally before it was uploaded; skipped", local_dir.name)
            self.store.delete_prefix(prefix)
            return None
        if before_commit is not None:
            before_commit()
        marker = Marker(
            step=step, files=files, best_val=state.get("best_val"), best_step=state.get("best_step")
        )
        self.store.put_bytes(self.marker_key(step), json.dumps(marker.as_json(), indent=1).encode())
        return marker

    def prune(self, keep_last: int, keep_best: bool) -> list[int]:
        """Delete committed checkpoints beyond the newest `keep_last`, never the best one."""
        markers = self.markers()
        if not markers:
            return []
        best = markers[-1].best_step if keep_best else None
        keep = {m.step for m in markers[-keep_last:]} | ({best} if best is not None else set())
        removed = []
        for marker in markers:
            if marker.step in keep:
                continue
            self.store.delete(self.marker_key(marker.step))
            self.store.delete_prefix(self.checkpoint_prefix(marker.step))
            removed.append(marker.step)
        return removed


def _matches(path: Path, marker: Marker | None) -> bool:
    if marker is None or not path.is_dir():
        return False
    return all((path / f.path).is_file() and (path / f.path).stat().st_size == f.bytes for f in marker.files)


class CheckpointSync:
    """Uploads each new complete checkpoint of a run dir while training runs (a background thread) and
    once more at the end (`sync_now`). Every failure is logged and retried at the next pass: a store
    outage must not kill a training run, only delay its checkpoints."""

    def __init__(
        self,
        run_store: RunStore,
        ckpt_root: Path,
        *,
        keep_last: int,
        keep_best: bool,
        interval_s: float,
        before_commit: Callable[[], None] | None = None,
        on_commit: Callable[[Marker], None] | None = None,
    ) -> None:
        self.run_store = run_store
        self.ckpt_root = ckpt_root
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.interval_s = interval_s
        self.before_commit = before_commit
        self.on_commit = on_commit
        self.committed: set[int] = {m.step for m in run_store.markers()}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-sync", daemon=True)

    def start(self) -> CheckpointSync:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync_now()
            except Exception as exc:
                logger.warning("checkpoint upload failed (will retry): %s", exc)

    def sync_now(self) -> list[int]:
        """Upload and commit every local checkpoint not yet committed, then prune; returns new steps."""
        with self._lock:
            new = []
            for step, path in local_checkpoints(self.ckpt_root):
                if step in self.committed:
                    continue
                marker = self.run_store.upload(step, path, self.before_commit)
                if marker is None:
                    continue
                self.committed.add(step)
                new.append(step)
                logger.info("checkpoint step %d stored (%d files)", step, len(marker.files))
                if self.on_commit is not None:
                    self.on_commit(marker)
            if new:
                # pruned steps stay in `committed`: the loop may still hold them locally for a moment
                self.run_store.prune(self.keep_last, self.keep_best)
            return new
