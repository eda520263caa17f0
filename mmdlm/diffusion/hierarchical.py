"""HDLM: hierarchical discrete diffusion token -> cluster -> [MASK] (arXiv 2510.08632; spec §2.4, §3.4, §5.3).

A two-jump chain per position: the token jumps to a cluster at rate g/(1-t) (to its own cluster c(x) with
probability xi, otherwise uniformly to one of the other C-1), the cluster jumps to [MASK] at rate 1/(1-t):

    alpha_t = (1-t)^g
    g = 1:   c_t = -(1-t) log(1-t),                    m_t = t + (1-t) log(1-t)
    g != 1:  c_t = g (1-t) (1 - (1-t)^(g-1)) / (g-1),  m_t = 1 - alpha_t - c_t
    m'_t = c_t / (1-t),  -alpha'_t = g (1-t)^(g-1)
    q_t(z | x) = alpha_t [z = x] + c_t K(z | x) + m_t [z = MASK],  K(c | x) = xi [c = c(x)] + (1-xi)/(C-1) [c != c(x)]

Everything is computed in float64 with log1p / a series for m_t at small t (spec §11 bug 21), the
perturbation uses (1-xi)/(C-1) so K sums to one (bug 9), and the ELBO weights are exact, without clips (bug 11).

Exact ELBO per token (continuous time, the denoiser x̂ over text ids; P_c = sum of x̂ over cluster c;
K_theta(c) = sum_v x̂_v K(c | v) = xi P_c + (1-xi)/(C-1) (1 - P_c)):
    z_t = MASK:     (m'_t / m_t)   KL( K(. | x) || K_theta )                   (= -log P_c(x) for xi = 1)
    z_t = cluster:  (-alpha'_t / c_t) (-log p_theta(x | z_t)),  p_theta(v | c) = x̂_v K(c | v) / K_theta(c)
                                                                               (= -log x̂_x / P_c(x) for xi = 1)
Cluster sums are float32 log-sum-exps over token logits: no (positions x V) membership tensor (bug 25) and no
bf16 rounding (bug 20). For xi = 1 a position needs one cluster's mass only, computed fused row by row
(`mmdlm.diffusion.fused.cluster_row_terms`, issue 12); xi < 1 uses a segment logsumexp over all C clusters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmdlm.config.diffusion import HDLMProcessConfig
from mmdlm.diffusion.base import (
    DiscreteProcess,
    SamplingOptions,
    TokenLoss,
    VocabLayout,
    denoiser_probs,
    sample_categorical,
    uniform,
)
from mmdlm.diffusion.fused import cluster_members, cluster_row_terms


def segment_logsumexp(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """log sum_{j: segment[j] = k} exp(values[..., j]) for each k: (..., n) -> (..., num_segments).

    Exact (per-segment max subtracted); empty or all -inf segments give -inf.
    """
    shape = values.shape[:-1] + (num_segments,)
    index = segment.expand_as(values)
    peak = torch.full(shape, float("-inf"), dtype=values.dtype, device=values.device)
    peak = peak.scatter_reduce(-1, index, values, reduce="amax", include_self=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak)).detach()
    summed = torch.zeros(shape, dtype=values.dtype, device=values.device)
    summed = summed.scatter_add(-1, index, torch.exp(values - peak.gather(-1, index)))
    return torch.log(summed) + peak


class HierarchicalProcess(DiscreteProcess):
    """Hierarchical process over `layout` (layout.num_clusters = C clusters at ids [V, V + C)).

    Args:
        cluster_map: (V,) int64 local cluster id of every tokenizer id; -1 only for ids that never occur as
            data ([MASK]).
    """

    name = "hdlm"

    def __init__(self, layout: VocabLayout, config: HDLMProcessConfig, cluster_map: Tensor) -> None:
        super().__init__(layout, config.t_eps, config.low_discrepancy)
        C = layout.num_clusters
        if C < 1:
            raise ValueError("HDLM needs a layout with num_clusters >= 1")
        if config.xi < 1 and C < 2:
            raise ValueError(f"xi={config.xi} < 1 spreads tokens over other clusters; it needs >= 2 clusters")
        cluster_map = torch.as_tensor(cluster_map, dtype=torch.long)
        if cluster_map.shape != (layout.vocab_size,):
            raise ValueError(
                f"cluster_map has shape {tuple(cluster_map.shape)}, expected ({layout.vocab_size},)"
            )
        missing = torch.nonzero((cluster_map < 0) & layout.text_mask()[: layout.vocab_size]).flatten()
        if missing.numel():
            raise ValueError(f"token ids {missing[:10].tolist()} can be emitted as text but have no cluster")
        if int(cluster_map.max()) >= C:
            raise ValueError(f"cluster_map holds ids >= num_clusters={C}")
        self.config = config
        self.gamma = config.gamma
        self.xi = config.xi
        self.C = C
        self.off = (1.0 - config.xi) / (C - 1) if C > 1 else 0.0  # K(c | x) for c != c(x)
        # (V_r,) local cluster of every model id; ids without one ([MASK], clusters, padding) map to 0. They
        # are never scored: x̂ puts no mass on them and they are never data.
        full = torch.zeros(layout.rows, dtype=torch.long)
        full[: layout.vocab_size] = cluster_map.clamp(min=0)
        self._token_cluster = full
        self.uses_cluster_logits = config.auxiliary_loss_weight > 0

    def _constant(self, name: str) -> Tensor:
        if name == "token_cluster":
            return self._token_cluster
        if name in ("cluster_members", "cluster_member_pad"):
            members = cluster_members(self._token_cluster, self.layout.text_mask(), self.C)
            return members[0] if name == "cluster_members" else members[1]
        return super()._constant(name)

    # ----- schedule -----

    def schedule(self, t: Tensor) -> dict[str, Tensor]:
        """alpha, c, m, m' (dm) and -alpha' (dalpha) at t, float64, same shape as t."""
        t = t.double().clamp(0.0, 1.0 - 1e-15)
        g = self.gamma
        log1m = torch.log1p(-t)  # log(1 - t)
        alpha = torch.exp(g * log1m)
        if abs(g - 1.0) < 1e-9:
            c = -(1.0 - t) * log1m
            # m_t = sum_{k>=2} t^k / (k (k-1)) avoids the cancellation of t + (1-t) log(1-t) near 0
            series = sum(t**k / (k * (k - 1)) for k in range(2, 24))
            m = torch.where(t < 0.05, series, t + (1.0 - t) * log1m)
            dm = -log1m
        else:
            frac = -torch.expm1((g - 1.0) * log1m) / (g - 1.0)  # (1 - (1-t)^(g-1)) / (g-1)
            c = g * (1.0 - t) * frac
            m = 1.0 - alpha - c
            dm = g * frac
        dalpha = g * torch.exp((g - 1.0) * log1m)
        return {"alpha": alpha, "c": c, "m": m, "dm": dm, "dalpha": dalpha}

    def elbo_weights(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Exact weights w_mask = m'_t / m_t and w_clus = -alpha'_t / c_t (float64)."""
        s = self.schedule(t)
        return s["dm"] / s["m"], s["dalpha"] / s["c"]

    def loss_weights(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Training weights for the mask and cluster terms under the configured `loss_weighting`."""
        w_mask, w_clus = self.elbo_weights(t)
        cfg = self.config
        if cfg.loss_weighting == "clip":
            return w_mask.clamp(cfg.min_loss_weight, cfg.max_loss_weight), w_clus.clamp(
                cfg.min_loss_weight, cfg.max_loss_weight
            )
        if cfg.loss_weighting == "empirical":
            t = t.double()
            return t**2 - t + 3.0, 3.0 - 2.0 * t
        return w_mask, w_clus

    # ----- forward process -----

    def cluster_of(self, ids: Tensor) -> Tensor:
        """Local cluster id of token ids (any shape)."""
        return self._on("token_cluster", ids.device)[ids]

    def marginals(self, x0: Tensor, t: Tensor) -> Tensor:
        s = {k: v[:, None] for k, v in self.schedule(t).items()}  # (B, 1)
        V, C = self.layout.vocab_size, self.C
        probs = torch.zeros(*x0.shape, self.layout.rows, dtype=torch.float64, device=x0.device)
        probs.scatter_(-1, x0[..., None], s["alpha"][..., None].expand(*x0.shape, 1))
        probs[..., V : V + C] = (s["c"] * self.off)[..., None]
        own = V + self.cluster_of(x0)
        probs.scatter_(-1, own[..., None], (s["c"] * self.xi)[..., None].expand(*x0.shape, 1))
        probs[..., self.layout.mask_id] += s["m"]
        return probs

    def sample_zt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None) -> Tensor:
        s = self.schedule(t)
        shape = tuple(x0.shape)
        u = uniform(shape, generator, x0.device, torch.float64)
        own = self.cluster_of(x0)
        cluster = own
        if self.xi < 1:
            u2 = uniform(shape, generator, x0.device, torch.float64)
            k = ((u2 - self.xi) / (1.0 - self.xi) * (self.C - 1)).long().clamp(0, self.C - 2)
            other = k + (k >= own).long()  # uniform over the C - 1 other clusters
            cluster = torch.where(u2 < self.xi, own, other)
        alpha, c = s["alpha"][:, None], s["c"][:, None]
        mask = torch.full_like(x0, self.layout.mask_id)
        return torch.where(u < alpha, x0, torch.where(u < alpha + c, self.layout.vocab_size + cluster, mask))

    # ----- loss -----

    def _cluster_log_probs(self, log_x: Tensor) -> Tensor:
        """log P_c (..., C) from token log-probabilities (..., V_r)."""
        V = self.layout.vocab_size
        segment = self._on("token_cluster", log_x.device)[:V]
        return segment_logsumexp(log_x[..., :V], segment, self.C)

    def _log_k_theta(self, log_p: Tensor) -> Tensor:
        """log K_theta(c) = log(xi P_c + off (1 - P_c)) (..., C); log P_c itself for xi = 1."""
        if self.xi == 1.0:
            return log_p
        p = log_p.exp()
        return torch.log(self.off + (self.xi - self.off) * p)

    def loss(
        self, logits: Tensor, x0: Tensor, zt: Tensor, t: Tensor, cluster_logits: Tensor | None = None
    ) -> TokenLoss:
        V, C, m = self.layout.vocab_size, self.C, self.layout.mask_id
        text = self.text_mask(logits.device)
        own = self.cluster_of(x0)  # (B, L)
        is_m = zt == m
        is_c = (zt >= V) & (zt < V + C)
        zc = (zt - V).clamp(0, C - 1)
        if self.xi == 1.0:
            # K_theta = P_c: each position needs one cluster's mass (its own at [MASK], z_t's at a cluster),
            # computed fused per row without any (B, L, V) or (B, L, C) tensor
            # (only at [MASK] and cluster positions: a clean position scores nothing)
            sel = torch.where(is_m, own, zc)
            device = logits.device
            log_x_x, log_p_sel = cluster_row_terms(
                logits.reshape(-1, logits.shape[-1]),
                x0.reshape(-1),
                sel.reshape(-1),
                self._on("token_cluster", device),
                text,
                rows=(is_m | is_c).reshape(-1),
                members=(self._on("cluster_members", device), self._on("cluster_member_pad", device)),
            )
            log_x_x, log_kt_own = log_x_x.view(x0.shape), log_p_sel.view(x0.shape)
            log_kt_z = log_kt_own
            log_kt = None
        else:
            log_x = torch.log_softmax(logits.float().masked_fill(~text, float("-inf")), dim=-1)
            log_kt = self._log_k_theta(self._cluster_log_probs(log_x))  # (B, L, C)
            log_x_x = log_x.gather(-1, x0[..., None]).squeeze(-1)
            log_kt_own = log_kt.gather(-1, own[..., None]).squeeze(-1)
            log_kt_z = log_kt.gather(-1, zc[..., None]).squeeze(-1)
        zero = torch.zeros_like(log_x_x)

        # strict (exact) terms
        if self.xi == 1.0:
            clus_strict = -log_kt_own
            tok_strict = -(log_x_x - log_kt_z)
        else:
            assert log_kt is not None
            xi, off = self.xi, self.off
            const = xi * math.log(xi) + (C - 1) * off * math.log(off)
            clus_strict = const - xi * log_kt_own - off * (log_kt.sum(-1) - log_kt_own)
            log_k = torch.where(zc == own, math.log(xi), math.log(off))
            tok_strict = -(log_x_x + log_k - log_kt_z)
        clus_strict = torch.where(is_m, clus_strict, zero)
        tok_strict = torch.where(is_c, tok_strict, zero)

        if self.config.objective == "strict" or self.xi == 1.0:
            clus_obj, tok_obj = clus_strict, tok_strict
        else:  # the "simplified" loss of the original code (spec §3.4.6): true-cluster terms only
            clus_obj = torch.where(is_m, self.xi * (math.log(self.xi) - log_kt_own), zero)
            inside = is_c & (zc == own)
            tok_in = -log_x_x + log_kt_own - math.log(self.xi)
            tok_obj = torch.where(inside, tok_in, torch.where(is_c, -log_x_x, zero))

        w_mask, w_clus = (w.float()[:, None] for w in self.elbo_weights(t))
        lw_mask, lw_clus = (w.float()[:, None] for w in self.loss_weights(t))
        elbo = w_mask * clus_strict + w_clus * tok_strict
        loss = lw_mask * clus_obj + lw_clus * tok_obj
        metrics = {"loss_clusters": clus_strict, "loss_tokens": tok_strict}
        if self.uses_cluster_logits:
            if cluster_logits is None:
                raise ValueError("auxiliary_loss_weight > 0 needs the model's cluster logits")
            aux = -torch.log_softmax(cluster_logits.float()[..., V : V + C], dim=-1).gather(
                -1, own[..., None]
            )
            aux = torch.where(is_m, aux.squeeze(-1), zero)
            loss = loss + self.config.auxiliary_loss_weight * aux
            metrics["aux_loss"] = aux
        return TokenLoss(loss=loss, elbo=elbo, metrics=metrics)

    # ----- reverse step -----

    def step_probabilities(self, t: float, s: float) -> dict[str, float]:
        """Level-move probabilities of the exact posterior from t to s < t (float).

        From [MASK]: stay (m_s/m_t), to the cluster level (c_s (1 - r)/m_t), to the token level (the rest);
        from a cluster: stay (c_s r / c_t), else to a token; r = (1-t)/(1-s) is a cluster's survival.
        """
        st = {k: float(v) for k, v in self.schedule(torch.tensor(t, dtype=torch.float64)).items()}
        ss = {k: float(v) for k, v in self.schedule(torch.tensor(s, dtype=torch.float64)).items()}
        r = (1.0 - t) / (1.0 - s)
        m_stay = ss["m"] / st["m"] if st["m"] > 0 else 1.0
        m_to_c = ss["c"] * (1.0 - r) / st["m"] if st["m"] > 0 else 0.0
        c_stay = ss["c"] * r / st["c"] if st["c"] > 0 else 1.0
        return {"m_stay": m_stay, "m_to_cluster": m_to_c, "c_stay": min(c_stay, 1.0)}

    def reverse_step(
        self,
        logits: Tensor,
        zt: Tensor,
        t: float,
        s: float,
        generator: torch.Generator | None,
        options: SamplingOptions | None = None,
    ) -> Tensor:
        """Exact ancestral step of the hierarchical chain (replaces the spec's one-level-per-step sampler and
        its invalid "gidd" parameterisation, §5.3-5.4 / bug 12):

        1. choose each position's level at s from the posterior level probabilities (`step_probabilities`);
        2. [MASK] -> cluster: draw c from K_theta (cluster sums of x̂);
        3. [MASK] or cluster z -> token: draw v from x̂_v K(z | v) (within the cluster for xi = 1).
        Real tokens never change. At s = 0 every position ends on a text id.
        """
        options = options or SamplingOptions()
        V, C, m = self.layout.vocab_size, self.C, self.layout.mask_id
        p = self.step_probabilities(t, s)
        is_m = zt == m
        is_c = (zt >= V) & (zt < V + C)
        u = uniform(tuple(zt.shape), generator, zt.device, options.dtype)
        to_cluster = is_m & (u >= p["m_stay"]) & (u < p["m_stay"] + p["m_to_cluster"])
        to_token = (is_m & (u >= p["m_stay"] + p["m_to_cluster"])) | (is_c & (u >= p["c_stay"]))
        zs = zt.clone()
        if not bool((to_cluster | to_token).any()):
            return zs
        text = self.text_mask(logits.device)
        segment = self._on("token_cluster", logits.device)
        if bool(to_cluster.any()):
            x_hat = denoiser_probs(logits[to_cluster], text, options)  # (n, V_r)
            p_c = torch.zeros(x_hat.shape[0], C, dtype=x_hat.dtype, device=x_hat.device)
            p_c.scatter_add_(-1, segment.expand_as(x_hat), x_hat)
            k_theta = self.xi * p_c + self.off * (1.0 - p_c)
            zs[to_cluster] = V + sample_categorical(k_theta, generator)
        if bool(to_token.any()):
            x_hat = denoiser_probs(logits[to_token], text, options)
            source = zt[to_token]
            from_cluster = (source >= V)[:, None]
            in_cluster = segment[None, :] == (source - V).clamp(0, C - 1)[:, None]
            k_values = torch.tensor([self.off, self.xi], dtype=x_hat.dtype, device=x_hat.device)
            k = k_values[in_cluster.long()]  # K(z_t | v), (n, V_r)
            weights = torch.where(from_cluster, x_hat * k, x_hat)
            empty = weights.sum(-1) <= 0
            if bool(empty.any()):
                # top-p / min-p / greedy removed every token of the committed cluster: fall back to the
                # untruncated x̂ inside it, so the step stays a valid draw
                raw = denoiser_probs(logits[to_token][empty], text, SamplingOptions(float64=options.float64))
                weights[empty] = torch.where(from_cluster[empty], raw * k[empty], raw)
            zs[to_token] = sample_categorical(weights, generator)
        return zs

    def bound_note(self) -> str | None:
        """For gamma < 1 the ELBO integrand diverges like (1-t)^(gamma-1) at t = 1 (-alpha'_t and m'_t both do),
        so the mass omitted above 1 - t_eps is ~ t_eps^gamma / (1 - gamma) times the per-token terms, not O(t_eps):
        at gamma = 0.5 and t_eps = 1e-4 the reported figure is ~1.4% below the true bound."""
        if self.gamma >= 1.0:
            return None
        tail = self.t_eps**self.gamma
        return (
            f"HDLM gamma={self.gamma} < 1: the ELBO integral is truncated at 1 - t_eps where its integrand "
            f"diverges like (1-t)^(gamma-1); the omitted end carries ~{tail:.2g}/(1-gamma) of the per-token terms, "
            "so the reported NLL is NOT an upper bound (it is below the true bound by about that fraction)"
        )

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "gamma": self.gamma, "xi": self.xi, "num_clusters": self.C}
