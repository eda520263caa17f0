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
from mmdlm.diffusion.fused import gidd_row_terms, text_logsumexp


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
        """GIDD ELBO per token. The loss needs only four numbers per position: log x̂ at x and at z_t, the
        normaliser, and S = sum_v log1p(alpha x̂_v / bp_other); `gidd_row_terms` computes them in one fused,
        row-chunked pass (no (B, L, V) log q_t(. | x̂) tensor). The per-position algebra runs in float64."""
        N, m = self.N, self.layout.mask_id
        sched = self.schedule(t[:, None])  # (B, 1) float64
        w = self.weights(t[:, None])
        alpha, bp_m, bp_o = sched["alpha"], sched["bp_mask"], sched["bp_other"]  # (B, 1) float64
        log_alpha, log_bp_m, log_bp_o = alpha.log(), bp_m.log(), bp_o.log()
        shape = x0.shape
        k = (alpha / bp_o).expand(shape).reshape(-1).float()
        log_x_x, log_x_z, s_sum = gidd_row_terms(
            logits.reshape(-1, logits.shape[-1]),
            x0.reshape(-1),
            zt.clamp(max=N - 1).reshape(-1),
            k,
            self.text_mask(logits.device),
        )
        log_x_x, log_x_z, s_sum = (v.view(shape).double() for v in (log_x_x, log_x_z, s_sum))

        is_xm = x0 == m
        bp_x = torch.where(is_xm, bp_m, bp_o)  # bp_t(x), (B, L)
        q_x = alpha + bp_x
        # sum_z q log q, analytically: the x entry, then the mask column and the N - 2 other columns
        n_other = (N - 1) - (~is_xm).double()  # non-mask columns other than x
        q_log_q = q_x * q_x.log() + torch.where(is_xm, 0.0, bp_m * log_bp_m) + n_other * bp_o * log_bp_o
        # sum_z q log p = sum_z bp(z) log p(z) + alpha log p(x), log p(z) = log(alpha x̂_z + bp(z)); x̂ is 0 at
        # [MASK], and sum_{z != m} log p(z) = (N - 1) log bp_other + S
        log_p_x = torch.logaddexp(log_alpha + log_x_x, bp_x.log())
        q_log_p = bp_o * ((N - 1) * log_bp_o + s_sum) + bp_m * log_bp_m + alpha * log_p_x
        kl = (q_log_q - q_log_p).clamp(min=0.0)

        at_x = zt == x0
        at_m = zt == m
        bp_z = torch.where(at_m, bp_m, bp_o)
        log_q_z = torch.log(torch.where(at_x, alpha + bp_z, bp_z))
        r = log_q_z - torch.logaddexp(log_alpha + log_x_z, bp_z.log())
        corr = torch.expm1(r) - r
        omega = torch.where(at_m, w["omega_mask"], w["omega_other"])
        elbo_w = omega / torch.exp(log_q_z)
        loss_w = self._loss_weight(elbo_w, at_x, at_m, alpha)
        kl, r, corr, elbo_w, loss_w = (v.float() for v in (kl, r, corr, elbo_w, loss_w))
        return TokenLoss(
            loss=loss_w * (kl + corr),
            elbo=elbo_w * (kl + corr),
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

    def _step_coefficients(self, t: float, s: float) -> dict[str, float]:
        """Scalars of the posterior q(z_s | z_t, x̂) (see `posterior`): alpha_{t|s}, bp_{t|s} at [MASK] and at
        other ids, and alpha_s, bp_s at [MASK] and at other ids."""
        st = self.schedule(torch.tensor([[t]], dtype=torch.float64))
        ss = self.schedule(torch.tensor([[s]], dtype=torch.float64))
        a_ts = (st["alpha"] / ss["alpha"]).item()
        a_s, bpm_s, bpo_s = (ss[k].item() for k in ("alpha", "bp_mask", "bp_other"))
        return {
            "a_ts": a_ts,
            "bp_ts_mask": max(st["bp_mask"].item() - a_ts * bpm_s, 0.0),
            "bp_ts_other": max(st["bp_other"].item() - a_ts * bpo_s, 0.0),
            "a_s": a_s,
            "bp_s_mask": bpm_s,
            "bp_s_other": bpo_s,
        }

    def _posterior_weights(self, x_hat: Tensor, zt: Tensor, t: float, s: float) -> Tensor:
        """Unnormalised q(z_s | z_t, x̂) over the first N ids, (B, L, N) in x_hat's dtype (see `posterior`)."""
        N, m, dtype = self.N, self.layout.mask_id, x_hat.dtype
        co = self._step_coefficients(t, s)
        a_ts, a_s, bpm_s, bpo_s = co["a_ts"], co["a_s"], co["bp_s_mask"], co["bp_s_other"]
        is_m = zt == m
        lik_values = torch.tensor([co["bp_ts_other"], co["bp_ts_mask"]], dtype=dtype, device=zt.device)
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

        The dense reference of `reverse_step`, which draws from the same distribution without building it.
        """
        post = self._posterior_weights(x_hat, zt, t, s)
        return post / post.sum(dim=-1, keepdim=True)

    def _x_hat_at(self, logits: Tensor, ids: Tensor, options: SamplingOptions) -> Tensor:
        """x̂ at one id per row: logits (n, V_r), ids (n,) -> (n,) in options.dtype (equal to
        `denoiser_probs(logits, text, options).gather(-1, ids)` up to rounding). Plain temperature sampling
        needs only the row's log-normaliser; top-p / min-p / greedy build the truncated rows."""
        text = self.text_mask(logits.device)
        if options.temperature == 0 or options.top_p < 1 or options.min_p > 0:
            return denoiser_probs(logits, text, options).gather(-1, ids[:, None]).squeeze(-1)
        scale = 1.0 / options.temperature
        lse = text_logsumexp(logits if scale == 1.0 else logits.float() * scale, text)
        at = logits.gather(-1, ids[:, None]).squeeze(-1).float() * scale
        return torch.exp(at.to(options.dtype) - lse.to(options.dtype))

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
        grid ending at 0 returns clean text (the original's last step was an identity, spec §11 bug 12).

        The posterior (see `posterior`) is a four-component mixture, so it is sampled without building it:
            from x̂       mass bp_{t|s}(z_t) a_s                      draw v ~ x̂
            [MASK]       mass bp_{t|s}(z_t) bp_s(m)                  z_s = m
            uniform      mass bp_{t|s}(z_t) (N - 1) bp_s(other)      v uniform over the N - 1 non-mask ids
            stay         mass a_{t|s} (a_s x̂_{z_t} + bp_s(z_t))      z_s = z_t
        Only x̂ at z_t is needed for every position (for text z_t only; x̂ is 0 at [MASK]); full-vocabulary
        work is done on the positions that draw from x̂. Weights and draws are in options.dtype."""
        options = options or SamplingOptions()
        N, m, dtype = self.N, self.layout.mask_id, options.dtype
        co = self._step_coefficients(t, s)
        text = self.text_mask(logits.device)
        is_m = zt == m
        shape = tuple(zt.shape)
        has_text = text[zt]
        if float(has_text.float().mean()) > 0.5:  # most rows: every row, without copying the selected ones
            flat = logits.reshape(-1, logits.shape[-1])
            x_at_z = self._x_hat_at(flat, zt.reshape(-1), options).view(shape)
            x_at_z = torch.where(has_text, x_at_z, 0.0)
        else:
            x_at_z = torch.zeros(shape, dtype=dtype, device=zt.device)
            if bool(has_text.any()):
                x_at_z[has_text] = self._x_hat_at(logits[has_text], zt[has_text], options)
        lik = torch.where(is_m, co["bp_ts_mask"], co["bp_ts_other"]).to(dtype)  # bp_{t|s}(z_t)
        bp_s_z = torch.where(is_m, co["bp_s_mask"], co["bp_s_other"]).to(dtype)
        w_x = lik * co["a_s"]
        w_m = lik * co["bp_s_mask"]
        w_u = lik * ((N - 1) * co["bp_s_other"])
        w_stay = co["a_ts"] * (co["a_s"] * x_at_z + bp_s_z)
        total = w_x + w_m + w_u + w_stay
        if bool((total <= 0).any()) or not bool(torch.isfinite(total).all()):
            raise ValueError("GIDD reverse step: every position needs a positive, finite posterior mass")
        u = uniform(shape, generator, zt.device, dtype) * total
        from_x = u < w_x
        to_mask = ~from_x & (u < w_x + w_m)
        to_uniform = ~from_x & ~to_mask & (u < w_x + w_m + w_u)
        k = (uniform(shape, generator, zt.device, torch.float64) * (N - 1)).long().clamp(max=N - 2)
        zs = torch.where(to_uniform, k + (k >= m).long(), zt)  # uniform over the N - 1 non-mask ids
        zs = torch.where(to_mask, torch.full_like(zt, m), zs)
        if bool(from_x.any()):
            probs = denoiser_probs(logits[from_x], text, options)  # (n, V_r)
            zs[from_x] = sample_categorical(probs, generator)
        return zs

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "p_uniform": self.config.p_uniform, "gamma": self.gamma}
