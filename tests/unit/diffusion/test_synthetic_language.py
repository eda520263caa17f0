"""Learning check on a synthetic language whose entropy is known exactly.

Sequences of L = 16 letters from an alphabet of K = 8: the first letter is uniform, then each next letter is
the successor (x + 1 mod K) with probability 0.9 and a uniform letter otherwise. The entropy per token is
H = (log K + (L - 1) H_row) / L = 0.5678 nats, against log K = 2.079 for a uniform model.

A cpu-nano model trained for a few hundred AdamW steps must keep its ELBO bound above H (up to Monte-Carlo
error: the bound of any model is >= its NLL >= H) while closing most of the gap from log K, and its samples
must be valid letters that follow the successor rule far more often than chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mmdlm.clusters import Clusters
from mmdlm.config.sample import SampleConfig
from mmdlm.families import get_family

K, L, P_JUMP = 8, 16, 0.9
P_SUCC = P_JUMP + (1 - P_JUMP) / K
H_ROW = -(P_SUCC * math.log(P_SUCC) + (K - 1) * (1 - P_JUMP) / K * math.log((1 - P_JUMP) / K))
H_TOKEN = (math.log(K) + (L - 1) * H_ROW) / L
FIRST_LETTER = 3


@dataclass(frozen=True)
class Vocab:
    vocab_size: int = 12  # [PAD]=0, BOS=1, EOS=2, letters 3..10, [MASK]=11
    pad_id: int = 0
    mask_id: int = 11
    bos_id: int = 1
    eos_id: int = 2


def sample_language(n: int, g: torch.Generator) -> torch.Tensor:
    x = torch.empty(n, L, dtype=torch.long)
    x[:, 0] = torch.randint(0, K, (n,), generator=g)
    for i in range(1, L):
        succ = torch.rand(n, generator=g) < P_JUMP
        x[:, i] = torch.where(succ, (x[:, i - 1] + 1) % K, torch.randint(0, K, (n,), generator=g))
    return x + FIRST_LETTER


def successor_rate(tokens: torch.Tensor) -> float:
    letters = tokens - FIRST_LETTER
    return ((letters[:, 1:] - letters[:, :-1]) % K == 1).double().mean().item()


def test_entropy_constant() -> None:
    assert math.isclose(H_TOKEN, 0.567761, rel_tol=1e-5)
    assert abs(successor_rate(sample_language(4000, torch.Generator().manual_seed(0))) - P_SUCC) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize(("family", "min_successor_rate"), [("mdlm", 0.65), ("gidd", 0.6), ("hdlm", 0.5)])
def test_trained_bound_is_above_entropy_and_approaches_it(
    family: str, min_successor_rate: float, tmp_path
) -> None:
    torch.manual_seed(0)
    spec: dict = {"family": family, "model": {"preset": "cpu-nano", "max_seq_len": L}}
    if family == "hdlm":  # letters in two clusters, specials in a third
        Clusters(np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, -1]), np.zeros((3, 2))).save(
            tmp_path / "clusters"
        )
        spec["clusters"] = str(tmp_path / "clusters")
    fam = get_family(family)
    built = fam.build(spec, Vocab())
    opt = torch.optim.AdamW(built.model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        out = built.objective(built.model, {"input_ids": sample_language(64, g)}, g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    built.model.eval()
    nll, counts = built.objective.nll_bound(built.model, {"input_ids": sample_language(256, g)}, 8, g)
    per_token = (nll / counts).numpy()
    bound, stderr = per_token.mean(), per_token.std() / math.sqrt(len(per_token))
    assert bound > H_TOKEN - 4 * stderr, (bound, stderr)
    assert bound - H_TOKEN < 0.25 * (math.log(K) - H_TOKEN), bound  # most of the gap from uniform is closed
    samples = fam.generate(built, SampleConfig(num_samples=64, seq_len=L, steps=64, seed=0)).tokens
    assert ((samples > 0) & (samples != Vocab.mask_id) & (samples < Vocab.vocab_size)).all()
    assert successor_rate(samples) > min_successor_rate  # chance level is 1/8
