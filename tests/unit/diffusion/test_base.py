"""Shared pieces: vocabulary layout (spec §1.1), time sampling (§2.1), categorical sampling (§2.2, bug 23)."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from mmdlm.diffusion.base import (
    SamplingOptions,
    VocabLayout,
    denoiser_probs,
    low_discrepancy_times,
    padded_vocab_size,
    sample_categorical,
    sample_times,
    squeeze_times,
)


@pytest.mark.parametrize(
    ("vocab", "clusters", "rows"),
    [
        (50259, 0, 50304),
        (50259, 1, 50304),
        (50259, 2, 50304),
        (50259, 64, 50432),
        (50259, 128, 50432),
        (50259, 256, 50560),
        (30522, 64, 30592),
    ],
)
def test_vocab_rounding(vocab: int, clusters: int, rows: int) -> None:
    assert padded_vocab_size(vocab, clusters) == rows


def test_gpt2_layout_text_ids(vocab) -> None:
    layout = VocabLayout(
        vocab_size=50259, pad_id=50257, mask_id=50258, bos_id=50256, eos_id=50256, num_clusters=64
    )
    text = layout.text_mask()
    assert layout.rows == 50432 and layout.cluster_start == 50259
    assert text[:50257].all() and not text[50257:].any()  # no [PAD], [MASK], clusters or padding slots
    # [PAD] doubling as EOS stays emittable
    assert VocabLayout(vocab_size=10, pad_id=2, mask_id=9, eos_id=2).text_mask()[2]
    with pytest.raises(ValueError, match="mask_id"):
        VocabLayout(vocab_size=10, mask_id=10)


def test_low_discrepancy_reference_values() -> None:
    raw = low_discrepancy_times(torch.tensor(0.3), 4)
    torch.testing.assert_close(raw, torch.tensor([0.3, 0.55, 0.8, 0.05], dtype=torch.float64))
    torch.testing.assert_close(squeeze_times(raw, 1e-4), 0.9998 * raw + 1e-4)


@pytest.mark.parametrize("low_discrepancy", [True, False])
def test_sample_times_in_range(low_discrepancy: bool) -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.cat([sample_times(64, 1e-4, low_discrepancy, g, "cpu") for _ in range(50)])
    assert t.dtype == torch.float32 and t.min() >= 1e-4 and t.max() <= 1 - 1e-4
    if low_discrepancy:  # one offset per batch: sorted gaps are exactly 1/B (scaled)
        gaps = t[:64].double().sort().values.diff()
        torch.testing.assert_close(gaps, torch.full_like(gaps, 0.9998 / 64), atol=1e-6, rtol=0)


def test_bug23_sample_categorical_normalises_and_skips_zero_mass() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.2, 0.0, 0.3, 0.0], dtype=torch.float64)  # unnormalised (sum 0.5), trailing zero
    draws = sample_categorical(p.expand(200_000, 4), g)
    counts = torch.bincount(draws, minlength=4)
    assert counts[1] == 0 and counts[3] == 0
    assert abs(counts[0].item() / 200_000 - 0.4) < 0.005
    with pytest.raises(ValueError, match="positive"):
        sample_categorical(torch.zeros(2, 3), g)


def test_sample_categorical_chi_square() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(12, generator=g, dtype=torch.float64), 0)
    counts = torch.bincount(sample_categorical(p.expand(100_000, 12), g), minlength=12).double()
    assert stats.chisquare(counts.numpy(), (p * 100_000).numpy()).pvalue > 1e-3


def test_denoiser_probs_filters() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]))
    allowed = torch.tensor([True, True, True, True, False])
    p = denoiser_probs(logits, allowed)
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]], dtype=torch.float64))
    greedy = denoiser_probs(logits, allowed, SamplingOptions(temperature=0))
    assert greedy[0, 0] == 1 and greedy.sum() == 1
    top = denoiser_probs(logits, allowed, SamplingOptions(top_p=0.7))  # keeps 0.5 and 0.3
    torch.testing.assert_close(top[0, :2], torch.tensor([0.625, 0.375], dtype=torch.float64))
    assert top[0, 2:].sum() == 0
    minp = denoiser_probs(logits, allowed, SamplingOptions(min_p=0.25))  # threshold 0.125
    assert minp[0, 3] == 0 and minp[0, 2] > 0
    assert not denoiser_probs(torch.zeros(1, 5), allowed)[0, 4]
    cold = denoiser_probs(logits, allowed, SamplingOptions(temperature=0.5))
    torch.testing.assert_close(
        cold[0, :4], torch.tensor([0.25, 0.09, 0.0225, 0.0025], dtype=torch.float64) / 0.365
    )
