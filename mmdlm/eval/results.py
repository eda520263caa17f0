"""Evaluation results as pydantic models that always carry the protocol they were measured under.

A number without its protocol (split, context length, estimator, steps, sampler precision, reference
model, ...) cannot be compared with another, so every result embeds an `EvalProtocol`; `to_dict()` gives
the JSON written by `mmdlm eval` and returned by the services.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import mmdlm

BUNDLED_CORPUS_NOTE = (
    "bundled corpus: an unusual mix of encyclopedic English (Wikipedia lead sections) and Early Modern "
    "English (King James Bible, Shakespeare); numbers on it are not comparable with OpenWebText or LM1B results"
)


class EvalProtocol(BaseModel):
    """How a number was measured. Fields that do not apply to a result stay None."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """Model folder or run directory evaluated."""
    family: str | None = None
    dataset: str | None = None
    """Dataset folder; `dataset_source` says what corpus it was prepared from."""
    dataset_source: dict[str, Any] | None = None
    tokenizer: str | None = None
    split: str | None = None
    context_length: int | None = None
    tokens_seen: int | None = None
    """Training tokens (non-pad) the model had seen, from its training state."""
    estimator: str | None = None
    """`exact` (AR next-token NLL) or `elbo` (diffusion: Monte-Carlo ELBO, stratified times)."""
    num_time_samples: int | None = None
    sampling_steps: int | None = None
    sampler_precision: str | None = None
    """Dtype of the sampler's step probabilities and categorical draws (float64 by default)."""
    sample_settings: dict[str, Any] | None = None
    reference_model: str | None = None
    num_samples: int | None = None
    seed: int | None = None
    precision: str | None = None
    """Dtype of the network forward during the measurement (fp32, or bf16 autocast)."""
    mmdlm_version: str = mmdlm.__version__
    notes: list[str] = Field(default_factory=list)


class NLLResult(BaseModel):
    """Validation NLL: exact for AR, an upper bound (negative ELBO) for diffusion families.

    Per-token values are total nats over total non-pad tokens (token-weighted, float64 sums all-reduced
    over ranks, spec §11 bug 16), so a long sequence weighs more than a short one.
    """

    nll: float
    """nats per token"""
    bits_per_token: float
    ppl: float
    tokens: int
    sequences: int
    protocol: EvalProtocol

    @classmethod
    def from_sums(cls, nll_sum: float, tokens: int, sequences: int, protocol: EvalProtocol) -> NLLResult:
        nll = nll_sum / max(tokens, 1)
        return cls(
            nll=nll,
            bits_per_token=nll / math.log(2),
            ppl=math.exp(min(nll, 700.0)),
            tokens=tokens,
            sequences=sequences,
            protocol=protocol,
        )


class GenerativeResult(BaseModel):
    """Generative perplexity of samples under a reference causal LM, always with their diversity.

    gen_ppl = exp(total reference NLL / total scored reference tokens). Low gen_ppl with low entropy means
    repetitive text, not good text.
    """

    gen_ppl: float
    gen_nll: float
    """nats per reference token"""
    scored_tokens: int
    unigram_entropy: float
    """mean per-sample unigram entropy (nats) of the samples' token ids (generating tokenizer, specials removed)"""
    pooled_entropy: float
    distinct_1: float
    distinct_2: float
    distinct_3: float
    repetition_4: float
    num_samples: int
    mean_sample_tokens: float
    network_calls: int | None = None
    sampling_s: float | None = None
    examples: list[str] = Field(default_factory=list)
    protocol: EvalProtocol


class SweepResult(BaseModel):
    """Quality against the number of sampling steps (one GenerativeResult per step count)."""

    rows: list[GenerativeResult]
    protocol: EvalProtocol


class EvalReport(BaseModel):
    """What `mmdlm eval` returns: any of validation NLL, generative quality, a steps sweep, and the same
    generative metrics computed on real validation rows as a reference point."""

    nll: NLLResult | None = None
    generative: GenerativeResult | None = None
    data_reference: GenerativeResult | None = None
    sweep: SweepResult | None = None
    latent: dict[str, Any] | None = None
    """Latent families: t2l cosine, l2t round trip, STS, each with its baseline and protocol."""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
