"""Noise-process configs for the discrete families: MDLM (absorbing), GIDD+ (mask + uniform), HDLM
(token -> cluster -> [MASK]). Formulas and defaults follow `shared/spec/discrete.md` §2-§3.

Importable without torch: the API validates job specs with these classes.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mmdlm.config.base import StrictModel


class TimeSamplingConfig(StrictModel):
    """How training draws diffusion times t in [t_eps, 1 - t_eps] (spec §2.1)."""

    t_eps: float = Field(1e-4, gt=0.0, lt=0.5)
    """Times are squeezed into [t_eps, 1 - t_eps]; the ELBO integrand is not evaluated at the ends."""
    low_discrepancy: bool = True
    """One uniform offset per batch, t_i = (i/B + u) mod 1 (systematic sampling): lower-variance loss."""


class MDLMProcessConfig(TimeSamplingConfig):
    """Absorbing (masked) diffusion with the log-linear schedule P(z_t = [MASK]) = (1 - eps) t (spec §2.5)."""

    kind: Literal["mdlm"] = "mdlm"
    eps: float = Field(1e-4, ge=0.0, lt=0.5)
    """Log-linear schedule offset: at t = 1 a token survives with probability eps (upstream MDLM: 1e-3)."""


class GIDDProcessConfig(TimeSamplingConfig):
    """GIDD+ hybrid mask + uniform noise, the older parameterisation used by HDLM's code (spec §2.3, §3.3)."""

    kind: Literal["gidd"] = "gidd"
    p_uniform: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of uniformly corrupted tokens around t = 1/2; 0 is (numerically) pure masking."""
    gamma: float = Field(1.0, gt=0.0)
    """Schedule exponent; the spec's configs always use 1."""
    loss_weighting: Literal["dynamic", "clip", "elbo"] = "dynamic"
    """`dynamic`: GIDD+ weights (2 on masks, 1 on uniform noise, ~0 on clean tokens), clipped;
    `clip`: the ELBO weight clipped to [min, max]; `elbo`: the unweighted ELBO."""
    min_loss_weight: float = Field(0.0, ge=0.0)
    max_loss_weight: float = Field(2.0, gt=0.0)

    @model_validator(mode="after")
    def _check_weights(self) -> GIDDProcessConfig:
        if self.min_loss_weight > self.max_loss_weight:
            raise ValueError(
                f"min_loss_weight ({self.min_loss_weight}) must not exceed max_loss_weight ({self.max_loss_weight})"
            )
        return self

    def log_B(self, vocab_size: int) -> float:
        """log of the uniform-noise scale B for a vocabulary of `vocab_size` ids (spec §2.3)."""
        p = max(math.exp(-20.0), self.p_uniform)
        return max(-math.log1p((1.0 - p) / p * vocab_size / 2.0), -20.0)

    def alpha_problem(self, vocab_size: int) -> str | None:
        """Why this schedule is undefined for `vocab_size`, or None when it is fine.

        alpha_t > 0 iff ((1-t)/t)^(g/2) > B, hardest at the largest time t = 1 - t_eps. With a small vocabulary
        or p_uniform near 1, B is large and alpha_t turns negative near t = 1: the marginals stop being a
        distribution and the ELBO integral returns NaN. Torch-free, so the API refuses such a job at submit."""
        B = math.exp(self.log_B(vocab_size))
        t_max = 1.0 - self.t_eps
        ratio = ((1.0 - t_max) / t_max) ** (self.gamma / 2.0)
        if ratio > B * (1.0 + 1e-9):
            return None
        # largest p_uniform that keeps alpha_t > 0 at t_max: B(p) = ratio, solved for p
        p_max = 1.0 / (1.0 + (1.0 / ratio - 1.0) * 2.0 / vocab_size) if ratio < 1.0 else 1.0
        return (
            f"GIDD+ p_uniform={self.p_uniform} with vocabulary size N={vocab_size}, gamma={self.gamma} "
            f"and t_eps={self.t_eps} makes alpha_t <= 0 near t = 1 (B={B:.4g} >= "
            f"((1-t)/t)^(gamma/2)={ratio:.4g} at t = 1 - t_eps), so the ELBO is undefined; "
            f"use p_uniform < {p_max:.4g} (or a larger t_eps)"
        )


class HDLMProcessConfig(TimeSamplingConfig):
    """Hierarchical diffusion token -> cluster -> [MASK] (spec §2.4, §3.4).

    `loss_weighting` replaces the original code's `dynamic`, which was the same rule as `clip` (spec §11 bug 14):
    `clip` clips both exact ELBO weights to [min, max] (for gamma=1 and max=2 both are the constant 2),
    `empirical` uses t^2 - t + 3 (mask term) and 3 - 2t (token term), `elbo` trains on the exact ELBO.
    """

    kind: Literal["hdlm"] = "hdlm"
    gamma: float = Field(1.0, gt=0.0)
    """Rate exponent of the token -> cluster jump: alpha_t = (1 - t)^gamma."""
    xi: float = Field(1.0, gt=0.0, le=1.0)
    """Probability that a token jumps to its own cluster; the rest is spread over the other C - 1 clusters."""
    objective: Literal["strict", "approximate"] = "strict"
    """`strict`: the exact ELBO of the hierarchical chain (for xi = 1 the within-cluster renormalised token
    loss); `approximate`: the spec's "simplified" loss (§3.4.6), which keeps only the true-cluster term.
    Both are equal for xi = 1. The reported `elbo` metric is always the strict one."""
    loss_weighting: Literal["clip", "empirical", "elbo"] = "clip"
    min_loss_weight: float = Field(0.0, ge=0.0)
    max_loss_weight: float = Field(2.0, gt=0.0)
    auxiliary_loss_weight: float = Field(0.0, ge=0.0)
    """Weight of a cross-entropy on a separate cluster head at masked positions (not part of the ELBO).
    The head exists only when this is > 0, so DDP never sees parameters without gradients (spec bug 7)."""

    @field_validator("loss_weighting", mode="before")
    @classmethod
    def _no_dynamic(cls, value: object) -> object:
        if value == "dynamic":
            raise ValueError(
                "HDLM has no 'dynamic' weighting: the original code's 'dynamic' was identical to 'clip' "
                "(spec §11 bug 14); use loss_weighting: clip"
            )
        return value

    @model_validator(mode="after")
    def _check_weights(self) -> HDLMProcessConfig:
        if self.min_loss_weight > self.max_loss_weight:
            raise ValueError(
                f"min_loss_weight ({self.min_loss_weight}) must not exceed max_loss_weight ({self.max_loss_weight})"
            )
        return self
