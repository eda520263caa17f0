"""Latent evaluation (spec §4 [rec], fixing B19): every number comes with its baseline and protocol.

* t2l cosine: the model's latent for held-out text (DDIM x0_hat) against the encoder's latent of that
  text; baseline: the train-split mean latent (what a model that ignores the text would predict best).
* STS: cosine of the two sentences' t2l latents against human scores, Spearman and Pearson, next to the
  encoder's own (oracle) correlation. No MAE/RMSE: a cosine and a 0-5 score are on different scales (B19).
* l2t round trip: text generated from a held-out latent, re-encoded with the same encoder recipe, cosine to
  that latent; baseline: unconditional samples (the null condition) of the same lengths, against the same
  latents. Lengths are the held-out rows' own, for both, so the baseline differs only in the condition.

Text ELBO, generative perplexity and entropy come from `mmdlm.eval.evaluate` (the same code as every family).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from mmdlm.config.latent import LatentSampleConfig
from mmdlm.data.latent import LatentDataset
from mmdlm.families import get_family
from mmdlm.sampling.latent_io import encode_texts, tokenize_rows

STSB_HF = "mteb/stsbenchmark-sts"


def _rows(split: Any, n: int | None) -> np.ndarray:
    """n held-out rows spread evenly over the split (deterministic)."""
    total = len(split)
    n = total if n is None else min(n, total)
    return np.linspace(0, total - 1, n).round().astype(np.int64)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


def _protocol(
    pipe: Any, dataset: LatentDataset | None, sample: LatentSampleConfig, **extra: Any
) -> dict[str, Any]:
    trained = pipe.trained or {}
    return {
        "model": str(pipe.path) if pipe.path else None,
        "family": pipe.family,
        "dataset": dataset.describe() if dataset is not None else None,
        "tokens_seen": trained.get("tokens_seen"),
        "sample": sample.model_dump(mode="json"),
        "encoder": pipe.spec.encoder.model_dump(mode="json") if pipe.spec.encoder is not None else None,
        **extra,
    }


def _batched(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def t2l_latents(
    pipe: Any, ids: np.ndarray, mask: np.ndarray, sample: LatentSampleConfig, batch_size: int = 64
) -> np.ndarray:
    """(N, D) encoder-space latents the model assigns to token rows (N, L)."""
    family = get_family(pipe.family)
    out = []
    for part in _batched(len(ids), batch_size):
        gen = torch.Generator().manual_seed(sample.seed + part.start)
        res = family.generate(
            pipe.built, sample.model_copy(update={"mode": "t2l"}), text_ids=torch.from_numpy(ids[part]),
            text_mask=torch.from_numpy(mask[part]), generator=gen,
        )  # fmt: skip
        out.append(res.latents.numpy())
    return np.concatenate(out)


def t2l_cosine(
    pipe: Any,
    dataset: LatentDataset,
    *,
    split: str = "validation",
    num_rows: int | None = 256,
    sample: LatentSampleConfig | None = None,
    num_draws: int = 4,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Cosine of the model's t2l latents to the encoder's latents of held-out text.

    `t2l_cosine`: one DDIM draw per text; `t2l_mean_cosine`: the average of `num_draws` draws, an estimate
    of the model's conditional mean E[z | text]; `mean_latent_cosine`: the train-split mean latent, the
    best text-blind point estimate, which is what the conditional mean must beat (a single draw also carries
    the posterior's spread, so it is compared with the same baseline but is expected to sit lower)."""
    sample = sample or LatentSampleConfig(mode="t2l")
    part = dataset.split(split)
    rows = _rows(part, num_rows)
    batch = part.get_batch(rows)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    draws = [
        t2l_latents(pipe, ids, mask, sample.model_copy(update={"seed": sample.seed + 7919 * k}), batch_size)
        for k in range(max(1, num_draws))
    ]
    mean, _ = dataset.stats()
    single = _cos(draws[0], batch["latent"])
    averaged = _cos(np.mean(draws, axis=0), batch["latent"])
    base_cos = _cos(np.broadcast_to(mean, batch["latent"].shape), batch["latent"])
    return {
        "t2l_cosine": float(single.mean()),
        "t2l_mean_cosine": float(averaged.mean()),
        "mean_latent_cosine": float(base_cos.mean()),
        "num_draws": max(1, num_draws),
        "num_rows": int(len(rows)),
        "protocol": _protocol(pipe, dataset, sample, split=split, baseline="train-split mean latent"),
    }


def load_sts(source: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """STS pairs (sentence1, sentence2, score). `stsb` loads STS-B test through `datasets` (needs internet
    or a local cache); otherwise a local .tsv/.csv/.jsonl with columns sentence1, sentence2, score."""
    if str(source).lower() == "stsb":
        from datasets import load_dataset

        data = load_dataset(STSB_HF, split="test")
        return list(data["sentence1"]), list(data["sentence2"]), np.asarray(data["score"], dtype=np.float64)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"STS file {path} does not exist (or pass 'stsb' to download STS-B)")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        delimiter = "\t" if path.suffix in (".tsv", ".txt") else ","
        with path.open(encoding="utf-8", newline="") as handle:
            records = list(csv.DictReader(handle, delimiter=delimiter))
    missing = {"sentence1", "sentence2", "score"} - set(records[0] if records else {})
    if not records or missing:
        raise ValueError(
            f"{path}: need columns sentence1, sentence2, score; missing {sorted(missing) or 'rows'}"
        )
    try:
        scores = np.asarray([float(r["score"]) for r in records], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: a score is not a number ({exc})") from None
    return [r["sentence1"] for r in records], [r["sentence2"] for r in records], scores


def sts_correlation(
    pipe: Any,
    source: str | Path,
    *,
    sample: LatentSampleConfig | None = None,
    seq_len: int | None = None,
    max_pairs: int | None = None,
    encoder: Any = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Spearman / Pearson of t2l-latent cosines against human scores, with the encoder as oracle."""
    sample = sample or LatentSampleConfig(mode="t2l")
    s1, s2, scores = load_sts(source)
    if max_pairs is not None:
        s1, s2, scores = s1[:max_pairs], s2[:max_pairs], scores[:max_pairs]
    if len(scores) < 3:
        raise ValueError("STS needs at least 3 pairs to compute a correlation")
    seq_len = seq_len or pipe.model.config.max_seq_len
    ids, mask = tokenize_rows(pipe.tokenizer, pipe.vocab, [*s1, *s2], seq_len)
    z = t2l_latents(pipe, ids, mask, sample, batch_size)
    model_cos = _cos(z[: len(s1)], z[len(s1) :])
    result: dict[str, Any] = {
        "spearman": float(stats.spearmanr(model_cos, scores).statistic),
        "pearson": float(stats.pearsonr(model_cos, scores).statistic),
        "num_pairs": len(scores),
    }
    if encoder is not None or pipe.spec.encoder is not None:
        oracle = _cos(encode_texts(pipe, s1, encoder), encode_texts(pipe, s2, encoder))
        result["oracle_spearman"] = float(stats.spearmanr(oracle, scores).statistic)
        result["oracle_pearson"] = float(stats.pearsonr(oracle, scores).statistic)
    result["protocol"] = _protocol(
        pipe, None, sample, sts_source=str(source), seq_len=seq_len,
        note="correlations only: cosines in [-1, 1] and human scores are on different scales (no MAE/RMSE)",
    )  # fmt: skip
    return result


def _decode(pipe: Any, tokens: torch.Tensor) -> list[str]:
    return [t.strip() for t in pipe.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)]


@torch.no_grad()
def l2t_round_trip(
    pipe: Any,
    dataset: LatentDataset,
    *,
    split: str = "validation",
    num_rows: int | None = 64,
    sample: LatentSampleConfig | None = None,
    encoder: Any = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Cosine between encoder(text generated from z) and z, against unconditional samples."""
    sample = (sample or LatentSampleConfig(mode="l2t")).model_copy(update={"mode": "l2t"})
    if encoder is None and pipe.spec.encoder is not None:
        from mmdlm.encoders import load_encoder

        encoder = load_encoder(pipe.spec.encoder)
    family = get_family(pipe.family)
    part = dataset.split(split)
    rows = _rows(part, num_rows)
    batch = part.get_batch(rows)
    lengths = torch.from_numpy(batch["attention_mask"].sum(1))
    cond_texts: list[str] = []
    uncond_texts: list[str] = []
    for chunk in _batched(len(rows), batch_size):
        gen = torch.Generator().manual_seed(sample.seed + chunk.start)
        cond = family.generate(
            pipe.built,
            sample,
            latents=torch.from_numpy(batch["latent"][chunk]),
            lengths=lengths[chunk],
            generator=gen,
        )
        gen = torch.Generator().manual_seed(sample.seed + chunk.start)
        uncond = family.generate(
            pipe.built, sample.model_copy(update={"num_samples": chunk.stop - chunk.start}),
            lengths=lengths[chunk], generator=gen,
        )  # fmt: skip
        cond_texts += _decode(pipe, cond.tokens)
        uncond_texts += _decode(pipe, uncond.tokens)
    z = batch["latent"]
    cond_cos = _cos(encode_texts(pipe, cond_texts, encoder), z)
    uncond_cos = _cos(encode_texts(pipe, uncond_texts, encoder), z)
    return {
        "l2t_round_trip_cosine": float(cond_cos.mean()),
        "unconditional_cosine": float(uncond_cos.mean()),
        "win_rate": float((cond_cos > uncond_cos).mean()),
        "num_rows": int(len(rows)),
        "examples": [
            {"reference": t, "conditional": c, "unconditional": u}
            for t, c, u in zip(part.texts(rows[:3]), cond_texts[:3], uncond_texts[:3], strict=False)
        ],
        "protocol": _protocol(
            pipe,
            dataset,
            sample,
            split=split,
            baseline="unconditional samples (null condition), same lengths",
            lengths="the held-out rows' own",
        ),  # fmt: skip
    }


def summarize(result: dict[str, Any]) -> str:
    """One line per headline number, for logs and the demo."""
    parts = []
    if "t2l_cosine" in result:
        parts.append(
            f"t2l cosine {result['t2l_mean_cosine']:.3f} ({result['num_draws']}-draw mean; one draw "
            f"{result['t2l_cosine']:.3f}) vs mean-latent baseline {result['mean_latent_cosine']:.3f}"
        )
    if "l2t_round_trip_cosine" in result:
        parts.append(
            f"l2t round-trip cosine {result['l2t_round_trip_cosine']:.3f} "
            f"(unconditional {result['unconditional_cosine']:.3f})"
        )
    if "spearman" in result:
        parts.append(
            f"STS Spearman {result['spearman']:.3f} (encoder {result.get('oracle_spearman', math.nan):.3f})"
        )
    return "; ".join(parts)


def evaluate_latent(
    pipe: Any, dataset: LatentDataset | None, config: Any, split: str = "validation"
) -> dict[str, Any]:
    """The latent metrics of `config` (a LatentEvalConfig) that apply to this family and data."""
    out: dict[str, Any] = {}
    encoder = None
    if pipe.spec.encoder is not None and (config.round_trip or config.sts):
        from mmdlm.encoders import load_encoder

        encoder = load_encoder(pipe.spec.encoder)
    if dataset is not None and config.t2l and pipe.family == "mmdit":
        out["t2l"] = t2l_cosine(pipe, dataset, split=split, num_rows=config.t2l_rows, sample=config.sample)
    if dataset is not None and config.round_trip and encoder is not None:
        out["round_trip"] = l2t_round_trip(
            pipe,
            dataset,
            split=split,
            num_rows=config.round_trip_rows,
            sample=config.round_trip_sample(),
            encoder=encoder,
        )
    if config.sts and pipe.family == "mmdit":
        out["sts"] = sts_correlation(
            pipe, config.sts, sample=config.sample, max_pairs=config.sts_max_pairs, encoder=encoder
        )
    return out
