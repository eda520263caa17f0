"""GIDD+: hybrid mask + uniform noise, in the older parameterisation HDLM's code uses (spec §2.3, §3.3, §5.2).

With N = V (tokenizer ids incl. specials), m = [MASK] and gamma (1 in all configs):

    c_t      = B (t^g (1-t)^g)^(1/2)                      B from p_uniform: log B = max(-log1p((1-p)/p N/2), -20)
    C_t      = max(t^g + (1-t)^g + (N-2) c_t, 1e-4)
    alpha_t  = ((1-t)^g - c_t) / C_t
    bp_t(z)  = (t^g [z = m] + c_t [z != m]) / C_t       for z < N
    q_t(z|x) = alpha_t [z = x] + bp_t(z)

ELBO per token (GIDD, equal in expectation to the spec's form with "+ alpha_ratio", and non-negative):
    elbo = w(z_t) (KL(q_t(.|x) || q_t(.|x̂)) + e^r - r - 1),   r = log q_t(z_t|x) - log q_t(z_t|x̂)
    w(z) = omega_t(z) / q_t(z|x),  omega_t(z) = (bp'_hat(z) - (a'_hat/a_hat) bp_hat(z)) / C_t
with the derivative of (1-t)^g taken as -g (1-t)^(g-1) (the original dropped the factor g, spec §11 bug 10).

Reverse step: the exact posterior q(z_s | z_t, x̂) from the Markov composition q_t = q_{t|s} q_s; any token
may change at any step (the uniform component makes GIDD self-correcting). At s = 0 the step draws from x̂.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmdlm.config.diffusion import GIDDProcessConfig
from mmdlm.diffusion.base import (
    DiscreteProcess,
    SamplingOptions,
    TokenLoss,
    VocabLayout,
    denoiser_probs,
    sample_categorical,
    uniform,
)


class GIDDProcess(DiscreteProcess):
    """Hybrid mask/uniform process over the first N = V ids of `layout`."""

    name = "gidd"

    def __init__(self, layout: VocabLayout, config: GIDDProcessConfig | None = None) -> None:
        config = config or GIDDProcessConfig()
        super().__init__(layout, config.t_eps, config.low_discrepancy)
        self.config = config
        self.N = layout.vocab_size
        self.gamma = config.gamma
        self.p_uniform = max(math.exp(-20.0), config.p_uniform)
        self.log_B = config.log_B(self.N)
        self.B = math.exp(self.log_B)
        problem = config.alpha_problem(self.N)
        if problem is not None:
            raise ValueError(problem)

    # ----- schedule (float64, t of shape (B, 1)) -----

    def schedule(self, t: Tensor) -> dict[str, Tensor]:
        """c, C, alpha and the two bp values (mask column, every other column), each (B, 1) float64."""
        t = t.double()
        g = self.gamma
        tg, sg = t**g, (1.0 - t) ** g
        c = self.B * (tg * sg).sqrt()
        C = (tg + sg + (self.N - 2) * c).clamp(min=1e-4)
        return {"c": c, "C": C, "alpha": (sg - c) / C, "bp_mask": tg / C, "bp_other": c / C}

    def weights(self, t: Tensor) -> dict[str, Tensor]:
        """alpha_ratio = d/dt log alpha_t and omega_t for the mask column and the other columns (B, 1)."""
        t = t.double()
        g = self.gamma
        tg, sg = t**g, (1.0 - t) ** g
        c = self.B * (tg * sg).sqrt()
        C = (tg + sg + (self.N - 2) * c).clamp(min=1e-4)
        dc = (g / 2.0) * (1.0 - 2.0 * t) / (t * (1.0 - t)) * c
        d_sg = -g * (1.0 - t) ** (g - 1.0)
        d_tg = g * t ** (g - 1.0)
        dC = d_tg + d_sg + (self.N - 2) * dc
        a_hat, da_hat = sg - c, d_sg - dc
        alpha_ratio = da_hat / a_hat - dC / C
        omega_mask = (d_tg - da_hat / a_hat * tg) / C
        omega_other = (dc - da_hat / a_hat * c) / C
        return {"alpha_ratio": alpha_ratio, "omega_mask": omega_mask, "omega_other": omega_other}

    def _bp_vector(self, sched: dict[str, Tensor], width: int) -> Tensor:
        """bp_t over `width` columns (B, 1, width): bp_other below N, bp_mask at m, 0 from N on."""
        B = sched["c"].shape[0]
        bp = sched["bp_other"].expand(B, width).clone()
        bp[:, self.N :] = 0.0
        bp[:, self.layout.mask_id] = sched["bp_mask"][:, 0]
        return bp[:, None, :]

    # ----- forward process -----

    def marginals(self, x0: Tensor, t: Tensor) -> Tensor:
        sched = self.schedule(t[:, None])
        probs = self._bp_vector(sched, self.layout.rows).expand(*x0.shape, self.layout.rows).clone()
        probs.scatter_add_(-1, x0[..., None], sched["alpha"][:, :, None].expand(*x0.shape, 1))
        return probs

    def sample_zt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None) -> Tensor:
        """Three-way draw: keep x (alpha), [MASK] (bp_mask), else a uniform non-mask id (which may be x)."""
        sched = self.schedule(t[:, None])
        u = uniform(tuple(x0.shape), generator, x0.device, torch.float64)
        k = (
            (uniform(tuple(x0.shape), generator, x0.device, torch.float64) * (self.N - 1))
            .long()
            .clamp(max=self.N - 2)
        )
        noise = k + (k >= self.layout.mask_id).long()  # uniform over the N - 1 non-mask ids
        keep = u < sched["alpha"]
        to_mask = u < sched["alpha"] + sched["bp_mask"]
        mask = torch.full_like(x0, self.layout.mask_id)
        return torch.where(keep, x0, torch.where(to_mask, mask, noise))

    # ----- loss -----

    def loss(
        self, logits: Tensor, x0: Tensor, zt: Tensor, t: Tensor, cluster_logits: Tensor | None = None
    ) -> TokenLoss:
        N, m = self.N, self.layout.mask_id
        sched = self.schedule(t[:, None])  # (B, 1) float64
        w = self.weights(t[:, None])
        log_x = torch.log_softmax(
            logits.float().masked_fill(~self.text_mask(logits.device), float("-inf")), dim=-1
        )[..., :N]
        log_bp = torch.log(self._bp_vector(sched, N)).float()  # (B, 1, N)
        log_alpha = torch.log(sched["alpha"]).float()[:, :, None]  # (B, 1, 1)
        log_p = torch.logaddexp(log_alpha + log_x, log_bp)  # log q_t(z | x̂), (B, L, N)

        alpha, bp_m, bp_o = (sched[k].float() for k in ("alpha", "bp_mask", "bp_other"))  # (B, 1)
        is_xm = x0 == m
        bp_x = torch.where(is_xm, bp_m, bp_o)  # bp_t(x), (B, L)
        q_x = alpha + bp_x
        # sum_z q log q, analytically: the x entry, then the mask column and the N - 2 other columns
        n_other = (N - 1) - (~is_xm).float()  # non-mask columns other than x
        q_log_q = q_x * q_x.log() + torch.where(is_xm, 0.0, bp_m * bp_m.log()) + n_other * bp_o * bp_o.log()
        # sum_z q log p = sum_z bp(z) log p(z) + alpha log p(x)
        log_p_x = log_p.gather(-1, x0[..., None]).squeeze(-1)
        log_p_mask = log_p[..., m]
        q_log_p = bp_o * (log_p.sum(-1) - log_p_mask) + bp_m * log_p_mask + alpha * log_p_x
        kl = (q_log_q - q_log_p).clamp(min=0.0)

        at_x = zt == x0
        at_m = zt == m
        bp_z = torch.where(at_m, bp_m, bp_o)
        log_q_z = torch.log(torch.where(at_x, alpha + bp_z, bp_z))
        r = log_q_z - log_p.gather(-1, zt.clamp(max=N - 1)[..., None]).squeeze(-1)
        corr = torch.expm1(r) - r
        omega = torch.where(at_m, w["omega_mask"].float(), w["omega_other"].float())
        elbo_w = omega / torch.exp(log_q_z)
        elbo = elbo_w * (kl + corr)
        loss_w = self._loss_weight(elbo_w, at_x, at_m, alpha)
        return TokenLoss(
            loss=loss_w * (kl + corr),
            elbo=elbo,
            metrics={"kl_loss": loss_w * kl, "log_ratio": loss_w * r, "ratio_corr": loss_w * corr},
        )

    def _loss_weight(self, elbo_w: Tensor, at_x: Tensor, at_m: Tensor, alpha: Tensor) -> Tensor:
        cfg = self.config
        if cfg.loss_weighting == "elbo":
            return elbo_w
        if cfg.loss_weighting == "clip":
            return elbo_w.clamp(cfg.min_loss_weight, cfg.max_loss_weight)
        # dynamic (GIDD+): 2 on masks, 1 on uniform noise, B (neg. log-SNR)^(g/2)-scaled on clean tokens
        neg_log_snr = torch.log((1.0 - alpha) / alpha).clamp(-20.0, 20.0)
        x_scale = self.B * torch.exp(self.gamma / 2.0 * neg_log_snr)
        w = torch.where(at_m, 2.0, torch.where(at_x, x_scale.expand_as(elbo_w), 1.0))
        return w.clamp(cfg.min_loss_weight, cfg.max_loss_weight)

    # ----- reverse step -----

    def _posterior_weights(self, x_hat: Tensor, zt: Tensor, t: float, s: float) -> Tensor:
        """Unnormalised q(z_s | z_t, x̂) over the first N ids, (B, L, N) in x_hat's dtype (see `posterior`)."""
        N, m, dtype = self.N, self.layout.mask_id, x_hat.dtype
        st = self.schedule(torch.tensor([[t]], dtype=torch.float64))
        ss = self.schedule(torch.tensor([[s]], dtype=torch.float64))
        a_ts = (st["alpha"] / ss["alpha"]).item()
        a_s, bpm_s, bpo_s = (ss[k].item() for k in ("alpha", "bp_mask", "bp_other"))
        bp_ts_mask = max(st["bp_mask"].item() - a_ts * bpm_s, 0.0)
        bp_ts_other = max(st["bp_other"].item() - a_ts * bpo_s, 0.0)
        is_m = zt == m
        lik_values = torch.tensor([bp_ts_other, bp_ts_mask], dtype=dtype, device=zt.device)
        lik = lik_values[is_m.long()][..., None]  # bp_{t|s}(z_t), (B, L, 1)
        x = x_hat[..., :N]
        # lik * q_s(v), q_s(v) = a_s x̂_v + bp_s(v), built in place on one (B, L, N) buffer
        post = x * (lik * a_s)
        post += lik * bpo_s
        post[..., m] += lik[..., 0] * (bpm_s - bpo_s)
        bp_s_zt = torch.tensor([bpo_s, bpm_s], dtype=dtype, device=zt.device)[is_m.long()]
        q_s_zt = a_s * x.gather(-1, zt[..., None]).squeeze(-1) + bp_s_zt
        post.scatter_add_(-1, zt[..., None], (a_ts * q_s_zt)[..., None])
        return post

    def posterior(self, x_hat: Tensor, zt: Tensor, t: float, s: float) -> Tensor:
        """q(z_s | z_t, x̂) over the first N ids: (B, L, N) in x_hat's dtype, rows sum to 1.

        q(z_s = v | z_t) ∝ (alpha_{t|s} [v = z_t] + bp_{t|s}(z_t)) q_s(v | x̂),
        alpha_{t|s} = alpha_t / alpha_s,  bp_{t|s} = bp_t - alpha_{t|s} bp_s.
        """
        post = self._posterior_weights(x_hat, zt, t, s)
        return post / post.sum(dim=-1, keepdim=True)

    def reverse_step(
        self,
        logits: Tensor,
        zt: Tensor,
        t: float,
        s: float,
        generator: torch.Generator | None,
        options: SamplingOptions | None = None,
    ) -> Tensor:
        """Draw z_s from the exact posterior (spec §5.2); at s = 0 that is x̂ itself, so the last step of a
        grid ending at 0 returns clean text (the original's last step was an identity, spec §11 bug 12)."""
        options = options or SamplingOptions()
        x_hat = denoiser_probs(logits, self.text_mask(logits.device), options)
        return sample_categorical(self._posterior_weights(x_hat, zt, t, s), generator)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "p_uniform": self.config.p_uniform, "gamma": self.gamma}
