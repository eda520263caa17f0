"""LR schedules against the spec's reference values (§8.3, §12 item 11)."""

from __future__ import annotations

import math

import pytest

from mmdlm.config.train import ScheduleSection
from mmdlm.training.schedule import lr_at

PEAK, W, S = 5e-4, 10_000, 1_131_000


def test_cosine_reference_points() -> None:
    cfg = ScheduleSection(kind="cosine", warmup_steps=W, min_lr_ratio=0.1)
    assert lr_at(0, PEAK, S, cfg) == 0.0
    assert lr_at(W // 2, PEAK, S, cfg) == pytest.approx(PEAK / 2)
    assert lr_at(W, PEAK, S, cfg) == pytest.approx(PEAK)
    mid = W + (S - W) // 2
    assert lr_at(mid, PEAK, S, cfg) == pytest.approx(PEAK * (0.1 + 0.9 * 0.5), rel=1e-6)
    assert lr_at(S, PEAK, S, cfg) == pytest.approx(0.1 * PEAK)
    # the spec's formula, step by step after warmup
    for step in (W + 1, W + 12_345, S - 1):
        expected = PEAK * (0.1 + 0.9 * (1 + math.cos(math.pi * (step - W) / (S - W))) / 2)
        assert lr_at(step, PEAK, S, cfg) == pytest.approx(expected, rel=1e-12)


def test_linear_matches_spec_with_zero_floor() -> None:
    cfg = ScheduleSection(kind="linear", warmup_steps=W, min_lr_ratio=0.0)
    for step in (0, 17, W, W + 1000, S - 5, S):
        spec = PEAK * min(1.0, step / W, 1 - (step - W) / (S - W))
        assert lr_at(step, PEAK, S, cfg) == pytest.approx(spec, abs=1e-15)


def test_constant_warms_up_then_holds() -> None:
    cfg = ScheduleSection(kind="constant", warmup_steps=100)
    assert lr_at(0, PEAK, 1000, cfg) == 0.0
    assert lr_at(50, PEAK, 1000, cfg) == pytest.approx(PEAK / 2)
    assert lr_at(100, PEAK, 1000, cfg) == PEAK
    assert lr_at(999, PEAK, 1000, cfg) == PEAK


def test_no_warmup_starts_at_peak() -> None:
    cfg = ScheduleSection(kind="cosine", warmup_steps=0, min_lr_ratio=0.1)
    assert lr_at(0, PEAK, 100, cfg) == pytest.approx(PEAK)
