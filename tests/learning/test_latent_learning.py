"""After a few minutes of CPU training in `mixture` mode, the MMDiT has learnt both directions:
its t2l latents are closer to the encoder's than the train-mean latent is, and text generated from a
held-out latent re-encodes closer to that latent than unconditional samples do (spec §4 [rec]).

Runs the library demo (`mmdlm.demo_latent.run`) at a smaller size, so `make demo` and this test exercise the
same code. Data: the bundled corpus (an unusual mix; the thresholds are relative to baselines only).

Exactly 200 seeded steps, no wall-clock limit (issue 13.6: a 360 s limit once cut training short on a busy
machine and the l2t margin failed). Spread measured over 5 training/sampling seeds (0-4, one thread, 2026-12-06):
    t2l margin (t2l - mean-latent cosine)    0.054-0.074, mean 0.064, sd 0.007 -> threshold 0.02 is 6 sd below
    l2t margin (round trip - unconditional)  0.036-0.070, mean 0.052, sd 0.014 -> threshold 0.01 is 3 sd below
    win rate (48 rows)                       0.58-0.75,   mean 0.65,  sd 0.07  -> threshold 0.4 is 3.5 sd below
The win-rate bound is a sanity check (0.5 would sit 2 sd below the mean); the learning claims rest on the two
cosine margins.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmdlm.demo_latent import run


@pytest.mark.slow
def test_mmdit_learns_t2l_and_l2t(tmp_path: Path) -> None:
    # exactly 200 seeded steps in fp32: no wall-clock limit may cut training short (issue 13.6)
    result = run(tmp_path / "demo", rows=3072, steps=200, eval_rows=48, threads=2, seed=0)
    assert result["train"]["steps"] == 200, result["summary"]
    t2l, round_trip = result["t2l"], result["round_trip"]
    assert t2l["t2l_mean_cosine"] > t2l["mean_latent_cosine"] + 0.02, result["summary"]
    assert round_trip["l2t_round_trip_cosine"] > round_trip["unconditional_cosine"] + 0.01, result["summary"]
    assert round_trip["win_rate"] > 0.4, result["summary"]
    assert t2l["protocol"]["family"] == "mmdit" and t2l["protocol"]["dataset"]["encoder"]["name"] == "minilm"
