"""Reverse-process drivers: ancestral sampling (with output caching), self-correction, `generate`."""

from mmdlm.sampling.ancestral import AncestralSampler, SampleOutput, time_grid
from mmdlm.sampling.generate import generate
from mmdlm.sampling.self_correction import SelfCorrectionResult, self_correct

__all__ = [
    "AncestralSampler",
    "SampleOutput",
    "SelfCorrectionResult",
    "generate",
    "self_correct",
    "time_grid",
]
