"""Learning-rate schedules (formulas in `mmdlm.config.train.ScheduleSection`, spec §8.3)."""

from __future__ import annotations

import math

from mmdlm.config.train import ScheduleSection


def lr_at(step: int, peak: float, total_steps: int, cfg: ScheduleSection) -> float:
    """Learning rate of the optimizer step with 0-based index `step` (a pure function, so resume is exact)."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return peak * step / warmup
    if cfg.kind == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    r = cfg.min_lr_ratio
    if cfg.kind == "cosine":
        return peak * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return peak * (r + (1.0 - r) * (1.0 - progress))
