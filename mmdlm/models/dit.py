"""Diffusion Transformer (DiT) for discrete diffusion LMs, as in MDLM/GIDD/HDLM (spec §6.1), in one file.

    h   = E[z]                                      (B, L, D)
    c   = SiLU(TimestepEmbedder(t))                 (B, cond) adaLN conditioning
    h   = Block_n(... Block_1(h, c))                each: adaLN-zero attention + adaLN-zero MLP
    out = Head(h, c)                                (B, L, V_rows) logits

adaLN-zero: every modulation layer and the output projection start at zero, so at initialisation the blocks
are the identity and the logits are all zero. Attention is bidirectional with rotary positions.

`vocab_rows` is the padded model vocabulary V_r (tokens, then HDLM cluster ids, then padding up to a
multiple of 128, spec §1.1); the family computes it. The network knows nothing of losses, processes,
samplers, DDP or autocast.

Parameter count (d = hidden_size, k = cond_dim, n = n_blocks, V_r rows, mlp_ratio 4):
    n (12 d^2 + 13 d + 6 d k)  +  V_r d  +  (256 k + k^2 + 2k)  +  heads * (d + d V_r + V_r + 2 d k + 2 d)
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdlm.config.model import DiTConfig
from mmdlm.models.blocks import LayerNorm, Rotary, SelfAttention, TimestepEmbedder, key_padding_mask, modulate


class DiTBlock(nn.Module):
    """Pre-LN transformer block whose norms are modulated (shift, scale) and residuals gated by c."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.norm1 = LayerNorm(d)
        self.attn = SelfAttention(d, config.n_heads, causal=False)
        self.norm2 = LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.mlp_ratio * d),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.mlp_ratio * d, d),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.adaLN = nn.Linear(config.cond_dim, 6 * d)
        nn.init.zeros_(self.adaLN.weight)
        nn.init.zeros_(self.adaLN.bias)

    def forward(self, h: Tensor, c: Tensor, rotary: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
        # c: (B or 1, 1, cond) -> six (B or 1, 1, D) modulation vectors
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)
        h = h + gate1 * self.dropout(self.attn(modulate(self.norm1(h), shift1, scale1), rotary, mask))
        h = h + gate2 * self.dropout(self.mlp(modulate(self.norm2(h), shift2, scale2)))
        return h


class DiTHead(nn.Module):
    """Final adaLN-modulated LayerNorm and a zero-initialised projection to the vocabulary rows."""

    def __init__(self, config: DiTConfig, vocab_rows: int) -> None:
        super().__init__()
        d = config.hidden_size
        self.norm = LayerNorm(d)
        self.adaLN = nn.Linear(config.cond_dim, 2 * d)
        self.proj = nn.Linear(d, vocab_rows)
        for layer in (self.adaLN, self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN(c).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(h), shift, scale))


class DiT(nn.Module):
    """Bidirectional transformer denoiser with adaLN-zero time conditioning.

    Args:
        config: dimensions.
        vocab_rows: V_r, rows of the embedding and columns of the logits.
        cluster_head: add HDLM's second output head (same shape as the token head).
    """

    def __init__(self, config: DiTConfig, vocab_rows: int, cluster_head: bool = False) -> None:
        super().__init__()
        self.config = config
        self.vocab_rows = vocab_rows
        d = config.hidden_size
        self.embed = nn.Embedding(vocab_rows, d)
        # U(-1/sqrt(d), 1/sqrt(d)): what kaiming_uniform(a=sqrt(5)) gives on a (V_r, d) matrix.
        nn.init.kaiming_uniform_(self.embed.weight, a=5**0.5)
        self.time_embed = TimestepEmbedder(config.cond_dim, time_scale=config.time_scale)
        self.rotary = Rotary(config.head_dim, config.max_seq_len, config.rope_base)
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.n_blocks))
        self.head = DiTHead(config, vocab_rows)
        self.cluster_head = DiTHead(config, vocab_rows) if cluster_head else None

    @overload
    def forward(
        self,
        z: Tensor,
        t: Tensor | float,
        attention_mask: Tensor | None = ...,
        *,
        with_cluster_logits: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        z: Tensor,
        t: Tensor | float,
        attention_mask: Tensor | None = ...,
        *,
        with_cluster_logits: Literal[True],
    ) -> tuple[Tensor, Tensor]: ...

    def forward(
        self,
        z: Tensor,
        t: Tensor | float,
        attention_mask: Tensor | None = None,
        *,
        with_cluster_logits: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits for the clean token at every position.

        Args:
            z: (B, L) int64 noisy tokens, ids in [0, vocab_rows).
            t: diffusion time, (B,), (1,) or a scalar, in [0, 1]. Ignored when time_conditioning is False.
            attention_mask: (B, L) bool, True at real tokens; padding keys are not attended to.
            with_cluster_logits: also return the cluster head's logits (needs cluster_head=True).
        Returns:
            logits (B, L, vocab_rows), or (logits, cluster_logits) with `with_cluster_logits`.
        """
        B, L = z.shape
        t = torch.as_tensor(t, dtype=torch.float32, device=z.device).reshape(-1)
        if not self.config.time_conditioning:
            t = torch.zeros(1, device=z.device)
        if t.shape[0] not in (1, B):
            raise ValueError(f"t has {t.shape[0]} entries; expected 1 or the batch size {B}")
        c = F.silu(self.time_embed(t))[:, None, :]  # (B or 1, 1, cond)
        rotary = self.rotary(L)
        mask = key_padding_mask(attention_mask)
        h = self.embed(z)
        for block in self.blocks:
            h = block(h, c, rotary, mask)
        logits = self.head(h, c)
        if not with_cluster_logits:
            return logits
        if self.cluster_head is None:
            raise ValueError("with_cluster_logits=True needs a model built with cluster_head=True")
        return logits, self.cluster_head(h, c)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; `exclude_embeddings` counts only the transformer blocks (the spec's "non-emb")."""
        if exclude_embeddings:
            return sum(p.numel() for p in self.blocks.parameters())
        return sum(p.numel() for p in self.parameters())
