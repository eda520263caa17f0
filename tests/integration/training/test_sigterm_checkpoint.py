"""SIGTERM during training: a checkpoint, then a clean exit, within the grace period.

The very stop path of a train worker (`services.trainer.supervise.Torchrun.stop`: SIGTERM to the guarded
torchrun launcher, which forwards it to every rank) on a real 2-rank torchrun job (gloo, tiny model).
The ranks agree on the step, write a complete checkpoint there and exit 0 before the kill timer; a
second run resumes from that checkpoint."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mmdlm.training import checkpoint as ckpt
from mmdlm.training.debug import debug_train_config
from services.trainer.supervise import AttemptDirs, RankLogTail, Torchrun, torchrun_command

pytestmark = [pytest.mark.slow, pytest.mark.integration]

GRACE_S = 60.0


def _config(dataset: Path, run_dir: Path, steps: int) -> object:
    return debug_train_config(
        "mdlm",
        dataset,
        run_dir,
        overrides={
            "steps": steps,
            "resume": "auto",
            "data": {"batch_size": 4},
            # no periodic checkpoint or validation: the only checkpoint is the one SIGTERM makes
            "checkpoint": {"interval": 100_000, "keep_last": 2, "keep_best": False},
            "eval": {"interval": 100_000, "batches": 1},
            "log": {"interval": 1},
        },
    )


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def _start(attempt: Path, config: object, lines: list[str]) -> tuple[Torchrun, RankLogTail]:
    dirs = AttemptDirs(attempt)
    dirs.root.mkdir(parents=True)
    config.to_file(dirs.config)  # type: ignore[attr-defined]
    run = Torchrun(torchrun_command(dirs, 2), _env(), dirs, lambda line, stream: lines.append(line)).start()
    ranks = RankLogTail(dirs, lambda rank, stream, line: lines.append(f"[rank{rank}] {line}"))
    return run, ranks


def test_sigterm_checkpoints_and_exits_cleanly(debug_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    lines: list[str] = []
    run, ranks = _start(tmp_path / "attempt-1", _config(debug_dataset, run_dir, steps=100_000), lines)
    try:
        deadline = time.monotonic() + 240
        while _steps_logged(run_dir) < 3:  # mid-run: past start-up, steps being taken
            assert run.poll() is None, "\n".join(lines[-60:])
            assert time.monotonic() < deadline, "training did not start\n" + "\n".join(lines[-60:])
            ranks.poll()
            time.sleep(0.2)
        signalled_at = _steps_logged(run_dir)
        start = time.monotonic()
        run.stop(GRACE_S)  # SIGTERM now, SIGKILL after GRACE_S
        code = run.wait(GRACE_S + 30)
        elapsed = time.monotonic() - start
    finally:
        run.kill()
    run.wait_readers()
    ranks.poll(final=True)
    log = "\n".join(lines)
    assert elapsed < GRACE_S, f"took {elapsed:.1f}s: the SIGKILL timer ended it\n{log[-4000:]}"
    print(f"SIGTERM at step {signalled_at}: both ranks checkpointed and exited in {elapsed:.1f}s")

    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None, log[-4000:]
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] >= signalled_at > 0 and state["world_size"] == 2
    for rank in (0, 1):  # complete: every rank's RNG and data position, the weights and optimizer
        loaded = ckpt.read_checkpoint(latest, rank, map_location="cpu")
        assert loaded.rank_state is not None and loaded.model_state and loaded.optimizer_state
    assert not list((run_dir / "checkpoints").glob(".tmp*")), "no half-written checkpoint left"
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert {"event": "sigterm", "step": state["step"]}.items() <= events[-1].items()
    assert code == 128 + 15 and "torchrun stopped by SIGTERM" in log, (code, log[-4000:])
    assert "Traceback" not in log, log[-4000:]
    for rank in (0, 1):
        assert f"[rank{rank}] stopped by SIGTERM at step {state['step']}" in log, log[-4000:]
    assert "forcefully exiting" not in log, "every rank exited on its own"
    assert not list((tmp_path / "attempt-1" / "state").glob("errors/*")), "no rank reported an error"
    assert not (run_dir / "final").exists(), "a stopped run publishes no model"

    # the checkpoint is usable: a new attempt resumes from it and finishes
    lines.clear()
    resumed, ranks = _start(
        tmp_path / "attempt-2", _config(debug_dataset, run_dir, steps=state["step"] + 2), lines
    )
    try:
        assert resumed.wait(240) == 0, "\n".join(lines[-60:])
    finally:
        resumed.kill()
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert any(e["event"] == "resume" and e["step"] == state["step"] for e in events)
    assert (run_dir / "final" / "config.json").is_file()
