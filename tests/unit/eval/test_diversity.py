"""Sample statistics reported beside generative perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from mmdlm.data.vocab import VocabInfo
from mmdlm.eval.diversity import distinct_n, pooled_entropy, repetition_rate, token_entropy, unigram_entropy
from mmdlm.eval.generative import strip_specials


def test_entropy_values() -> None:
    assert token_entropy([]) == 0.0
    assert token_entropy([7, 7, 7, 7]) == 0.0
    assert token_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
    assert token_entropy([1, 1, 2, 3]) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    # per-sample entropy averaged, versus pooled over samples
    samples = [[1, 1, 1, 1], [2, 3, 2, 3]]
    assert unigram_entropy(samples) == pytest.approx(math.log(2) / 2)
    assert pooled_entropy(samples) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_distinct_and_repetition() -> None:
    samples = [[1, 2, 1, 2, 1, 2], [3, 4, 5, 6, 7, 8]]
    assert distinct_n(samples, 1) == pytest.approx(8 / 12)
    assert distinct_n(samples, 2) == pytest.approx((2 + 5) / 10)
    assert repetition_rate(samples, 2) == pytest.approx((1 - 2 / 5 + 0) / 2)


def test_strip_specials_removes_pad_mask_bos_eos() -> None:
    vocab = VocabInfo(vocab_size=10, pad_id=0, mask_id=1, bos_id=2, eos_id=3)
    assert strip_specials(torch.tensor([[2, 5, 6, 3, 0, 1]]), vocab) == [[5, 6]]
