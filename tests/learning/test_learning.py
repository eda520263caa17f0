"""Learning tests (slow, run in CI): each family trains on a slice of the bundled corpus for about a minute
and its validation NLL (exact for AR, the ELBO bound for diffusion) falls well below the unigram entropy of
the data, i.e. it learned more than token frequencies.

Setup: BPE-1024 tokenizer, 64-token rows, the `cpu-nano` preset (d=64, 2 blocks), batch 32, lr 3e-3
constant after 50 warm-up steps, fp32, a fixed, seeded number of steps (AR 300, diffusion 1,200: about 15 s
and 60 s on a quiet 2-core machine). There is no wall-clock limit on training (issue 13.6): a busy machine
makes the test slower, never changes what it trains; pytest's 900 s per-test timeout is the only "machine
too slow" guard. Margins below the unigram entropy (5.855 nats), measured with seeds 0-4 for AR and only
the seeds time allowed on a shared machine for diffusion (2026-12-06, one thread, nice 19):
    ar    5 seeds: 1.977-2.007, mean 1.99, sd 0.011   -> asserted 1.0 (~90 sd below)
    mdlm  2 seeds: 1.21, 1.10 (sd ~0.08)               -> asserted 0.5 (~8 sd below)
    gidd  2 seeds: 1.46, 1.16 (sd ~0.21)               -> asserted 0.5 (~4 sd below the mean)
    hdlm  1 seed:  1.19                                -> asserted 0.5 (spread not measured)
The test runs seed 0 only; the other seeds stand for platform/thread-count numerics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mmdlm.data.tokens import TokenDataset
from mmdlm.training.debug import debug_train_config, prepare_debug_clusters
from mmdlm.training.metrics import read_metrics
from mmdlm.training.trainer import Trainer

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

MARGIN = {"ar": 1.0, "mdlm": 0.5, "gidd": 0.5, "hdlm": 0.5}
STEPS = {"ar": 300, "mdlm": 1200, "gidd": 1200, "hdlm": 1200}


def unigram_entropy(dataset: Path) -> float:
    split = TokenDataset.open(dataset, verify=False).split("train")
    ids = split.get_batch(np.arange(len(split)))["input_ids"]
    counts = np.bincount(ids[ids != split.pad_id])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("family", ["ar", "mdlm", "gidd", "hdlm"])
def test_validation_nll_falls_well_below_unigram_entropy(
    family: str, debug_dataset: Path, tmp_path: Path
) -> None:
    extra = {}
    if family == "hdlm":
        extra["clusters"] = str(prepare_debug_clusters(debug_dataset, debug_dataset.parent / "clusters", 16))
    cfg = debug_train_config(
        family,
        debug_dataset,
        tmp_path / "run",
        overrides={
            "steps": STEPS[family],
            "seed": 0,
            "data": {"batch_size": 32},
            "optimizer": {"lr": 3e-3},
            "schedule": {"kind": "constant", "warmup_steps": 50},
            "eval": {"interval": 10**6, "batches": 20, "batch_size": 64},
            "log": {"interval": 25},
            "save_final": False,
        },
        **extra,
    )
    result = Trainer(cfg).train()
    lines = read_metrics(tmp_path / "run" / "metrics.jsonl")
    val = [r for r in lines if r.get("split") == "validation"][-1]
    h = unigram_entropy(debug_dataset)
    message = (
        f"{family}: {result.step}/{STEPS[family]} steps, {result.tokens_seen} tokens, validation NLL {val['nll']:.3f} nats/token "
        f"vs unigram entropy {h:.3f}"
    )
    log.warning(message)
    assert result.step == STEPS[family], message  # trained exactly the fixed schedule
    assert val["nll"] < h - MARGIN[family], message
