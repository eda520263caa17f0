"""AR decoding after the issue-12 rewrite: the same draws as the multinomial reference, and the same network
as Hugging Face's LlamaForCausalLM (what bench/families.py compares `generate` against)."""

from __future__ import annotations

import pytest
import torch

from mmdlm.config.ar import ARConfig
from mmdlm.data.vocab import VocabInfo
from mmdlm.families.ar import sample_ar
from mmdlm.models.ar import ARTransformer, to_hf_llama

VOCAB = VocabInfo(vocab_size=40, pad_id=0, mask_id=1, bos_id=2, eos_id=3)


def _model() -> ARTransformer:
    torch.manual_seed(0)
    config = ARConfig(hidden_size=32, n_heads=4, n_blocks=2, max_seq_len=32)
    return ARTransformer(config, vocab_size=VOCAB.vocab_size).eval()


def _reference(model: ARTransformer, n: int, length: int, temperature: float, seed: int) -> torch.Tensor:
    """The plain loop: full prefix each step, float64 softmax, torch.multinomial."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.full((n, 1), VOCAB.bos_id)
    with torch.no_grad():
        for _ in range(length):
            logits = model(seq)[:, -1].double()
            logits[:, [VOCAB.pad_id, VOCAB.mask_id]] = -torch.inf
            probs = torch.softmax(logits / temperature, dim=-1)
            seq = torch.cat([seq, torch.multinomial(probs, 1, generator=g)], dim=1)
    return seq[:, 1:]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cached_decode_draws_what_multinomial_draws(temperature: float) -> None:
    model = _model()
    ids, calls = sample_ar(
        model, VOCAB, num_samples=6, seq_len=20, temperature=temperature,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    assert calls == 20
    assert torch.equal(ids, _reference(model, 6, 20, temperature, seed=3))


def test_hf_llama_copy_has_the_same_logits() -> None:
    model = _model()
    hf = to_hf_llama(model)
    ids = torch.randint(4, VOCAB.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=1e-5, atol=1e-5)
