"""The default encoder: the library path equals sentence-transformers' own `encode` and is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from mmdlm.encoders import load_encoder

from .conftest import MINILM, TEXTS

LONG = "Diffusion models learn to reverse a noising process, one step at a time. " * 30  # > 256 tokens


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm")


def test_minilm_equals_sentence_transformers(minilm) -> None:
    texts = [*TEXTS, LONG, "", "Ünïcödé façade — naïve café."]
    ours = minilm.encode(texts, batch_size=3)
    reference = SentenceTransformer(str(MINILM), device="cpu").encode(texts, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_minilm_deterministic_and_order_independent(minilm) -> None:
    first = minilm.encode(TEXTS)
    again = minilm.encode(TEXTS)
    np.testing.assert_array_equal(first, again)
    reversed_out = minilm.encode(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(first, reversed_out, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


def test_minilm_describe_records_recipe(minilm) -> None:
    info = minilm.describe()
    assert info["name"] == "minilm" and info["dim"] == 384 and info["max_tokens"] == 256
    assert info["recipe"]["pooling"] == "mean" and info["recipe"]["normalize"] is True
    assert info["recipe"]["passage_prefix"] == ""


def test_minilm_bf16_autocast_close_to_fp32(minilm) -> None:
    bf16 = load_encoder("minilm", precision="bf16")
    a, b = minilm.encode(TEXTS), bf16.encode(TEXTS)
    assert b.dtype == np.float32
    assert (a * b).sum(axis=1).min() > 0.99
