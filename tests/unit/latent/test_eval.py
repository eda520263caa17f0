"""Latent evaluation: protocols and baselines on every number, STS from a local file (B19), and the
`mmdlm eval` path for a latent model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmdlm.config.eval import EvalConfig
from mmdlm.config.latent import LatentSampleConfig
from mmdlm.data.latent import LatentDataset
from mmdlm.eval.evaluate import evaluate
from mmdlm.eval.latent import l2t_round_trip, load_sts, sts_correlation, t2l_cosine
from mmdlm.pipeline import load_pretrained

FAST = LatentSampleConfig(text_steps=2, latent_steps=2)


def test_t2l_and_round_trip_carry_baselines_and_protocol(model_dir: Path, latent_dataset) -> None:
    pipe = load_pretrained(model_dir)
    data = LatentDataset.open(latent_dataset[1])
    t2l = t2l_cosine(pipe, data, num_rows=4, sample=FAST, num_draws=2)
    assert {"t2l_cosine", "t2l_mean_cosine", "mean_latent_cosine"} <= set(t2l)
    assert -1 <= t2l["t2l_cosine"] <= 1 and t2l["num_draws"] == 2
    assert (
        t2l["protocol"]["baseline"] == "train-split mean latent" and t2l["protocol"]["split"] == "validation"
    )
    assert t2l["protocol"]["encoder"]["name"] == "minilm"
    rt = l2t_round_trip(pipe, data, num_rows=3, sample=FAST)
    assert {"l2t_round_trip_cosine", "unconditional_cosine", "win_rate"} <= set(rt)
    assert "unconditional" in rt["protocol"]["baseline"] and len(rt["examples"]) == 3


def test_b19_sts_reports_correlations_only(model_dir: Path, tmp_path: Path) -> None:
    sts = tmp_path / "sts.tsv"
    rows = [
        ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
        ("A dog runs in the park.", "A cat sleeps on a sofa.", 0.6),
        ("The river floods the valley.", "Water covers the valley after rain.", 3.2),
        ("Kings ruled the land.", "A violin concert in the evening.", 0.2),
    ]
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    s1, s2, scores = load_sts(sts)
    assert len(s1) == 4 and scores[0] == 4.8
    result = sts_correlation(load_pretrained(model_dir), sts, sample=FAST)
    assert {"spearman", "pearson", "oracle_spearman", "oracle_pearson", "num_pairs"} <= set(result)
    assert "mae" not in result and "rmse" not in result
    assert result["oracle_spearman"] > 0.5  # MiniLM itself orders these pairs well
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="need columns sentence1, sentence2, score"):
        load_sts(bad)


def test_mmdlm_eval_on_a_latent_model(model_dir: Path, latent_dataset) -> None:
    config = EvalConfig.model_validate(
        {
            "dataset": str(latent_dataset[1]),
            "num_time_samples": 1,
            "max_batches": 1,
            "batch_size": 4,
            "generative": None,
            "device": "cpu",
            "latent": {"t2l_rows": 3, "round_trip_rows": 2, "sample": FAST.model_dump()},
        }
    )
    report = evaluate(model_dir, config)
    assert report.nll is not None and report.nll.protocol.estimator == "elbo"
    assert set(report.latent) == {"t2l", "round_trip"}
    assert report.to_dict()["latent"]["t2l"]["num_rows"] == 3
