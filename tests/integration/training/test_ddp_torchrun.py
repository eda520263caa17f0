"""2-rank DDP under `torchrun --standalone --nproc_per_node=2` (gloo) against one process on the combined batch.

Tolerance: gradients (Adam's first moment after step 1 is (1 - beta1) * grad) agree to rtol 1e-5 / atol
1e-8, losses to rel 1e-6: the only difference is the float32 summation order of gloo's all-reduce. The
validation NLL is summed over both ranks (spec §11 bug 16) and must equal the single-process value over
the same rows to rel 1e-9 (float64 sums).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mmdlm.pipeline import load_pretrained
from mmdlm.training.debug import debug_train_config
from mmdlm.training.metrics import read_metrics
from mmdlm.training.trainer import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _config(dataset: Path, run_dir: Path, batch_size: int) -> dict:
    cfg = debug_train_config(
        "ar",
        dataset,
        run_dir,
        overrides={
            "steps": 2,
            "grad_clip": None,
            "schedule": {"warmup_steps": 0},
            "data": {"batch_size": batch_size, "shuffle": False},
            "checkpoint": {"interval": 1, "keep_last": 5, "keep_best": False},
            "eval": {"interval": 2, "batches": None, "batch_size": 64},
        },
    )
    return cfg.model_dump(mode="json")


def test_two_ranks_match_one_process_on_the_combined_batch(debug_dataset: Path, tmp_path: Path) -> None:
    ddp_cfg = tmp_path / "ddp.yaml"
    ddp_cfg.write_text(yaml.safe_dump(_config(debug_dataset, tmp_path / "ddp", batch_size=4)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "mmdlm.training", "--config", str(ddp_cfg),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    from mmdlm.config.train import TrainConfig

    single = Trainer(TrainConfig.model_validate(_config(debug_dataset, tmp_path / "one", batch_size=8)))
    single.train()

    ddp_state = torch.load(tmp_path / "ddp/checkpoints/step-00000001/optimizer.pt", weights_only=True)
    one_state = torch.load(tmp_path / "one/checkpoints/step-00000001/optimizer.pt", weights_only=True)
    for key, state in one_state["state"].items():
        torch.testing.assert_close(ddp_state["state"][key]["exp_avg"], state["exp_avg"], rtol=1e-5, atol=1e-8)

    ddp_lines = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    one_lines = read_metrics(tmp_path / "one" / "metrics.jsonl")
    for a, b in zip(ddp_lines, one_lines, strict=True):
        assert a["step"] == b["step"] and a.get("split") == b.get("split")
        if a.get("split") == "validation":
            assert a["tokens"] == b["tokens"] and a["sequences"] == b["sequences"]
            assert a["nll"] == pytest.approx(b["nll"], rel=1e-6)
        else:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
            assert a["tokens_seen"] == b["tokens_seen"]

    pipe = load_pretrained(tmp_path / "ddp" / "final")  # rank 0's final save is a loadable model folder
    assert pipe.family == "ar" and pipe.trained is not None and pipe.trained["step"] == 2
