"""Each recipe's prefix, pooling, truncation and normalisation, checked against a manual computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from transformers import AutoModel, AutoTokenizer, T5EncoderModel

from mmdlm.config.latent import EncoderConfig
from mmdlm.encoders import get_recipe, load_encoder, recipe_names

from .conftest import TEXTS


def _manual(path: str, text: str, pooling: str, t5: bool = False, max_tokens: int = 128) -> np.ndarray:
    """One text, no padding at all: the reference any batched path must reproduce."""
    tok = AutoTokenizer.from_pretrained(path)
    model = (T5EncoderModel if t5 else AutoModel).from_pretrained(path).eval()
    ids = tok(text, truncation=True, max_length=max_tokens, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state[0]
    vec = {"mean": hidden.mean(0), "cls": hidden[0], "last": hidden[-1]}[pooling]
    return F.normalize(vec, dim=-1).numpy()


def test_registry_lists_every_recipe() -> None:
    assert recipe_names() == ["minilm", "e5", "bge-m3", "qwen3", "t5", "sonar"]
    with pytest.raises(ValueError, match="unknown encoder 'nope'"):
        get_recipe("nope")
    with pytest.raises(ValidationError):
        EncoderConfig(name="nope")


def test_e5_prefixes_passage_and_query(tiny_models: dict[str, str]) -> None:
    enc = load_encoder("e5", model=tiny_models["bert"], max_tokens=128)
    passage = enc.encode(TEXTS, role="passage")
    query = enc.encode(TEXTS, role="query")
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(
            passage[i], _manual(tiny_models["bert"], "passage: " + text, "mean"), atol=1e-5
        )
        np.testing.assert_allclose(
            query[i], _manual(tiny_models["bert"], "query: " + text, "mean"), atol=1e-5
        )
    assert not np.allclose(passage, query)
    np.testing.assert_allclose(np.linalg.norm(passage, axis=1), 1.0, atol=1e-5)


def test_bge_m3_pools_cls(tiny_models: dict[str, str]) -> None:
    enc = load_encoder("bge-m3", model=tiny_models["bert"], max_tokens=128)
    out = enc.encode(TEXTS)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(out[i], _manual(tiny_models["bert"], text, "cls"), atol=1e-5)


def test_qwen3_last_token_left_padding_and_instruction(tiny_models: dict[str, str]) -> None:
    enc = load_encoder("qwen3", model=tiny_models["qwen"], max_tokens=128, instruction="Find similar text")
    assert enc.tokenizer is not None and get_recipe("qwen3").padding_side == "left"
    passage = enc.encode(TEXTS)
    query = enc.encode(TEXTS, role="query")
    for i, text in enumerate(TEXTS):
        # batched left-padded rows equal the unpadded single-text computation
        np.testing.assert_allclose(passage[i], _manual(tiny_models["qwen"], text, "last"), atol=1e-5)
        expected = _manual(tiny_models["qwen"], "Instruct: Find similar text\nQuery:" + text, "last")
        np.testing.assert_allclose(query[i], expected, atol=1e-5)


def test_qwen3_matryoshka_truncates_then_renormalizes(tiny_models: dict[str, str]) -> None:
    full = load_encoder("qwen3", model=tiny_models["qwen"], max_tokens=128).encode(TEXTS)
    small = load_encoder("qwen3", model=tiny_models["qwen"], max_tokens=128, dim=8).encode(TEXTS)
    assert small.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-5)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expected, atol=1e-5)


def test_b17_t5_mean_pool_excludes_padding(tiny_models: dict[str, str]) -> None:
    enc = load_encoder("t5", model=tiny_models["t5"])
    batched = enc.encode(TEXTS)  # "short" is padded up to the longest text in its batch
    alone = enc.encode(["short"])
    np.testing.assert_allclose(batched[2], alone[0], atol=1e-5)
    np.testing.assert_allclose(batched[2], _manual(tiny_models["t5"], "short", "mean", t5=True), atol=1e-5)


def test_dim_refused_without_matryoshka(tiny_models: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"encoder\.dim=8.*'e5'"):
        load_encoder("e5", model=tiny_models["bert"], max_tokens=128, dim=8)


def test_max_tokens_beyond_positions_refused(tiny_models: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"encoder\.max_tokens=512 exceeds"):
        load_encoder(
            "e5", model=tiny_models["bert"]
        )  # e5 truncates at 512; this tiny model has 128 positions


def test_truncation_at_max_tokens(tiny_models: dict[str, str]) -> None:
    enc = load_encoder("bge-m3", model=tiny_models["bert"], max_tokens=8)
    long = "word " * 50
    same_prefix = "word " * 20
    np.testing.assert_allclose(enc.encode([long]), enc.encode([same_prefix]), atol=1e-6)


def test_sonar_missing_package_names_it() -> None:
    pytest.importorskip("torch")
    try:
        import sonar  # noqa: F401

        pytest.skip("sonar is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="sonar-space"):
        load_encoder("sonar")


def test_single_string_refused(tiny_models: dict[str, str]) -> None:
    enc = load_encoder("bge-m3", model=tiny_models["bert"], max_tokens=128)
    with pytest.raises(TypeError, match="single str"):
        enc.encode("a text")
    assert enc.encode([]).shape == (0, 32)
