"""Network configs (DiT), size presets, and the family specs of the discrete diffusion families.

A family spec is what a training config names under `family`: the tag, the network and the noise process.
`DiTConfig` accepts a preset name (`"small"`) or a mapping with an optional `preset` key whose fields are
filled from the preset and overridden by any explicit key, so `--set model.max_seq_len=128` works on top of
a preset. The dump always holds every dimension, so a saved config rebuilds the same network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mmdlm.config.base import StrictModel
from mmdlm.config.diffusion import GIDDProcessConfig, HDLMProcessConfig, MDLMProcessConfig

# Spec §6.2 (tiny..1B) plus CPU-sized presets for tests and the demo (a few hundred K to a few M parameters
# with an 8k-token vocabulary).
DIT_PRESETS: dict[str, dict[str, Any]] = {
    "cpu-nano": {"hidden_size": 64, "n_heads": 2, "n_blocks": 2, "cond_dim": 64, "max_seq_len": 128},
    "cpu-micro": {"hidden_size": 128, "n_heads": 4, "n_blocks": 4, "cond_dim": 128, "max_seq_len": 256},
    "tiny": {"hidden_size": 512, "n_heads": 8, "n_blocks": 8, "cond_dim": 128, "max_seq_len": 512},
    "small": {"hidden_size": 768, "n_heads": 12, "n_blocks": 12, "cond_dim": 128, "max_seq_len": 512},
    "base": {"hidden_size": 1024, "n_heads": 16, "n_blocks": 24, "cond_dim": 128, "max_seq_len": 512},
    "1B": {"hidden_size": 2048, "n_heads": 32, "n_blocks": 24, "cond_dim": 128, "max_seq_len": 512},
}


class DiTConfig(StrictModel):
    """Diffusion Transformer dimensions (spec §6.1). Vocabulary size and cluster count are runtime arguments
    of the network (they come from the tokenizer and the cluster artifact), not part of this config."""

    preset: str | None = None
    """Name in DIT_PRESETS the dimensions were taken from (informational once resolved)."""
    hidden_size: int = Field(768, gt=0)
    n_heads: int = Field(12, gt=0)
    n_blocks: int = Field(12, gt=0)
    cond_dim: int = Field(128, gt=0)
    """Width of the time conditioning vector fed to every adaLN modulation."""
    max_seq_len: int = Field(512, gt=0)
    mlp_ratio: int = Field(4, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    rope_base: float = Field(10000.0, gt=0.0)
    time_conditioning: bool = True
    """False makes the denoiser time-independent (as MDLM): the network sees t = 0 always, so a sampler may
    reuse its output whenever the input did not change (exact caching)."""
    time_scale: float = Field(1.0, gt=0.0)
    """t is multiplied by this before the sinusoidal embedding. 1.0 is the spec's (and GIDD's) raw t in [0,1],
    for which most of the 256 features are nearly constant (spec §11 item 26); 1000 spreads them out."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_preset(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"preset": data}
        if isinstance(data, dict) and data.get("preset") is not None:
            name = data["preset"]
            if name not in DIT_PRESETS:
                raise ValueError(f"unknown DiT preset {name!r}; choose one of {', '.join(DIT_PRESETS)}")
            data = {**DIT_PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> DiTConfig:
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads


class MDLMSpec(StrictModel):
    """Masked diffusion LM: DiT + absorbing process."""

    family: Literal["mdlm"] = "mdlm"
    model: DiTConfig = Field(default_factory=lambda: DiTConfig.model_validate("small"))
    process: MDLMProcessConfig = Field(default_factory=MDLMProcessConfig)


class GIDDSpec(StrictModel):
    """GIDD+: DiT + hybrid mask/uniform process."""

    family: Literal["gidd"] = "gidd"
    model: DiTConfig = Field(default_factory=lambda: DiTConfig.model_validate("small"))
    process: GIDDProcessConfig = Field(default_factory=GIDDProcessConfig)


class HDLMSpec(StrictModel):
    """Hierarchical diffusion LM: DiT (token head, optional cluster head) + hierarchical process.

    `clusters` is a directory written by `mmdlm.clusters` (manifest.json, cluster_map.npy, centroids.npy);
    a saved HDLM model folder holds its own copy under `clusters/`.
    """

    family: Literal["hdlm"] = "hdlm"
    model: DiTConfig = Field(default_factory=lambda: DiTConfig.model_validate("small"))
    process: HDLMProcessConfig = Field(default_factory=HDLMProcessConfig)
    clusters: str
    """Path of the cluster artifact directory."""
    embed_init: Literal["random", "centroids"] = "random"
    """`centroids`: initialise the cluster rows of the embedding from the cluster centroids, and the token rows
    from the source checkpoint when the clusters were computed from one (spec §6.4). Needs centroid width ==
    hidden_size."""

    @model_validator(mode="after")
    def _check_clusters(self) -> HDLMSpec:
        if not self.clusters:
            raise ValueError("clusters: give the path of a cluster directory (see `mmdlm clusters`)")
        return self

    @property
    def clusters_path(self) -> Path:
        return Path(self.clusters)


DiscreteSpec = MDLMSpec | GIDDSpec | HDLMSpec
