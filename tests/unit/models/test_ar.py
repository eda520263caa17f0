"""The AR baseline: parameter counts (spec §6.3), KV cache, generation and its exact NLL (spec bug 18)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmdlm.config.ar import ARConfig, ARSpec
from mmdlm.config.sample import SampleConfig
from mmdlm.data.vocab import VocabInfo
from mmdlm.families import get_family
from mmdlm.families.ar import ARObjective, filter_probs, sample_ar, shift_right
from mmdlm.models.ar import ARTransformer

VOCAB = VocabInfo(vocab_size=40, pad_id=0, mask_id=1, bos_id=2, eos_id=3)


@pytest.mark.parametrize(
    ("size", "layers", "total"),
    [("small", 113.26e6, 190.46e6), ("base", 402.70e6, 505.63e6)],
)
def test_parameter_counts_match_spec(size: str, layers: float, total: float) -> None:
    with torch.device("meta"):
        model = ARTransformer(ARConfig.model_validate(size), vocab_size=50259)
    assert model.num_params(non_embedding=True) == pytest.approx(layers, abs=0.005e6)
    assert model.num_params() == pytest.approx(total, abs=0.005e6)
    d, n = model.config.hidden_size, model.config.n_blocks
    assert model.num_params(non_embedding=True) == n * (16 * d * d + 2 * d)  # SwiGLU 4d + attention + 2 norms


def _model(seed: int = 0, max_len: int = 32) -> ARTransformer:
    torch.manual_seed(seed)
    return ARTransformer(ARConfig.model_validate({"preset": "cpu-nano", "max_seq_len": max_len}), 40).eval()


def test_kv_cache_chunks_equal_full_forward() -> None:
    model = _model()
    x = torch.randint(4, 40, (3, 20))
    full = model(x)
    cache = model.new_cache()
    parts = [model(x[:, :7], cache), model(x[:, 7:12], cache)]  # a prefix, then a chunk after it
    parts += [model(x[:, i : i + 1], cache) for i in range(12, 20)]  # then one token at a time
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 40, dtype=torch.long))


def test_cached_generation_equals_uncached() -> None:
    model = _model()
    prefix = torch.tensor([5, 6, 7])
    kw = {"num_samples": 4, "seq_len": 24, "prefix": prefix, "temperature": 0.9, "top_p": 0.95}
    cached, calls = sample_ar(model, VOCAB, use_cache=True, generator=torch.Generator().manual_seed(1), **kw)
    plain, _ = sample_ar(model, VOCAB, use_cache=False, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(cached, plain)
    assert cached.shape == (4, 24) and calls == 24 - 3
    assert torch.equal(cached[:, :3], prefix.expand(4, 3))
    assert not bool(((cached == VOCAB.pad_id) | (cached == VOCAB.mask_id)).any())


def test_filter_probs_top_p_and_min_p() -> None:
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    torch.testing.assert_close(
        filter_probs(p, top_p=0.8, min_p=None), torch.tensor([[0.625, 0.375, 0, 0]]).double()
    )
    torch.testing.assert_close(
        filter_probs(p, top_p=0.1, min_p=None), torch.tensor([[1.0, 0, 0, 0]]).double()
    )
    torch.testing.assert_close(
        filter_probs(p, top_p=None, min_p=0.25), torch.tensor([[0.5, 0.3, 0.15, 0]]).double() / 0.95
    )


def test_objective_is_exact_nll_over_non_pad_targets() -> None:
    """Every non-pad token is scored once, x_0 from BOS; the PAD after EOS is NOT a target (spec bug 18)."""
    model = _model()
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0, 0], [20, 21, 22, 23, 24, 25, 26, 27]])
    nll, counts = ARObjective(VOCAB).nll_bound(model, {"input_ids": ids}, num_samples=1)
    logp = F.log_softmax(model(shift_right(ids, VOCAB.bos_id)).double(), dim=-1)
    for b in range(2):
        n = int((ids[b] != 0).sum())
        direct = -sum(logp[b, i, ids[b, i]].item() for i in range(n))  # targets 0..n-1, nothing after EOS
        assert nll[b].item() == pytest.approx(direct, rel=1e-6)
        assert counts[b].item() == n
    out = ARObjective(VOCAB)(model, {"input_ids": ids})
    assert out.num_tokens.item() == 13
    assert out.loss.item() == pytest.approx(nll.sum().item() / 13, rel=1e-6)


def test_family_generate_is_seeded_and_rejects_infill() -> None:
    family = get_family("ar")
    built = family.build(
        ARSpec(model=ARConfig.model_validate({"preset": "cpu-nano", "max_seq_len": 16})), VOCAB
    )
    cfg = SampleConfig(num_samples=3, seq_len=10, batch_size=2, seed=7)
    a, b = family.generate(built, cfg), family.generate(built, cfg)
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape == (3, 10) and a.nfe == 20
    with pytest.raises(ValueError, match="infill"):
        family.generate(built, cfg, infill=torch.full((10,), -1))


def test_untrained_model_predicts_near_uniform() -> None:
    out = ARObjective(VOCAB)(_model(), {"input_ids": torch.randint(4, 40, (4, 16))})
    assert out.loss.item() == pytest.approx(math.log(40), abs=0.05)
