"""Checkpoints in the object store (local backend): commit marker last, restore verifies, prune keeps
the newest M and the best; the first failing rank's error file becomes the job error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.store import StoreError
from services.common.store.local import LocalStore
from services.trainer.metrics import metric_values
from services.trainer.supervise import AttemptDirs, RankLogTail, Torchrun, failure_message, torchrun_command
from services.trainer.sync import CheckpointSync, RunStore, local_checkpoints


def _checkpoint(root: Path, step: int, best_step: int, best_val: float) -> Path:
    path = root / f"step-{step:08d}"
    (path / "rng").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(bytes([step % 256]) * 1000)
    (path / "rng" / "rank-0.pt").write_bytes(b"rng")
    (path / "trainer_state.json").write_text(
        json.dumps({"step": step, "best_step": best_step, "best_val": best_val})
    )
    return path


def test_sync_commits_prunes_and_restores(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    run = RunStore(store, "job1")
    root = tmp_path / "run" / "checkpoints"
    commits: list[int] = []
    sync = CheckpointSync(
        run, root, keep_last=2, keep_best=True, interval_s=60, on_commit=lambda m: commits.append(m.step)
    )
    (root / ".tmp-step-00000040").mkdir(parents=True)  # being written: never uploaded
    for step in (10, 20, 30):
        _checkpoint(root, step, best_step=10, best_val=1.5)
    assert sync.sync_now() == [10, 20, 30] and commits == [10, 20, 30]
    assert [m.step for m in run.markers()] == [10, 20, 30]  # 10 is the best: kept beyond keep_last
    _checkpoint(root, 40, best_step=40, best_val=1.0)
    assert sync.sync_now() == [40]
    assert [m.step for m in run.markers()] == [30, 40]
    assert not list(store.list(run.checkpoint_prefix(10)))  # files of pruned checkpoints are gone too

    fresh = tmp_path / "other-machine" / "checkpoints"
    (fresh / "step-00000050").mkdir(parents=True)  # an uncommitted local checkpoint: dropped
    marker = run.restore(fresh)
    assert marker is not None and marker.step == 40
    assert [s for s, _ in local_checkpoints(fresh)] == [40]
    assert (fresh / "step-00000040" / "model.safetensors").read_bytes() == bytes([40]) * 1000


def test_files_without_a_marker_do_not_exist_and_corruption_is_caught(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    run = RunStore(store, "job2")
    root = tmp_path / "run"
    run.upload(10, _checkpoint(root, 10, 10, 2.0))
    store.put_bytes(run.checkpoint_prefix(20) + "model.safetensors", b"partial upload, no marker")
    assert run.latest().step == 10
    store.put_bytes(run.checkpoint_prefix(10) + "model.safetensors", b"bit rot")
    with pytest.raises(StoreError, match="corrupt"):
        run.restore(tmp_path / "restore")
    assert not (tmp_path / "restore" / "step-00000010").exists()


def test_failure_message_reports_the_first_failing_rank(tmp_path: Path) -> None:
    dirs = AttemptDirs(tmp_path / "attempt-1")
    errors = dirs.state / "errors"
    errors.mkdir(parents=True)
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\nRuntimeError: boom'
    (errors / "rank-1.json").write_text(
        json.dumps({"rank": 1, "type": "RuntimeError", "message": "boom", "traceback": trace, "time": 1.0})
    )
    (errors / "rank-0.json").write_text(
        json.dumps(
            {"rank": 0, "type": "DistBackendError", "message": "peer closed", "traceback": "", "time": 2.0}
        )
    )
    runner = Torchrun(torchrun_command(dirs, 2), {}, dirs, lambda line, stream: None)
    text = failure_message(runner, RankLogTail(dirs, lambda *a: None), 1, lines=2)
    assert text.splitlines() == [
        "rank 1 failed: RuntimeError: boom",
        '  File "x.py", line 1, in f',
        "RuntimeError: boom",
        "(ranks [0] failed after it)",
    ]


def test_rank_killed_without_a_traceback_is_named_from_torchrun_and_its_log(tmp_path: Path) -> None:
    dirs = AttemptDirs(tmp_path / "attempt-1")
    log = dirs.logs / "run_x" / "attempt_0" / "1" / "stderr.log"
    log.parent.mkdir(parents=True)
    log.write_text("loading\nout of memory\n")
    runner = Torchrun([], {}, dirs, lambda line, stream: None)
    runner.launcher_stderr.extend(
        [
            "Root Cause (first observed failure):",
            "[0]:",
            "  rank      : 1 (local_rank: 1)",
            "  exitcode  : -9 (pid: 7)",
        ]
    )
    tail = RankLogTail(dirs, lambda *a: None)
    tail.poll(final=True)
    assert failure_message(runner, tail, 1, lines=5) == "rank 1 was killed by SIGKILL\nloading\nout of memory"


def test_metric_lines_map_to_named_series() -> None:
    assert metric_values({"event": "resume", "step": 20}) is None
    step, values = metric_values({"step": 5, "loss": 2.0, "lr": 1e-3, "time": 9.0, "note": "x", "flag": True})
    assert step == 5 and values == {"loss": 2.0, "lr": 1e-3}
    step, values = metric_values({"step": 10, "split": "validation", "nll": 3.0, "ppl": 20.0, "tokens": 5})
    assert values == {"val_nll": 3.0, "val_ppl": 20.0}
