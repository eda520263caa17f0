"""Ancestral sampling driver for the discrete processes (MDLM, GIDD+, HDLM).

    grid   t_0 = 1 - t_eps > t_1 > ... > t_T = 0      (T + 1 points, uniform, top point included)
    step k z <- process.reverse_step(model(z, t_k), z, t_k, t_{k+1})
    final  t_T = 0: every process returns clean text ids there; a clean-up call replaces any id that is
           still not text (only possible if a process misbehaves), so no [MASK] / cluster id survives.

Positions marked `fixed` (a prompt prefix or the known parts of an infilling template) are restored after
every step, so they are never changed. With `cached=True` the network is skipped when z did not change since
its last call and the previous logits are reused: exact for a time-independent denoiser, otherwise the
prediction from the earlier time t' > t is used at t (the approximation of MDLM's `ddpm_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmdlm.diffusion.base import DiscreteProcess, SamplingOptions


@dataclass(frozen=True)
class SampleOutput:
    """Result of a sampling run.

    tokens:    (N, L) int64 on CPU.
    nfe:       number of network calls (a batched call counts once).
    elapsed_s: wall-clock seconds spent sampling.
    steps:     reverse steps per batch (0 for samplers without a step grid, e.g. AR).
    """

    tokens: Tensor
    nfe: int
    elapsed_s: float
    steps: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens.numel() / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def time_grid(steps: int, t_eps: float) -> list[float]:
    """T + 1 times from 1 - t_eps down to exactly 0 (float64 values)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    top = 1.0 - t_eps
    return [top * (steps - k) / steps for k in range(steps + 1)]


class AncestralSampler:
    """T-step ancestral sampler over a process; one `__call__` per batch.

    Args:
        model: denoiser, `model(z (B, L), t (1,)) -> logits (B, L, V_r)`.
        process: the noise process the model was trained with.
        steps: T.
        options: temperature / top-p / min-p / float64.
        cached: reuse the last logits while z is unchanged.
    """

    def __init__(
        self,
        model: nn.Module,
        process: DiscreteProcess,
        steps: int,
        options: SamplingOptions | None = None,
        cached: bool = False,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.model = model
        self.process = process
        self.steps = steps
        self.options = options or SamplingOptions()
        self.cached = cached

    def _call(self, z: Tensor, t: float) -> Tensor:
        # the network is evaluated at t >= t_eps, the range it was trained on
        t_net = torch.full((1,), max(t, self.process.t_eps), dtype=torch.float32, device=z.device)
        return self.model(z, t_net)

    @torch.no_grad()
    def __call__(
        self,
        z_init: Tensor,
        fixed: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, int]:
        """Run the T steps from `z_init` (B, L) (the prior with fixed positions filled in).

        Returns the final tokens (B, L) and the number of network calls.
        """
        z = z_init.clone()
        nfe = 0
        logits: Tensor | None = None
        last_input: Tensor | None = None
        grid = time_grid(self.steps, self.process.t_eps)
        for t, s in zip(grid[:-1], grid[1:], strict=True):
            if not (self.cached and last_input is not None and torch.equal(z, last_input)):
                logits = self._call(z, t)
                last_input = z
                nfe += 1
            assert logits is not None
            z_new = self.process.reverse_step(logits, z, t, s, generator, self.options)
            z = z_new if fixed is None else torch.where(fixed, z_init, z_new)
        z, extra = self.clean_up(z, fixed)
        return z, nfe + extra

    def clean_up(self, z: Tensor, fixed: Tensor | None) -> tuple[Tensor, int]:
        """Replace any non-text id outside `fixed` by the denoiser's argmax at t_eps; returns (z, calls made)."""
        text = self.process.text_mask(z.device)
        bad = ~text[z]
        if fixed is not None:
            bad &= ~fixed
        if not bool(bad.any()):
            return z, 0
        logits = self._call(z, 0.0).float().masked_fill(~text, float("-inf"))
        return torch.where(bad, logits.argmax(dim=-1), z), 1
