"""Generative perplexity under the offline reference LM (SmolLM2-135M from PyPI), always with entropy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmdlm.config.eval import EvalConfig
from mmdlm.data.vocab import VocabInfo
from mmdlm.eval.evaluate import evaluate
from mmdlm.eval.generative import score_samples
from mmdlm.eval.reference import SMOLLM2_ID, ReferenceLM
from mmdlm.eval.results import BUNDLED_CORPUS_NOTE, EvalProtocol
from mmdlm.training.debug import debug_train_config
from mmdlm.training.trainer import Trainer

pytestmark = pytest.mark.slow

TEXT = "The river flows through the old town and into the sea, where fishing boats wait for the morning tide."


@pytest.fixture(scope="module")
def reference() -> ReferenceLM:
    return ReferenceLM.load()  # converts the GGUF once, then loads the cached safetensors copy


def test_reference_scores_the_first_token_and_prefers_real_text(reference: ReferenceLM) -> None:
    assert reference.name == SMOLLM2_ID
    ids = reference.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    shuffled = " ".join(reversed(TEXT.split()))
    (nll_text, nll_shuffled), (n_text, n_shuffled) = reference.nll([TEXT, shuffled])
    assert n_text == len(ids)  # every token scored, the first one conditioned on <|endoftext|>
    assert math.exp(nll_text / n_text) < 0.5 * math.exp(nll_shuffled / n_shuffled)


def test_score_samples_reports_entropy_and_protocol(reference: ReferenceLM) -> None:
    vocab = VocabInfo(vocab_size=50, pad_id=0, mask_id=1, bos_id=2, eos_id=3)
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [7, 7, 7, 7, 0, 0]])
    result = score_samples(ids, [TEXT, "the the the"], vocab, reference, EvalProtocol(family="ar"))
    assert result.num_samples == 2 and result.protocol.reference_model == SMOLLM2_ID
    assert result.unigram_entropy == pytest.approx(math.log(4) / 2)  # [10..13] -> log 4, [7,7,7,7] -> 0
    assert result.gen_ppl == pytest.approx(math.exp(result.gen_nll)) and result.scored_tokens > 10


def test_evaluate_model_folder_end_to_end(
    reference: ReferenceLM, debug_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    Trainer(debug_train_config("mdlm", debug_dataset, run, overrides={"steps": 3})).train()
    cfg = EvalConfig.model_validate(
        {
            "dataset": str(debug_dataset),
            "max_batches": 2,
            "num_time_samples": 2,
            "generative": {"sample": {"num_samples": 3, "steps": 8, "seq_len": 16}, "steps_sweep": [2, 4]},
        }
    )
    report = evaluate(run / "final", cfg, reference=reference)
    assert report.nll is not None and report.nll.protocol.estimator == "elbo"
    assert report.nll.protocol.num_time_samples == 2 and report.nll.protocol.context_length == 64
    assert report.nll.protocol.tokens_seen == 3 * 16 * 64
    assert BUNDLED_CORPUS_NOTE in report.nll.protocol.notes
    gen = report.generative
    assert (
        gen is not None and gen.protocol.sampling_steps == 8 and gen.protocol.sampler_precision == "float64"
    )
    assert gen.unigram_entropy > 0 and gen.num_samples == 3 and gen.network_calls is not None
    assert report.data_reference is not None and report.data_reference.gen_ppl < gen.gen_ppl
    assert report.sweep is not None and [r.protocol.sampling_steps for r in report.sweep.rows] == [2, 4]
    json.dumps(report.to_dict())  # the whole report is JSON
