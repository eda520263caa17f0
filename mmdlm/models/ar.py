"""Causal transformer for the autoregressive baseline (spec §6.3), readable in one sitting.

Llama-shaped: RMSNorm before each sub-layer, rotary positions (rotate-half convention), a SwiGLU MLP with
three matrices, no biases, and untied input/output embeddings. A KV cache makes generation cost O(L) per
token instead of re-running the whole prefix. The module knows nothing of losses, sampling, DDP or
precision: the family (`mmdlm.families.ar`) owns the objective and the generation loop.

Parameter count (V = vocab, d = width, n = blocks, hidden = mlp_ratio*d):
    n * (4 d^2 + 3 d hidden + 2 d) + 2 V d + d          (= 16 d^2 per block for mlp_ratio 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdlm.config.ar import ARConfig


def rotary_tables(max_len: int, d_head: int, base: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables of shape (max_len, d_head) for the rotate-half convention, in float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, d_head, 2, dtype=torch.float64) / d_head))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, d_head/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, d_head)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, D) by position; cos/sin are (T, D). Computed in x's dtype."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


@dataclass
class KVCache:
    """Keys and values of every block, filled as generation advances.

    Each entry is allocated on first write as (B, H, max_len, d_head) in the dtype the keys come in
    (bf16 under autocast). `length` is the number of positions already written.
    """

    max_len: int
    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)
    length: int = 0

    def update(self, block: int, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, D) at positions [start, start+T) and return all keys/values so far."""
        while len(self.keys) <= block:
            self.keys.append(None)
            self.values.append(None)
        if self.keys[block] is None:
            B, H, _, D = k.shape
            self.keys[block] = k.new_empty(B, H, self.max_len, D)
            self.values[block] = v.new_empty(B, H, self.max_len, D)
        kc, vc = self.keys[block], self.values[block]
        assert kc is not None and vc is not None
        end = start + k.shape[2]
        kc[:, :, start:end] = k
        vc[:, :, start:end] = v
        return kc[:, :, :end], vc[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.d_head = config.hidden_size // config.n_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.dropout = config.dropout

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None, block: int, start: int
    ) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(block, k, v, start)  # (B, H, start+T, Dh)
        dropout = self.dropout if self.training else 0.0
        if T == 1:  # one new query sees every cached key: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        elif start == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:  # a chunk after a cached prefix: query i (absolute start+i) sees keys <= start+i
            keep = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, d)
        return self.out(y)


class SwiGLU(nn.Module):
    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        hidden = round(config.mlp_ratio * config.hidden_size)
        self.gate = nn.Linear(config.hidden_size, hidden, bias=False)
        self.up = nn.Linear(config.hidden_size, hidden, bias=False)
        self.down = nn.Linear(hidden, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))


class Block(nn.Module):
    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm2 = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = SwiGLU(config)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None, block: int, start: int
    ) -> Tensor:
        x = x + self.resid_dropout(self.attn(self.norm1(x), cos, sin, cache, block, start))
        return x + self.mlp(self.norm2(x))


class ARTransformer(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, V); position i predicts token i+1."""

    def __init__(self, config: ARConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_blocks))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.head = nn.Linear(config.hidden_size, vocab_size, bias=False)
        cos, sin = rotary_tables(config.max_seq_len, config.hidden_size // config.n_heads, config.rope_base)
        # Non-persistent: derived from the config, so checkpoints hold only learned weights.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_blocks)
        for name, p in self.named_parameters():
            if p.ndim < 2:
                nn.init.ones_(p)  # RMSNorm weights
            elif name.endswith(("attn.out.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=residual_std)
            else:
                nn.init.normal_(p, std=std)

    def num_params(self, non_embedding: bool = False) -> int:
        """Trainable parameters; `non_embedding` counts the blocks only (as the spec's table does)."""
        if non_embedding:
            return sum(p.numel() for p in self.blocks.parameters())
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> KVCache:
        return KVCache(max_len=self.config.max_seq_len)

    def forward(self, idx: Tensor, cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """Logits for ids `idx` (B, T).

        With a cache the ids continue the cached positions (the cache's `length` is advanced), so a
        prefix is fed once and each later call passes only the newest token(s). `last_only` returns
        (B, 1, V) logits of the final position, which is all generation needs.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} positions exceeds model.max_seq_len={self.config.max_seq_len}"
            )
        # cast the tables once per call to the dtype q and k will have (bf16 under autocast), not per block
        kind = idx.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else self.rope_cos.dtype
        cos = self.rope_cos[start : start + T].to(dtype)
        sin = self.rope_sin[start : start + T].to(dtype)
        x = self.embed(idx)  # (B, T, d)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, start)
        if cache is not None:
            cache.length = start + T
        if last_only:
            x = x[:, -1:]
        return self.head(self.norm(x))


def to_hf_llama(model: ARTransformer) -> nn.Module:
    """The same network as a Hugging Face `LlamaForCausalLM` (weights copied), for `generate` comparisons.

    The layouts coincide (RMSNorm, rotate-half rotary, SwiGLU, no biases, untied head); only the fused qkv
    matrix is split. Needs `transformers`, imported here so the library does not depend on it otherwise.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.config
    hf_config = LlamaConfig(
        vocab_size=model.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=round(cfg.mlp_ratio * cfg.hidden_size),
        num_hidden_layers=cfg.n_blocks,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    hf = LlamaForCausalLM(hf_config)
    d = cfg.hidden_size
    state = {
        "model.embed_tokens.weight": model.embed.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.head.weight,
    }
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.qkv.weight.split(d, dim=0)
        state |= {
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": block.attn.out.weight,
            p + "mlp.gate_proj.weight": block.mlp.gate.weight,
            p + "mlp.up_proj.weight": block.mlp.up.weight,
            p + "mlp.down_proj.weight": block.mlp.down.weight,
            p + "input_layernorm.weight": block.norm1.weight,
            p + "post_attention_layernorm.weight": block.norm2.weight,
        }
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise RuntimeError(f"weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    return hf.to(next(model.parameters()).device).eval()
