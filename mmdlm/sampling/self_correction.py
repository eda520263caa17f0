"""Self-correction of finished samples at a fixed small time (GIDD, spec §5.6), batched.

Each iteration, for every still-active row: x̂ = softmax(logits(z, t0) / temperature) over text ids, draw
z̃ ~ x̂ per position, score the positions where z̃ differs from z by x̂(z̃), and write z̃ into the
`tokens_per_step` best-scored positions. A row stops when nothing changes (converged) or when the agreement
of z with the denoiser's argmax has not improved for more than `patience` iterations (that last proposal is
not applied). Fixed positions (prompt / infill template) are never proposed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmdlm.diffusion.base import DiscreteProcess, SamplingOptions, denoiser_probs, sample_categorical


@dataclass(frozen=True)
class SelfCorrectionResult:
    tokens: Tensor  # (B, L)
    nfe: int
    changes: Tensor  # (B,) positions rewritten per row
    initial_agreement: Tensor  # (B,) mean(z == argmax x̂) before
    final_agreement: Tensor  # (B,) best agreement reached
    converged: Tensor  # (B,) bool


@torch.no_grad()
def self_correct(
    model: nn.Module,
    process: DiscreteProcess,
    z: Tensor,
    *,
    steps: int,
    t0: float = 0.01,
    temperature: float = 0.1,
    tokens_per_step: int = 1,
    patience: int = 32,
    fixed: Tensor | None = None,
    generator: torch.Generator | None = None,
    float64: bool = True,
) -> SelfCorrectionResult:
    """Run up to `steps` self-correction iterations on clean samples z (B, L)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    B, L = z.shape
    text = process.text_mask(z.device)
    options = SamplingOptions(temperature=temperature, float64=float64)
    editable = torch.ones_like(z, dtype=torch.bool) if fixed is None else ~fixed
    t = torch.full((1,), t0, dtype=torch.float32, device=z.device)
    z = z.clone()

    def agreement(tokens: Tensor, logits: Tensor) -> Tensor:
        pred = logits.float().masked_fill(~text, float("-inf")).argmax(dim=-1)
        return (tokens == pred).double().mean(dim=-1)

    logits = model(z, t)
    nfe = 1
    best = agreement(z, logits)
    initial = best.clone()
    stale = torch.zeros(B, dtype=torch.long, device=z.device)
    active = torch.ones(B, dtype=torch.bool, device=z.device)
    converged = torch.zeros(B, dtype=torch.bool, device=z.device)
    changes = torch.zeros(B, dtype=torch.long, device=z.device)
    k = min(tokens_per_step, L)
    for it in range(steps):
        if it > 0:
            logits = model(z, t)
            nfe += 1
        probs = denoiser_probs(logits, text, options)  # (B, L, V_r)
        proposal = sample_categorical(probs, generator)  # (B, L)
        score = probs.gather(-1, proposal[..., None]).squeeze(-1)
        score = torch.where((proposal != z) & editable, score, torch.zeros_like(score))
        top_score, top_pos = score.topk(k, dim=-1)
        write = torch.zeros_like(editable).scatter_(-1, top_pos, top_score > 0)
        z_new = torch.where(write, proposal, z)
        acc = agreement(z_new, logits)
        improved = acc > best
        best = torch.where(improved & active, acc, best)
        stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
        out_of_patience = stale > patience
        unchanged = ~write.any(dim=-1)
        apply = active & ~out_of_patience & ~unchanged
        z = torch.where(apply[:, None], z_new, z)
        changes += torch.where(apply, write.sum(dim=-1), torch.zeros_like(changes))
        converged |= active & unchanged
        active &= ~out_of_patience & ~unchanged
        if not bool(active.any()):
            break
    return SelfCorrectionResult(z, nfe, changes, initial, best, converged)
