"""Transformer building blocks shared by the DiT, the MMDiT and other networks.

- `LayerNorm`: bias-free LayerNorm computed in float32 (stable under bf16 autocast).
- `TimestepEmbedder`: sinusoidal features of t followed by a 2-layer MLP.
- `Rotary` + `apply_rotary`: rotary position embeddings (rotate-half convention).
- `SelfAttention`: multi-head attention through `F.scaled_dot_product_attention`, optional key padding mask,
  optional rotary, bidirectional or causal.
- `modulate`: the adaLN shift/scale.
- `key_padding_mask`: turns a (B, L) bool mask into the (B, 1, 1, L) mask SDPA broadcasts.

Nothing here knows about losses, processes or samplers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """LayerNorm with a learnable weight and no bias, computed in float32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            y = F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), None, self.eps)
        return y.to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation. x: (B, L, D); shift, scale: (B, 1, D) or (1, 1, D)."""
    return x * (1 + scale) + shift


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Features [cos(t f_k), sin(t f_k)], f_k = exp(-ln(max_period) k / (dim/2)). t: (B,) -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, cond_dim): sinusoidal features of `time_scale * t`, then Linear-SiLU-Linear."""

    def __init__(self, cond_dim: int, freq_dim: int = 256, time_scale: float = 1.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t * self.time_scale, self.freq_dim).to(self.mlp[0].weight.dtype))


class Rotary(nn.Module):
    """Precomputed rotary tables for positions 0..max_seq_len-1 (non-persistent: rebuilt, never saved)."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (L, hd/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, hd), rotate-half layout
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        self.max_seq_len = max_seq_len

    def forward(self, seq_len: int, offset: int = 0) -> tuple[Tensor, Tensor]:
        """(cos, sin), each (seq_len, head_dim), for positions offset..offset+seq_len-1."""
        if offset + seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence of {offset + seq_len} positions exceeds max_seq_len={self.max_seq_len}; "
                "raise the model's max_seq_len or shorten the input"
            )
        return self.cos[offset : offset + seq_len], self.sin[offset : offset + seq_len]


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x: (B, H, L, hd) by position tables cos, sin: (L, hd). Computed in float32."""
    y = x.float() * cos + _rotate_half(x.float()) * sin
    return y.to(x.dtype)


def key_padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """(B, L) bool (True = real token) -> (B, 1, 1, L) bool for SDPA (None stays None).

    Queries at padding positions still attend to the real keys (their outputs are never scored), and a row
    with no real key at all attends everywhere, so no softmax row is empty (no NaN). No host sync: callers
    that know nothing is padded should pass None to get the fastest SDPA kernel.
    """
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (no biases) and SDPA.

    forward(x (B, L, D), rotary=(cos, sin) | None, mask=(B,1,1,L) bool | None) -> (B, L, D)
    """

    def __init__(self, dim: int, n_heads: int, causal: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(
        self, x: Tensor, rotary: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None
    ) -> Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads)  # layout "(three h d)"
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, hd)
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.causal and mask is not None:
            mask = mask & torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        a = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and mask is None,
        )  # (B, H, L, hd)
        return self.out(a.transpose(1, 2).reshape(B, L, D))
