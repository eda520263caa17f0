"""Runner of `kind: evaluate`: the library's evaluation functions on a staged `model` artifact.

    token families   mmdlm.eval.evaluate.evaluate (NLL, generative PPL + entropy, data reference, sweep)
    latent families  mmdlm.eval.likelihood.nll_sums on the latent split (text NLL given the clean latent),
                     `evaluate` for generative PPL, mmdlm.eval.latent for t2l cosine, l2t round trip, STS
    image models     mmdlm.eval.images on the image-dataset: t2i accuracy (classifier ceiling, unconditional
                     baseline), Fréchet distance on the classifier's features, i2t caption accuracy

Results: job metrics at step 0 (flat names such as `val_ppl`, `gen_ppl`, `gen_entropy`; the sweep also as
series `sweep_gen_ppl` / `sweep_entropy` over the step count) and an `evaluation` artifact (one JSON file)
holding the full reports, a flat summary and, per metric group, the protocol fields two results must share
to be compared (`protocols`), which GET /v1/models/compare checks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from mmdlm.data.latent import LatentDataset
from mmdlm.eval.evaluate import evaluate, is_bundled
from mmdlm.eval.likelihood import eval_batches, nll_sums
from mmdlm.eval.results import BUNDLED_CORPUS_NOTE, EvalProtocol, EvalReport, NLLResult
from mmdlm.pipeline import Pipeline, load_pretrained
from mmdlm.precision import effective_precision
from services.common.context import JobContext
from services.sampler.families import family_kind
from services.sampler.kinds import EvaluateSpec
from services.sampler.service import resolve_device

ARTIFACT_NAME = "evaluation"
FORMAT = "mmdlm.evaluation/v1"

# Protocol fields that must be equal for two results of a group to be compared (seeds may differ).
GROUP_FIELDS = {
    "nll": ("dataset", "dataset_source", "tokenizer", "split", "context_length", "estimator", "num_time_samples", "precision"),
    "generative": ("reference_model", "num_samples", "sampling_steps", "sampler_precision", "precision", "context_length",
                   "sample_settings"),
}  # fmt: skip
SAMPLE_IGNORED = ("seed", "batch_size")  # sample settings that do not change what is measured


def run(ctx: JobContext) -> None:
    spec = ctx.spec
    assert isinstance(spec, EvaluateSpec)
    if ctx.find_artifact(ARTIFACT_NAME) is not None:
        ctx.log("evaluation already published by an earlier attempt")
        return
    device = resolve_device(spec.device)
    model_dir = ctx.stage_artifact(spec.model, kind="model")
    pipe = load_pretrained(model_dir, device=device)
    kind = family_kind(pipe.family)
    data_dir = ctx.stage_artifact(spec.dataset) if spec.dataset else None
    phases = _phases(spec, kind, pipe.family, data_dir is not None)
    done = 0

    def phase(name: str) -> None:
        nonlocal done
        ctx.check_cancelled()
        ctx.progress(done, len(phases), name)
        ctx.log(f"evaluating: {name}")
        done += 1

    started = time.perf_counter()
    images: dict[str, Any] = {}
    if kind == "image":
        report, latent = EvalReport(), {}
        images = _image_family(spec, pipe, data_dir, phase)
    elif kind == "latent":
        report, latent = _latent_family(ctx, spec, pipe, data_dir, phase)
    else:
        phase(" + ".join(phases))
        report = evaluate(pipe, spec.eval_config(str(data_dir) if data_dir else None))
        latent = {}
    ctx.progress(len(phases), len(phases), "publishing")
    payload = _localize(
        {"report": report.to_dict(), "latent": latent, "images": images},
        {
            str(model_dir): f"artifact:{spec.model}",
            **({str(data_dir): f"artifact:{spec.dataset}"} if data_dir else {}),
        },
    )
    summary = summarize(payload["report"], payload["latent"], payload["images"])
    protocols = protocol_groups(payload["report"], payload["latent"], payload["images"])
    ctx.metrics(0, summary)
    for row in payload["report"].get("sweep", {}).get("rows", []):
        steps = row["protocol"]["sampling_steps"]
        ctx.metrics(int(steps), {"sweep_gen_ppl": row["gen_ppl"], "sweep_entropy": row["unigram_entropy"]})
    document = {
        "format": FORMAT, "model": spec.model, "family": pipe.family, "dataset": spec.dataset,
        "trained": pipe.trained, "spec": spec.model_dump(mode="json"), "summary": summary, "protocols": protocols,
        **payload, "elapsed_s": round(time.perf_counter() - started, 3),
    }  # fmt: skip
    path = ctx.scratch_dir / "evaluation.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    ctx.publish_file(
        path, kind="evaluation", name=ARTIFACT_NAME,
        metadata={"format": FORMAT, "model": spec.model, "family": pipe.family, "dataset": spec.dataset,
                  "summary": summary, "protocols": protocols},
    )  # fmt: skip
    ctx.log("; ".join(f"{k} {v:.4g}" for k, v in summary.items()))


def _phases(spec: EvaluateSpec, kind: str, family: str, has_data: bool) -> list[str]:
    if kind == "image":
        wanted = set(spec.images.metrics) if spec.images else set()
        names = ["classifier", "t2i"] if wanted & {"t2i", "frechet"} else []
        return [*names, *(["i2t"] if "i2t" in wanted else [])] or ["nothing to do"]
    if kind != "latent":
        return ["nll + generative"]
    names = []
    if spec.nll and has_data:
        names.append("nll")
    if spec.generative is not None:
        names.append("generative")
    if spec.latent is not None and has_data:
        if spec.latent.t2l and family == "mmdit":
            names.append("t2l")
        if spec.latent.l2t:
            names.append("l2t")
    if spec.sts is not None:
        names.append("sts")
    return names or ["nothing to do"]


def _latent_family(
    ctx: JobContext, spec: EvaluateSpec, pipe: Pipeline, data_dir: Path | None, phase: Any
) -> tuple[EvalReport, dict[str, Any]]:
    from mmdlm.eval import latent as latent_eval

    dataset = LatentDataset.open(data_dir, verify=True) if data_dir else None
    report = EvalReport()
    latent: dict[str, Any] = {}
    if spec.nll and dataset is not None:
        phase("nll")
        report.nll = latent_nll(pipe, dataset, spec)
    if spec.generative is not None:
        phase("generative")
        generated = evaluate(pipe, spec.eval_config(None))
        report.generative, report.sweep = generated.generative, generated.sweep
    encoder = None
    section = spec.latent
    if section is not None and dataset is not None:
        if section.t2l and pipe.family == "mmdit":
            phase("t2l")
            latent["t2l"] = latent_eval.t2l_cosine(pipe, dataset, split=spec.split, num_rows=section.num_rows,
                                                   sample=section.sample, batch_size=section.batch_size)  # fmt: skip
        if section.l2t:
            phase("l2t")
            encoder = _encoder(pipe)
            latent["l2t"] = latent_eval.l2t_round_trip(
                pipe, dataset, split=spec.split, num_rows=section.num_rows, sample=section.round_trip_sample(),
                encoder=encoder,
                batch_size=section.batch_size,
            )  # fmt: skip
    if spec.sts is not None:
        phase("sts")
        source: str | Path = spec.sts.source or _write_pairs(ctx, spec)
        latent["sts"] = latent_eval.sts_correlation(
            pipe, source, sample=section.sample if section else None, max_pairs=spec.sts.max_pairs,
            encoder=encoder or _encoder(pipe),
        )  # fmt: skip
    return report, latent


def _image_family(spec: EvaluateSpec, pipe: Pipeline, data_dir: Path | None, phase: Any) -> dict[str, Any]:
    """`mmdlm.eval.images` on the staged image-dataset: the judge, then t2i (+ Fréchet on the same images)
    and i2t; the generated images themselves are left out of the document (sample jobs write PNGs)."""
    from mmdlm.eval import images as image_eval
    from mmdlm.families import get_family

    if spec.images is None or data_dir is None:
        raise ValueError("an image model is evaluated against an image-dataset (dataset) with `images` on")
    section = spec.images
    data = get_family(pipe.family).open_dataset(pipe.spec, data_dir)  # type: ignore[attr-defined]
    config = image_eval.ImageEvalConfig.model_validate(section.model_dump(exclude={"metrics"}))
    wanted = tuple(section.metrics)
    result: dict[str, Any] = {}
    if {"t2i", "frechet"} & set(wanted):
        phase("classifier")
        with torch.enable_grad():  # the judge is trained here, outside the metrics' no-grad sampling
            judge = image_eval.train_classifier(data, config)
        phase("t2i")
        metrics = tuple(m for m in wanted if m != "i2t")
        result.update(image_eval.evaluate_images(pipe, data, config, classifier=judge, metrics=metrics))
    if "i2t" in wanted:
        phase("i2t")
        result["i2t"] = image_eval.caption_accuracy(pipe, data, config)
    result.pop("samples", None)
    return _plain(result)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in a result -> JSON values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def latent_nll(pipe: Pipeline, dataset: LatentDataset, spec: EvaluateSpec) -> NLLResult:
    """Text NLL bound of a latent family given each row's clean latent, -log p(x | z), with the library's
    NLL accumulation (float64 sums, non-pad tokens)."""
    trained = pipe.trained or {}
    source = dataset.manifest.source.get("source")
    precision = effective_precision(spec.precision, pipe.device)  # the protocol names what ran
    protocol = EvalProtocol(
        model=str(pipe.path) if pipe.path else None, family=pipe.family, dataset=str(dataset.root),
        dataset_source=source, tokenizer=dataset.manifest.tokenizer.name, split=spec.split,
        context_length=dataset.seq_len, tokens_seen=trained.get("tokens_seen"), precision=precision,
        seed=spec.seed, estimator="elbo", num_time_samples=spec.num_time_samples,
        notes=[*([BUNDLED_CORPUS_NOTE] if is_bundled(source) else []),
               f"text NLL given the clean latent of each row ({dataset.encoder_name} encoder): -log p(x | z)"],
    )  # fmt: skip
    generator = torch.Generator(pipe.device).manual_seed(spec.seed)
    sums = nll_sums(
        pipe.objective, pipe.model, eval_batches(dataset.split(spec.split), spec.batch_size, 0, 1, spec.max_batches),  # type: ignore[arg-type]
        num_samples=spec.num_time_samples, generator=generator,
        autocast_dtype=torch.bfloat16 if precision == "bf16" else None, device=pipe.device,
    )  # fmt: skip
    return NLLResult.from_sums(sums.nll, sums.tokens, sums.sequences, protocol)


def _encoder(pipe: Pipeline) -> Any:
    if getattr(pipe.spec, "encoder", None) is None:
        raise ValueError("the l2t round trip and STS need the model's encoder, and this model records none")
    from mmdlm.encoders import load_encoder

    return load_encoder(pipe.spec.encoder)


def _write_pairs(ctx: JobContext, spec: EvaluateSpec) -> Path:
    assert spec.sts is not None and spec.sts.pairs is not None
    path = ctx.scratch_dir / "sts.jsonl"
    path.write_text("".join(p.model_dump_json() + "\n" for p in spec.sts.pairs), encoding="utf-8")
    return path


def _localize(value: Any, paths: dict[str, str]) -> Any:
    """Replace the worker's staging paths by artifact ids, so results from different workers compare."""
    if isinstance(value, dict):
        return {k: _localize(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_localize(v, paths) for v in value]
    if isinstance(value, str):
        for path, name in paths.items():
            if value == path:
                return name
    return value


IMAGE_SUMMARY = {
    "t2i": {"accuracy": "t2i_accuracy", "unconditional_accuracy": "t2i_unconditional_accuracy",
            "classifier_accuracy": "t2i_classifier_accuracy"},
    "frechet": {"distance": "frechet_distance", "unconditional_distance": "frechet_unconditional_distance",
                "real_train_distance": "frechet_real_train_distance"},
    "i2t": {"accuracy": "i2t_caption_accuracy", "unconditional_accuracy": "i2t_unconditional_caption_accuracy"},
}  # fmt: skip
"""Image metric -> its summary name (the prefix is its protocol group: t2i, frechet, i2t)."""


def summarize(
    report: dict[str, Any], latent: dict[str, Any], images: dict[str, Any] | None = None
) -> dict[str, float]:
    """Flat headline numbers (the metric rows and the model table's columns)."""
    out: dict[str, float] = {}
    for group, names in IMAGE_SUMMARY.items():
        if result := (images or {}).get(group):
            out.update({name: result[key] for key, name in names.items() if key in result})
    if nll := report.get("nll"):
        out.update(val_nll=nll["nll"], val_ppl=nll["ppl"], val_bits_per_token=nll["bits_per_token"])
    if gen := report.get("generative"):
        out.update(gen_ppl=gen["gen_ppl"], gen_entropy=gen["unigram_entropy"], gen_pooled_entropy=gen["pooled_entropy"],
                   gen_distinct_2=gen["distinct_2"], gen_repetition_4=gen["repetition_4"])  # fmt: skip
    if data := report.get("data_reference"):
        out.update(data_gen_ppl=data["gen_ppl"], data_entropy=data["unigram_entropy"])
    for row in (report.get("sweep") or {}).get("rows", []):
        steps = row["protocol"]["sampling_steps"]
        out[f"sweep_{steps}_gen_ppl"] = row["gen_ppl"]
        out[f"sweep_{steps}_entropy"] = row["unigram_entropy"]
    if t2l := latent.get("t2l"):
        out.update(t2l_cosine=t2l["t2l_cosine"], t2l_mean_latent_cosine=t2l["mean_latent_cosine"])
    if l2t := latent.get("l2t"):
        out.update(l2t_round_trip_cosine=l2t["l2t_round_trip_cosine"],
                   l2t_unconditional_cosine=l2t["unconditional_cosine"], l2t_win_rate=l2t["win_rate"])  # fmt: skip
    if sts := latent.get("sts"):
        out.update(sts_spearman=sts["spearman"], sts_pearson=sts["pearson"])
        if "oracle_spearman" in sts:
            out["sts_oracle_spearman"] = sts["oracle_spearman"]
    return {k: float(v) for k, v in out.items()}


def protocol_groups(
    report: dict[str, Any], latent: dict[str, Any], images: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Per metric group, the protocol fields that must match for two results to be compared."""
    groups: dict[str, dict[str, Any]] = {}
    for group in IMAGE_SUMMARY:
        if result := (images or {}).get(group):
            proto = {k: v for k, v in result["protocol"].items() if k not in ("seed", "device")}
            groups[group] = proto
    if nll := report.get("nll"):
        groups["nll"] = {k: nll["protocol"].get(k) for k in GROUP_FIELDS["nll"]}
    if gen := report.get("generative"):
        groups["generative"] = _generative_key(gen["protocol"])
    if sweep := report.get("sweep"):
        groups["sweep"] = {**_generative_key(sweep["protocol"]),
                           "steps": [r["protocol"]["sampling_steps"] for r in sweep["rows"]]}  # fmt: skip
    for name in ("t2l", "l2t", "sts"):
        if result := latent.get(name):
            proto = dict(result["protocol"])
            proto.pop("model", None)
            proto.pop("tokens_seen", None)
            sample = dict(proto.get("sample") or {})
            sample.pop("seed", None)
            proto["sample"] = sample
            proto["num"] = result.get("num_rows", result.get("num_pairs"))
            groups[name] = proto
    return groups


def _generative_key(protocol: dict[str, Any]) -> dict[str, Any]:
    key = {k: protocol.get(k) for k in GROUP_FIELDS["generative"]}
    settings = dict(key.get("sample_settings") or {})
    for name in SAMPLE_IGNORED:
        settings.pop(name, None)
    key["sample_settings"] = settings
    return key
