"""Golden per-step losses of a CPU debug config (STYLE habit 14): a refactor that changes the numerics of a
model, a process or the loop shows up here. Regenerate deliberately with UPDATE_GOLDEN_LOSSES=1.

Tolerance: rtol 2e-3 per step. Runs are bitwise reproducible on one machine; the slack covers other CPUs'
matmul kernels (a different summation order drifts by ~1e-6 per step over these 12 steps).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmdlm.training.debug import debug_train_config, prepare_debug_clusters
from mmdlm.training.metrics import read_metrics
from mmdlm.training.trainer import Trainer

GOLDEN = Path(__file__).parents[2] / "assets" / "losses"
STEPS = 12


@pytest.mark.parametrize("family", ["ar", "mdlm", "gidd", "hdlm"])
def test_losses_match_golden_curve(family: str, debug_dataset: Path, tmp_path: Path) -> None:
    extra = {}
    if family == "hdlm":
        extra["clusters"] = str(prepare_debug_clusters(debug_dataset, debug_dataset.parent / "clusters", 16))
    cfg = debug_train_config(
        family, debug_dataset, tmp_path / "run", overrides={"steps": STEPS, "save_final": False}, **extra
    )
    Trainer(cfg).train()
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "split" not in r]
    assert len(losses) == STEPS
    path = GOLDEN / f"{family}_cpu-nano.txt"
    if os.environ.get("UPDATE_GOLDEN_LOSSES") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# {family}, mmdlm.training.debug.debug_train_config defaults, {STEPS} steps: step loss\n"
        path.write_text(header + "".join(f"{i + 1} {v!r}\n" for i, v in enumerate(losses)))
    golden = [float(line.split()[1]) for line in path.read_text().splitlines() if not line.startswith("#")]
    assert losses == pytest.approx(golden, rel=2e-3)
