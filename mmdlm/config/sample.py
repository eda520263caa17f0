"""SampleConfig: how to draw samples from any family (steps apply to diffusion families only)."""

from __future__ import annotations

from pydantic import Field

from mmdlm.config.base import StrictModel


class SampleConfig(StrictModel):
    """Sampling settings. Every field is validated here so that a bad request fails before any compute."""

    num_samples: int = Field(8, ge=1)
    seq_len: int | None = Field(None, ge=1)
    """Length of each sample in tokens; None means the model's max_seq_len."""
    batch_size: int | None = Field(None, ge=1)
    """Samples drawn per network batch; None (or a value above num_samples) draws all at once."""
    steps: int = Field(128, ge=1)
    """Number of reverse steps T (one network call each, fewer with `cached`)."""
    temperature: float = Field(1.0, ge=0.0)
    """0 is greedy: every revealed token is the denoiser's argmax."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, lt=1.0)
    """Drop tokens whose probability is below min_p times the most likely token's."""
    float64: bool = True
    """Step probabilities and categorical draws in float64 (default; evaluation should keep it)."""
    cached: bool = False
    """Skip the network call when no position changed since the previous call and reuse its output. Exact for
    a time-independent denoiser (model.time_conditioning=false); with time conditioning it reuses the
    prediction made at the earlier time (MDLM's ddpm_cache approximation)."""
    self_correction_steps: int = Field(0, ge=0)
    """After sampling, up to this many self-correction iterations (spec §5.6); 0 disables it."""
    self_correction_t: float = Field(0.01, gt=0.0, lt=1.0)
    self_correction_temperature: float = Field(0.1, gt=0.0)
    self_correction_tokens_per_step: int = Field(1, ge=1)
    self_correction_patience: int = Field(32, ge=1)
    seed: int = 0
    compile: bool = False
    """torch.compile the network forward the sampler calls (compiled once per model and process, then reused;
    the first call pays the compile). Off by default: on the 2-core CPU of bench/families.py a compile costs
    30-110 s per network and precision, more than a whole 8 x 128 sampling run, and the sampling win was not
    stable across runs; worth turning on for long-lived CUDA samplers, where the compile is paid once."""
