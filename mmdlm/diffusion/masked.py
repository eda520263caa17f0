"""MDLM: absorbing ("masked") diffusion with the log-linear schedule (spec §2.5, §3.2, §5.1).

    move chance  m(t) = (1 - eps) t                 P(z_t = [MASK] | x); each position independently
    q_t(z | x)   = (1 - m(t)) [z = x] + m(t) [z = MASK]
    ELBO         = [z_t = MASK] * w(t) * (-log x̂_x),   w(t) = sigma'(t) / expm1(sigma(t)) = 1 / t
    reverse      z_t = MASK -> MASK w.p. m(s)/m(t), else a token v w.p. x̂_v (m(t) - m(s)) / m(t);
                 unmasked tokens are kept ("carry-over")

The denoiser x̂ is the softmax over text ids only (no [MASK], no [PAD], no cluster or padding slots).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmdlm.config.diffusion import MDLMProcessConfig
from mmdlm.diffusion.base import (
    DiscreteProcess,
    SamplingOptions,
    TokenLoss,
    VocabLayout,
    denoiser_probs,
    sample_categorical,
    uniform,
)
from mmdlm.diffusion.fused import text_log_prob


class MaskedProcess(DiscreteProcess):
    """Absorbing process over the model vocabulary `layout`."""

    name = "mdlm"

    def __init__(self, layout: VocabLayout, config: MDLMProcessConfig | None = None) -> None:
        config = config or MDLMProcessConfig()
        super().__init__(layout, config.t_eps, config.low_discrepancy)
        self.config = config
        self.eps = config.eps

    def move_chance(self, t: Tensor) -> Tensor:
        """P(z_t = [MASK]) = (1 - eps) t; equals 0 at t = 0 (clean) and 1 - eps at t = 1."""
        return (1.0 - self.eps) * t.clamp(0.0, 1.0)

    def weight(self, t: Tensor) -> Tensor:
        """ELBO weight sigma'/expm1(sigma) with sigma = -log(1 - (1 - eps) t), which is exactly 1/t for every t.

        No clamp at eps (spec §3.2's max(t, eps)): below eps it disagreed with the mask probability (1 - eps) t,
        making E_z[elbo] = (1 - eps)(t / eps) CE instead of (1 - eps) CE when t_eps < eps. The 1e-12 floor only
        keeps t = 0 (where nothing is masked) finite."""
        return 1.0 / t.clamp(min=1e-12, max=1.0)

    def marginals(self, x0: Tensor, t: Tensor) -> Tensor:
        mc = self.move_chance(t.double())[:, None, None]  # (B, 1, 1)
        probs = torch.zeros(*x0.shape, self.layout.rows, dtype=torch.float64, device=x0.device)
        probs.scatter_(-1, x0[..., None], 1.0 - mc.expand(*x0.shape, 1))
        probs[..., self.layout.mask_id] += mc[..., 0]
        return probs

    def sample_zt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None) -> Tensor:
        u = uniform(tuple(x0.shape), generator, x0.device)
        masked = u < self.move_chance(t.float())[:, None]
        return torch.where(masked, torch.full_like(x0, self.layout.mask_id), x0)

    def loss(
        self, logits: Tensor, x0: Tensor, zt: Tensor, t: Tensor, cluster_logits: Tensor | None = None
    ) -> TokenLoss:
        """Per-token MDLM ELBO; the training loss is the ELBO itself (no weighting option exists).

        Only masked positions are scored, so only their rows of the vocabulary math are computed (fused,
        float32, no (B, L, V) log-softmax); the others hold 0 and get no gradient."""
        is_mask = zt == self.layout.mask_id
        log_x = text_log_prob(
            logits.reshape(-1, logits.shape[-1]),
            x0.reshape(-1),
            self.text_mask(logits.device),
            is_mask.reshape(-1),
        )
        nll = -log_x.view(x0.shape)  # (B, L); inf only at non-text targets (padding)
        elbo = torch.where(is_mask, self.weight(t.float())[:, None] * nll, torch.zeros_like(nll))
        return TokenLoss(
            loss=elbo, elbo=elbo, metrics={"rec_loss": torch.where(is_mask, nll, torch.zeros_like(nll))}
        )

    def reverse_step(
        self,
        logits: Tensor,
        zt: Tensor,
        t: float,
        s: float,
        generator: torch.Generator | None,
        options: SamplingOptions | None = None,
    ) -> Tensor:
        """Exact ancestral step (spec §5.1), drawn in two stages: first which masked positions reveal a token
        (probability (m(t) - m(s)) / m(t), 1 at s = 0), then the token from x̂ for those positions only.
        Temperature / top-p / min-p shape x̂; the reveal probability is the schedule's and is left alone."""
        options = options or SamplingOptions()
        mc_t = self.move_chance(torch.tensor(t, dtype=torch.float64)).item()
        mc_s = self.move_chance(torch.tensor(s, dtype=torch.float64)).item()
        p_reveal = 1.0 if mc_t <= 0 else (mc_t - mc_s) / mc_t
        is_mask = zt == self.layout.mask_id
        u = uniform(tuple(zt.shape), generator, zt.device, options.dtype)
        reveal = is_mask & (u < p_reveal)
        if not bool(reveal.any()):
            return zt
        probs = denoiser_probs(logits[reveal], self.text_mask(logits.device), options)  # (n, V_r)
        zs = zt.clone()
        zs[reveal] = sample_categorical(probs, generator)
        return zs

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "eps": self.eps}
