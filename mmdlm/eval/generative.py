"""Generative perplexity of samples (or of real rows) under a reference LM, with diversity beside it.

The samples' token ids are decoded with the generating tokenizer (special tokens removed) and re-tokenized
by the reference (see `mmdlm.eval.reference`). gen_ppl = exp(sum of reference NLL / scored tokens), a
token-weighted mean. The entropy and distinct-n statistics are computed on the generating tokenizer's ids
(specials removed), so they do not depend on the reference model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from mmdlm.data.vocab import VocabInfo
from mmdlm.eval.diversity import diversity_report
from mmdlm.eval.reference import ReferenceLM
from mmdlm.eval.results import EvalProtocol, GenerativeResult


def strip_specials(ids: Tensor, vocab: VocabInfo) -> list[list[int]]:
    """(N, L) ids -> per-row lists without PAD, MASK, BOS and EOS."""
    special = {vocab.pad_id, vocab.mask_id, vocab.bos_id, vocab.eos_id}
    return [[t for t in row if t not in special] for row in ids.tolist()]


def score_samples(
    ids: Tensor,
    texts: Sequence[str],
    vocab: VocabInfo,
    reference: ReferenceLM,
    protocol: EvalProtocol,
    *,
    batch_size: int = 8,
    network_calls: int | None = None,
    sampling_s: float | None = None,
    num_examples: int = 3,
) -> GenerativeResult:
    """Generative perplexity and diversity of N samples: `ids` (N, L) and their decoded `texts`."""
    if len(texts) != ids.shape[0] or not texts:
        raise ValueError(f"need one text per sample row, got {len(texts)} texts for {ids.shape[0]} rows")
    nll_sums, counts = reference.nll(list(texts), batch_size=batch_size)
    scored = sum(counts)
    gen_nll = sum(nll_sums) / max(scored, 1)
    tokens = strip_specials(ids, vocab)
    diversity = diversity_report(tokens)
    return GenerativeResult(
        gen_ppl=math.exp(min(gen_nll, 700.0)),
        gen_nll=gen_nll,
        scored_tokens=scored,
        num_samples=len(texts),
        mean_sample_tokens=sum(len(t) for t in tokens) / len(tokens),
        network_calls=network_calls,
        sampling_s=sampling_s,
        examples=list(texts[:num_examples]),
        protocol=protocol.model_copy(update={"reference_model": reference.name, "num_samples": len(texts)}),
        **diversity,
    )
