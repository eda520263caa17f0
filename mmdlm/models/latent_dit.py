"""The MDLM DiT conditioned on a sentence latent: through adaLN (`LatentDiT`) or through cross-attention
(`CrossDiT`), spec §5. Both reuse `mmdlm.models.dit`'s embedding, blocks and head unchanged.

Corrections over the original baselines: the adaLN variant adds a latent embedding to the time embedding
(as DiT does with class labels), so the latent reaches every modulation, the final layer included (the
original used only a `scale` branch and skipped the head); the cross-attention variant has its own norm
and zero-initialised gate instead of reusing the self-attention's, and a configurable number of latent
tokens and cross-attention frequency (the original hard-coded both). A dropped condition
(`drop_latent`) is a learned null embedding / null tokens, which classifier-free guidance samples with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdlm.config.latent import LatentDiTConfig
from mmdlm.diffusion.gaussian import LatentNormalizer
from mmdlm.models.blocks import LayerNorm, key_padding_mask, modulate
from mmdlm.models.dit import DiT, DiTBlock


def _time(t: Tensor | float, B: int, device: torch.device, conditioned: bool) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float32, device=device).reshape(-1)
    if not conditioned:
        return torch.zeros(1, device=device)
    if t.shape[0] not in (1, B):
        raise ValueError(f"t has {t.shape[0]} entries; expected 1 or the batch size {B}")
    return t


def _check_latent(latent: Tensor | None, B: int, dim: int) -> Tensor:
    if latent is None:
        raise ValueError("this model is conditioned on a latent: pass latent (B, D), or drop_latent for none")
    if latent.dim() == 3:
        latent = latent.mean(dim=1)
    if latent.shape != (B, dim):
        raise ValueError(f"latent has shape {tuple(latent.shape)}, expected ({B}, {dim}) (model.latent_dim)")
    return latent


class LatentDiT(DiT):
    """c = SiLU(tau(t) + e(z)) with e = Linear(D, 4C) - SiLU - Linear(4C, C); e(null) when dropped.

    forward(z (B, L), t (B,), attention_mask (B, L) | None, latent (B, D) | None, drop_latent (B,) | None)
    -> logits (B, L, V_r)."""

    def __init__(
        self, config: LatentDiTConfig, vocab_rows: int, latent_normalization: str = "dataset"
    ) -> None:
        super().__init__(config, vocab_rows)
        C = config.cond_dim
        self.latent_embed = nn.Sequential(nn.Linear(config.latent_dim, 4 * C), nn.SiLU(), nn.Linear(4 * C, C))
        self.null_latent = nn.Parameter(torch.zeros(C))
        self.latent_norm = LatentNormalizer(config.latent_dim, latent_normalization)
        self.register_buffer("length_counts", torch.zeros(config.max_seq_len + 1))

    def forward(  # type: ignore[override]
        self,
        z: Tensor,
        t: Tensor | float,
        attention_mask: Tensor | None = None,
        *,
        latent: Tensor | None = None,
        drop_latent: Tensor | None = None,
    ) -> Tensor:
        B, L = z.shape
        cfg: LatentDiTConfig = self.config  # type: ignore[assignment]
        t = _time(t, B, z.device, cfg.time_conditioning)
        if latent is None and drop_latent is not None and bool(drop_latent.all()):
            e = self.null_latent.expand(B, -1)
        else:
            e = self.latent_embed(_check_latent(latent, B, cfg.latent_dim))
            if drop_latent is not None:
                e = torch.where(drop_latent[:, None], self.null_latent.to(e.dtype), e)
        c = F.silu(self.time_embed(t) + e)[:, None, :]  # (B, 1, C)
        rotary = self.rotary(L)
        mask = key_padding_mask(attention_mask)
        h = self.embed(z)
        for block in self.blocks:
            h = block(h, c, rotary, mask)
        return self.head(h, c)


class CrossAttention(nn.Module):
    """Text queries attend to latent tokens: x (B, L, d), tokens (B, n, d) -> (B, L, d)."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        B, L, D = x.shape
        hd = D // self.n_heads
        q = self.q(x).view(B, L, self.n_heads, hd).transpose(1, 2)  # (B, h, L, hd)
        k, v = (
            self.kv(tokens).view(B, -1, 2, self.n_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        )  # (B, h, n, hd)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.out(a.transpose(1, 2).reshape(B, L, D))


class CrossDiTBlock(DiTBlock):
    """DiT block + a cross-attention sub-layer between self-attention and MLP, gated from zero."""

    def __init__(self, config: LatentDiTConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.norm_x = LayerNorm(d)
        self.cross = CrossAttention(d, config.n_heads)
        self.adaLN_x = nn.Linear(config.cond_dim, 3 * d)
        nn.init.zeros_(self.adaLN_x.weight)
        nn.init.zeros_(self.adaLN_x.bias)

    def forward_cross(
        self, h: Tensor, c: Tensor, rotary: tuple[Tensor, Tensor], mask: Tensor | None, tokens: Tensor
    ) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)
        h = h + gate1 * self.dropout(self.attn(modulate(self.norm1(h), shift1, scale1), rotary, mask))
        shift_x, scale_x, gate_x = self.adaLN_x(c).chunk(3, dim=-1)
        h = h + gate_x * self.dropout(self.cross(modulate(self.norm_x(h), shift_x, scale_x), tokens))
        h = h + gate2 * self.dropout(self.mlp(modulate(self.norm2(h), shift2, scale2)))
        return h


class CrossDiT(DiT):
    """Blocks i with i % cross_attention_every == 0 read n latent tokens W2 SiLU(W1 z) (learned null
    tokens when dropped). Same forward signature as `LatentDiT`."""

    def __init__(
        self, config: LatentDiTConfig, vocab_rows: int, latent_normalization: str = "dataset"
    ) -> None:
        super().__init__(config, vocab_rows)
        d, n = config.hidden_size, config.num_latent_tokens
        self.blocks = nn.ModuleList(
            CrossDiTBlock(config) if i % config.cross_attention_every == 0 else DiTBlock(config)
            for i in range(config.n_blocks)
        )
        self.latent_proj = nn.Sequential(
            nn.Linear(config.latent_dim, 2 * d), nn.SiLU(), nn.Linear(2 * d, n * d)
        )
        self.null_tokens = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.latent_norm = LatentNormalizer(config.latent_dim, latent_normalization)
        self.register_buffer("length_counts", torch.zeros(config.max_seq_len + 1))

    def forward(  # type: ignore[override]
        self,
        z: Tensor,
        t: Tensor | float,
        attention_mask: Tensor | None = None,
        *,
        latent: Tensor | None = None,
        drop_latent: Tensor | None = None,
    ) -> Tensor:
        B, L = z.shape
        cfg: LatentDiTConfig = self.config  # type: ignore[assignment]
        t = _time(t, B, z.device, cfg.time_conditioning)
        null = self.null_tokens.expand(B, -1, -1)
        if latent is None and drop_latent is not None and bool(drop_latent.all()):
            tokens = null
        else:
            tokens = self.latent_proj(_check_latent(latent, B, cfg.latent_dim)).view(
                B, cfg.num_latent_tokens, -1
            )
            if drop_latent is not None:
                tokens = torch.where(drop_latent[:, None, None], null.to(tokens.dtype), tokens)
        c = F.silu(self.time_embed(t))[:, None, :]
        rotary = self.rotary(L)
        mask = key_padding_mask(attention_mask)
        h = self.embed(z)
        for block in self.blocks:
            if isinstance(block, CrossDiTBlock):
                h = block.forward_cross(h, c, rotary, mask, tokens)
            else:
                h = block(h, c, rotary, mask)
        return self.head(h, c)
