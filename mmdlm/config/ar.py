"""`ARSpec`: the autoregressive baseline family (spec §6.3), a causal transformer the size of the DiT presets.

Importable without torch. The network is Llama-shaped (RMSNorm, SwiGLU MLP with `mlp_ratio * d` hidden
units, rotary positions, untied input and output embeddings, no biases), which is what the reference
baseline trains through `LlamaForCausalLM`; parameter counts therefore match the spec's table.
Sizes reuse the DiT presets (`DIT_PRESETS`: width, heads, blocks, context) so that an `ar` run at `small`
is the baseline of an `mdlm` run at `small`; `cond_dim` has no AR counterpart and is dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mmdlm.config.base import StrictModel
from mmdlm.config.model import DIT_PRESETS

_SHAPE_KEYS = ("hidden_size", "n_heads", "n_blocks", "max_seq_len")


class ARConfig(StrictModel):
    """Shape of the causal transformer. The vocabulary size is a runtime argument (the dataset's VocabInfo).

    Accepts a preset name (`"small"`) or a mapping with an optional `preset` key, like `DiTConfig`.
    """

    preset: str | None = None
    """Name in DIT_PRESETS the dimensions were taken from (informational once resolved)."""
    hidden_size: int = Field(768, gt=0)
    n_heads: int = Field(12, gt=0)
    n_blocks: int = Field(12, gt=0)
    max_seq_len: int = Field(512, ge=2)
    """Longest context the rotary tables cover; training rows and generation must fit in it."""
    mlp_ratio: float = Field(4.0, gt=0.0)
    """SwiGLU hidden width = round(mlp_ratio * hidden_size); 4 is the spec's `intermediate_size = 4d`."""
    rope_base: float = Field(10_000.0, gt=0.0)
    norm_eps: float = Field(1e-5, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_std: float = Field(0.02, gt=0.0)
    """Std of the normal init of embeddings and linears; residual output projections use
    init_std / sqrt(2 * n_blocks) so the residual stream does not grow with depth (GPT-2 practice)."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_preset(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"preset": data}
        if isinstance(data, dict) and data.get("preset") is not None:
            name = data["preset"]
            if name not in DIT_PRESETS:
                raise ValueError(f"unknown size preset {name!r}; choose one of {', '.join(DIT_PRESETS)}")
            data = {**{k: DIT_PRESETS[name][k] for k in _SHAPE_KEYS}, **data}
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> ARConfig:
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by n_heads ({self.n_heads})"
            )
        if (self.hidden_size // self.n_heads) % 2:
            raise ValueError(
                f"head size hidden_size/n_heads = {self.hidden_size // self.n_heads} must be even for rotary "
                "embeddings; change hidden_size or n_heads"
            )
        return self


class ARSpec(StrictModel):
    """The `ar` family: exact next-token likelihood, KV-cached ancestral generation."""

    family: Literal["ar"] = "ar"
    model: ARConfig = Field(default_factory=lambda: ARConfig.model_validate("small"))
