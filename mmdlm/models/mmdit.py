"""MMDiT: a text stream and a latent stream joined in every block by one attention over both
(spec §1, after Esser et al. 2024's MMDiT). The text stream carries masked-diffusion tokens, the latent
stream one or more tokens projected from a sentence embedding under Gaussian diffusion. Each stream has
its own weights; attention is joint and bidirectional.

Corrections over the original (spec §11): heads and qk-norm are really applied (B6); timesteps are scaled
before the sinusoid; `latents=None` is a text-only forward (B8); there is no cluster head (B8). A
condition is dropped per sample by hiding its keys (`drop_text` / `drop_latent`), which is what the
classifier-free-guidance branch of the samplers uses, so that branch is one the model was trained on.

Hyper-connections (Zhu et al. 2024) are optional: `num_residual_streams = 1` is a plain residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdlm.config.latent import MMDiTConfig
from mmdlm.diffusion.gaussian import LatentNormalizer
from mmdlm.models.blocks import TimestepEmbedder

TEXT, LATENT = 0, 1


def _layer_norm(x: Tensor) -> Tensor:
    """LayerNorm without affine, in float32 (the adaLN supplies scale and shift)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=1e-5).to(x.dtype)


class AdaLN(nn.Module):
    """x -> LN(x) * gamma(c) + beta(c); initialised to gamma = 1, beta = 0."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        with torch.no_grad():
            self.proj.bias[:dim].fill_(1.0)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:  # x (B, N, H), c = SiLU(cond) (B, C)
        gamma, beta = self.proj(c).unsqueeze(1).chunk(2, dim=-1)
        return _layer_norm(x) * gamma + beta


class HyperConnection(nn.Module):
    """One residual branch over s streams R (B, N, s, H) (Zhu et al. 2024, dynamic form).

    width: h = sum_k alpha_k0 R_k (branch input); R~_j = sum_k alpha_kj R_k (mixed residuals)
    depth: R'_k = R~_k + beta_k * branch_out        (R_k instead of R~_k with `discard_width_mix`)
    alpha = static_alpha + scale_a tanh(norm(R) W_a), beta = static_beta + scale_b tanh(norm(R) w_b).
    The first column of static_alpha is one-hot at `layer_index % s` (deterministic, the same on every
    rank), its other columns the identity, so at init the branch reads one stream and adds to all.
    Parameters: H + s(s+1) + H(s+1) + 1 + s + H + 1.
    """

    def __init__(self, dim: int, streams: int, layer_index: int, discard_width_mix: bool = False) -> None:
        super().__init__()
        self.streams = streams
        self.discard_width_mix = discard_width_mix
        self.norm_gain = nn.Parameter(torch.zeros(dim))  # used as (gain + 1)
        static_alpha = torch.zeros(streams, streams + 1)
        static_alpha[layer_index % streams, 0] = 1.0
        static_alpha[:, 1:] = torch.eye(streams)
        self.static_alpha = nn.Parameter(static_alpha)
        self.dynamic_alpha = nn.Parameter(torch.zeros(dim, streams + 1))
        self.alpha_scale = nn.Parameter(torch.tensor(1e-2))
        self.static_beta = nn.Parameter(torch.ones(streams))
        self.dynamic_beta = nn.Parameter(torch.zeros(dim))
        self.beta_scale = nn.Parameter(torch.tensor(1e-2))

    def width(self, residual: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        normed = F.rms_norm(residual.float(), (residual.shape[-1],)).to(residual.dtype) * (self.norm_gain + 1)
        alpha = self.static_alpha + self.alpha_scale * torch.tanh(normed @ self.dynamic_alpha)  # (B,N,s,s+1)
        beta = self.static_beta + self.beta_scale * torch.tanh(normed @ self.dynamic_beta)  # (B,N,s)
        mixed = torch.einsum("bnks,bnkh->bnsh", alpha, residual)  # (B, N, s+1, H)
        branch_in = mixed[:, :, 0]
        carried = residual if self.discard_width_mix else mixed[:, :, 1:]
        return branch_in, (carried, beta)

    def depth(self, context: tuple[Tensor, Tensor], branch_out: Tensor) -> Tensor:
        carried, beta = context
        return carried + beta.unsqueeze(-1) * branch_out.unsqueeze(2)


class PlainResidual(nn.Module):
    """s = 1: R' = R + branch_out, no parameters."""

    def width(self, residual: Tensor) -> tuple[Tensor, Tensor]:
        return residual, residual

    def depth(self, context: Tensor, branch_out: Tensor) -> Tensor:
        return context + branch_out


def _residual(config: MMDiTConfig, layer_index: int) -> nn.Module:
    if config.num_residual_streams == 1:
        return PlainResidual()
    return HyperConnection(
        config.hidden_size, config.num_residual_streams, layer_index, config.hc_discard_width_mix
    )


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(dim, mult * dim)
        self.down = nn.Linear(mult * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(F.gelu(self.up(x))))


class MMDiTBlock(nn.Module):
    """Joint attention + per-stream feed-forward, each adaLN-modulated and post-gated by the time vector."""

    def __init__(self, config: MMDiTConfig, layer_index: int) -> None:
        super().__init__()
        H, C = config.hidden_size, config.cond_dim
        self.n_heads = config.n_heads
        self.head_dim = config.resolved_head_dim
        inner = self.n_heads * self.head_dim
        self.dropout = config.dropout
        self.attn_norm = nn.ModuleList(AdaLN(H, C) for _ in range(2))
        self.ff_norm = nn.ModuleList(AdaLN(H, C) for _ in range(2))
        self.qkv = nn.ModuleList(nn.Linear(H, 3 * inner, bias=False) for _ in range(2))
        self.out = nn.ModuleList(nn.Linear(inner, H, bias=False) for _ in range(2))
        self.q_norm = nn.ModuleList(nn.RMSNorm(self.head_dim) for _ in range(2)) if config.qk_norm else None
        self.k_norm = nn.ModuleList(nn.RMSNorm(self.head_dim) for _ in range(2)) if config.qk_norm else None
        self.ff = nn.ModuleList(FeedForward(H, config.ff_mult, config.dropout) for _ in range(2))
        self.attn_res = nn.ModuleList(_residual(config, layer_index) for _ in range(2))
        self.ff_res = nn.ModuleList(_residual(config, layer_index) for _ in range(2))
        # post-branch gates for (attn, ff) x (text, latent); init W = 0, bias = 1
        self.gates = nn.Linear(C, 4 * H)
        nn.init.zeros_(self.gates.weight)
        nn.init.ones_(self.gates.bias)

    def _qkv(self, m: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, _ = x.shape
        q, k, v = self.qkv[m](x).view(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm[m](q), self.k_norm[m](k)
        return q, k, v  # each (B, heads, N, head_dim)

    def forward(self, states: list[Tensor], c: Tensor, key_mask: Tensor | None) -> list[Tensor]:
        """states: per present stream, (B, N_m, H) or (B, N_m, s, H); c: SiLU(cond) (B, C);
        key_mask: (B, 1, 1, sum N_m) bool (True = attend) or None."""
        gates = self.gates(c).unsqueeze(1).chunk(4, dim=-1)  # attn_text, attn_lat, ff_text, ff_lat
        present = range(len(states))
        # 1. joint attention over the concatenation of all present streams
        widths = [self.attn_res[m].width(states[m]) for m in present]
        qkvs = [self._qkv(m, self.attn_norm[m](widths[m][0], c)) for m in present]
        q, k, v = (torch.cat([item[i] for item in qkvs], dim=2) for i in range(3))
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, N, head_dim)
        a = a.transpose(1, 2).flatten(2)  # (B, N, inner)
        pieces = a.split([item[0].shape[2] for item in qkvs], dim=1)
        states = [self.attn_res[m].depth(widths[m][1], gates[m] * self.out[m](pieces[m])) for m in present]
        # 2. per-stream feed-forward
        widths = [self.ff_res[m].width(states[m]) for m in present]
        return [
            self.ff_res[m].depth(widths[m][1], gates[2 + m] * self.ff[m](self.ff_norm[m](widths[m][0], c)))
            for m in present
        ]


class TimeConditioning(nn.Module):
    """(t_text, t_lat) -> c: c = W_d SiLU(W_c [SiLU(tau_text); SiLU(tau_lat)] + c1) + d1 (spec §1.4)."""

    def __init__(self, cond_dim: int, time_scale: float) -> None:
        super().__init__()
        self.text_time = TimestepEmbedder(cond_dim, 256, time_scale)
        self.latent_time = TimestepEmbedder(cond_dim, 256, time_scale)
        self.fuse = nn.Sequential(
            nn.Linear(2 * cond_dim, 4 * cond_dim), nn.SiLU(), nn.Linear(4 * cond_dim, cond_dim)
        )

    def forward(self, t_text: Tensor, t_latent: Tensor) -> Tensor:
        both = torch.cat([F.silu(self.text_time(t_text)), F.silu(self.latent_time(t_latent))], dim=-1)
        return self.fuse(both)


class LatentEncoder(nn.Module):
    """z (B, D) -> (B, n, H): W2 GELU(LN(W1 z)) reshaped to n tokens, plus a learned per-token offset."""

    def __init__(self, latent_dim: int, hidden: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(
            nn.Linear(latent_dim, 2 * hidden),
            nn.LayerNorm(2 * hidden),
            nn.GELU(),
            nn.Linear(2 * hidden, num_tokens * hidden),
        )
        self.position = nn.Parameter(torch.randn(1, num_tokens, hidden) * 0.02)

    def forward(self, z: Tensor) -> Tensor:
        return self.proj(z).view(z.shape[0], self.num_tokens, -1) + self.position


def joint_key_mask(
    attention_mask: Tensor | None,
    B: int,
    L: int,
    n_other: int,
    drop_text: Tensor | None,
    drop_other: Tensor | None,
    device: torch.device,
) -> Tensor | None:
    """(B, 1, 1, L + n_other) bool key mask over [text; other stream], or None when every key is visible.
    Text keys: real tokens, hidden for samples with drop_text; other keys hidden for drop_other. A row
    with no visible key at all attends everywhere (no NaN)."""
    if attention_mask is None and drop_text is None and drop_other is None:
        return None
    text = (
        torch.ones(B, L, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
    )
    if drop_text is not None:
        text = text & ~drop_text.bool()[:, None]
    keys = [text]
    if n_other:
        other = torch.ones(B, n_other, dtype=torch.bool, device=device)
        if drop_other is not None:
            other = other & ~drop_other.bool()[:, None]
        keys.append(other)
    mask = torch.cat(keys, dim=1)
    if bool(mask.all()):  # nothing hidden: SDPA's unmasked kernel is faster
        return None
    mask = mask | ~mask.any(dim=1, keepdim=True)
    return mask[:, None, None, :]


class MMDiT(nn.Module):
    """forward(text_tokens (B, L) long, latents (B, D) | (B, S, D) | None, text_t (B,) | None,
    latent_t (B,) | None, attention_mask (B, L) | None, drop_text (B,) bool | None,
    drop_latent (B,) bool | None) -> (text_logits (B, L, V), latent_pred (B, 1, D) | None).

    Timesteps are floats in [0, 1] (mask fraction / Gaussian time); None means clean (0). A (B, S, D)
    latent with S > 1 is mean-pooled to one embedding. `latent_norm` holds the latent normalisation
    statistics and `length_counts` the training-row length histogram, so a checkpoint carries both (used by
    the objective and samplers, not by forward).
    """

    def __init__(self, config: MMDiTConfig, vocab_size: int, latent_normalization: str = "dataset") -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        H = config.hidden_size
        self.token_embed = nn.Embedding(vocab_size, H)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        self.position_embed = nn.Parameter(torch.randn(1, config.max_seq_len, H) * 0.02)
        self.latent_encoder = LatentEncoder(config.latent_dim, H, config.num_latent_tokens)
        self.time = TimeConditioning(config.cond_dim, config.time_scale)
        self.blocks = nn.ModuleList(MMDiTBlock(config, i) for i in range(config.n_blocks))
        self.final_norm = nn.ModuleList(nn.RMSNorm(H) for _ in range(2))
        self.text_head = nn.Linear(H, vocab_size)
        self.latent_head = nn.Sequential(
            nn.Linear(H, 2 * H), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(2 * H, config.latent_dim)
        )
        for layer in (self.text_head, self.latent_head[-1]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        self.latent_norm = LatentNormalizer(config.latent_dim, latent_normalization)
        # histogram of training-row lengths (real tokens); samplers draw lengths from it, forward ignores it
        self.register_buffer("length_counts", torch.zeros(config.max_seq_len + 1))

    def forward(
        self,
        text_tokens: Tensor,
        latents: Tensor | None = None,
        text_t: Tensor | None = None,
        latent_t: Tensor | None = None,
        attention_mask: Tensor | None = None,
        drop_text: Tensor | None = None,
        drop_latent: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        B, L = text_tokens.shape
        if L > self.config.max_seq_len:
            raise ValueError(f"text length {L} exceeds model.max_seq_len={self.config.max_seq_len}")
        device = text_tokens.device
        zeros = torch.zeros(B, device=device)
        c = F.silu(self.time(zeros if text_t is None else text_t, zeros if latent_t is None else latent_t))
        states = [self.token_embed(text_tokens) + self.position_embed[:, :L]]
        if latents is not None:
            if latents.dim() == 3:
                latents = latents.mean(dim=1)  # (B, S, D) -> (B, D)
            if latents.shape[-1] != self.config.latent_dim:
                raise ValueError(
                    f"latent dimension {latents.shape[-1]} does not match model.latent_dim={self.config.latent_dim}"
                )
            states.append(self.latent_encoder(latents.to(states[0].dtype)))
        n_lat = states[1].shape[1] if latents is not None else 0
        key_mask = joint_key_mask(attention_mask, B, L, n_lat, drop_text, drop_latent, device)
        streams = self.config.num_residual_streams
        if streams > 1:
            states = [s.unsqueeze(2).expand(-1, -1, streams, -1) for s in states]
        for block in self.blocks:
            states = block(states, c, key_mask)
        if streams > 1:
            states = [s.sum(dim=2) for s in states]
        logits = self.text_head(self.final_norm[TEXT](states[TEXT]))
        if latents is None:
            return logits, None
        latent_pred = self.latent_head(self.final_norm[LATENT](states[LATENT])).mean(dim=1, keepdim=True)
        return logits, latent_pred


def mmdit_param_counts(config: MMDiTConfig, vocab_size: int) -> dict[str, int]:
    """Analytic parameter count by part (spec §1.8 layout), for checking the as-built shape option."""
    H, C, D, S, n = (
        config.hidden_size,
        config.cond_dim,
        config.latent_dim,
        config.max_seq_len,
        config.num_latent_tokens,
    )
    A = config.n_heads * config.resolved_head_dim
    s = config.num_residual_streams
    hc = 0 if s == 1 else H + s * (s + 1) + H * (s + 1) + 1 + s + H + 1
    per_block = {
        "gates": C * 4 * H + 4 * H,
        "adaln": 4 * (C * 2 * H + 2 * H),
        "attention": 2 * (H * 3 * A + A * H) + (4 * config.resolved_head_dim if config.qk_norm else 0),
        "ffn": 2 * (H * config.ff_mult * H + config.ff_mult * H + config.ff_mult * H * H + H),
        "hyper_connections": 4 * hc,
    }
    block = sum(per_block.values())
    embedder = 256 * C + C + C * C + C
    counts = {
        "per_block": block,
        "backbone": config.n_blocks * block + 2 * H,
        "text_encoder": vocab_size * H + S * H,
        "latent_encoder": D * 2 * H + 2 * H + 4 * H + 2 * H * n * H + n * H + n * H,
        "conditioning": 2 * embedder + 2 * C * 4 * C + 4 * C + 4 * C * C + C,
        "text_head": H * vocab_size + vocab_size,
        "latent_head": H * 2 * H + 2 * H + 2 * H * D + D,
        "attention_width": A,
    }
    counts["total"] = sum(v for k, v in counts.items() if k not in ("per_block", "attention_width"))
    return counts
