"""`evaluate(model, EvalConfig) -> EvalReport`: the whole protocol of `mmdlm eval` in one call.

1. validation NLL (exact for AR, ELBO bound with K stratified time samples for diffusion) on a split;
2. samples from the model, scored by the reference LM, with their entropy and distinct-n;
3. the same generative metrics on real rows of the split (what "good" looks like under this reference);
4. optionally a sweep over sampling steps (diffusion families).
Every result carries an `EvalProtocol`; numbers on the bundled corpus carry its note.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mmdlm.config.eval import EvalConfig
from mmdlm.config.sample import SampleConfig
from mmdlm.data.tokens import TokenDataset
from mmdlm.eval.generative import score_samples
from mmdlm.eval.likelihood import eval_batches, nll_sums
from mmdlm.eval.reference import ReferenceLM
from mmdlm.eval.results import BUNDLED_CORPUS_NOTE, EvalProtocol, EvalReport, NLLResult, SweepResult
from mmdlm.pipeline import Pipeline, load_pretrained
from mmdlm.precision import effective_precision

log = logging.getLogger(__name__)


LATENT_FAMILIES = ("mmdit", "latent-dit", "cross-dit")


def _open_dataset(pipe: Pipeline, directory: str) -> TokenDataset:
    """The family's own data kind when it has one (the latent families read a `latent-dataset`)."""
    from mmdlm.families import get_family

    opener = getattr(get_family(pipe.family), "open_dataset", None)
    if opener is not None:
        return opener(pipe.spec, directory)
    return TokenDataset.open(directory)


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was requested but CUDA is not available; use device: cpu or auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def is_bundled(source: dict | None) -> bool:
    if not source:
        return False
    if source.get("type") == "bundled":
        return True
    # a folder slice of the bundled corpus (mmdlm.training.debug) keeps the same mix
    return "bundled" in str(source.get("path", ""))


def base_protocol(pipe: Pipeline, config: EvalConfig, dataset: TokenDataset | None) -> EvalProtocol:
    trained = pipe.trained or {}
    source = dataset.manifest.source if dataset is not None else trained.get("dataset_source")
    notes = [BUNDLED_CORPUS_NOTE] if is_bundled(source) else []
    return EvalProtocol(
        model=str(pipe.path) if pipe.path else None,
        family=pipe.family,
        dataset=str(dataset.root) if dataset is not None else trained.get("dataset"),
        dataset_source=source,
        tokenizer=dataset.manifest.tokenizer.name if dataset is not None else None,
        split=config.split if dataset is not None else None,
        context_length=dataset.seq_len if dataset is not None else trained.get("seq_len"),
        tokens_seen=trained.get("tokens_seen"),
        precision=config.precision,
        seed=config.seed,
        notes=notes,
    )


def bound_notes(objective: object) -> list[str]:
    """Caveats of the objective's likelihood bound for the NLL protocol (issue 13.4: HDLM with gamma < 1 is not
    an upper bound); empty for AR and for processes whose truncated integral is within O(t_eps)."""
    process = getattr(objective, "process", None)
    note = process.bound_note() if hasattr(process, "bound_note") else None
    return [note] if note else []


def validation_nll(
    pipe: Pipeline, dataset: TokenDataset, config: EvalConfig, protocol: EvalProtocol
) -> NLLResult:
    if dataset.vocab != pipe.vocab:
        raise ValueError(
            f"dataset {dataset.root} has vocabulary {dataset.vocab} but the model was trained on {pipe.vocab}"
        )
    device = pipe.device
    generator = torch.Generator(device).manual_seed(config.seed)
    split = dataset.split(config.split)
    sums = nll_sums(
        pipe.objective,
        pipe.model,
        eval_batches(split, config.batch_size, 0, 1, config.max_batches),
        num_samples=config.num_time_samples,
        generator=generator,
        autocast_dtype=torch.bfloat16 if config.precision == "bf16" else None,
        device=device,
    )
    exact = pipe.family == "ar"
    proto = protocol.model_copy(
        update={
            "estimator": "exact" if exact else "elbo",
            "num_time_samples": None if exact else config.num_time_samples,
            "notes": [*protocol.notes, *bound_notes(pipe.objective)],
        }
    )
    return NLLResult.from_sums(sums.nll, sums.tokens, sums.sequences, proto)


def _sample_protocol(pipe: Pipeline, sample: SampleConfig, protocol: EvalProtocol) -> EvalProtocol:
    ar = pipe.family == "ar"
    return protocol.model_copy(
        update={
            "sampling_steps": None if ar else sample.steps,
            "sampler_precision": "float64" if sample.float64 else "float32",
            "sample_settings": sample.model_dump(mode="json"),
            "seed": sample.seed,
        }
    )


def evaluate(
    model: str | Path | Pipeline,
    config: EvalConfig | None = None,
    *,
    reference: ReferenceLM | None = None,
) -> EvalReport:
    """Run the protocol of `config` on a model folder (or a loaded Pipeline) and return the report."""
    config = config or EvalConfig()
    device = resolve_device(config.device)
    precision = effective_precision(config.precision, device)  # the protocol names what ran
    if precision != config.precision:
        config = config.model_copy(update={"precision": precision})
    pipe = model if isinstance(model, Pipeline) else load_pretrained(model, device=device)
    dataset = _open_dataset(pipe, config.dataset) if config.dataset else None
    protocol = base_protocol(pipe, config, dataset)
    report = EvalReport()
    if config.nll and dataset is not None:
        report.nll = validation_nll(pipe, dataset, config, protocol)
        log.info("validation NLL %.4f nats/token (ppl %.2f)", report.nll.nll, report.nll.ppl)
    if config.latent is not None and pipe.family in LATENT_FAMILIES:
        from mmdlm.eval.latent import evaluate_latent, summarize

        report.latent = evaluate_latent(pipe, dataset, config.latent, split=config.split)
        for name, result in report.latent.items():
            log.info("%s: %s", name, summarize(result))
    gen = config.generative
    if gen is None:
        return report
    reference = reference or ReferenceLM.load(gen.reference_model, device=device)
    sample = gen.sample
    if sample.seq_len is None and protocol.context_length is not None:
        sample = sample.model_copy(update={"seq_len": protocol.context_length})

    def run(sample_cfg: SampleConfig):  # noqa: ANN202 - local helper
        out = pipe.generate(sample_cfg, precision=config.precision)
        return score_samples(
            out.ids,
            out.texts,
            pipe.vocab,
            reference,
            _sample_protocol(pipe, sample_cfg, protocol),
            batch_size=gen.reference_batch_size,
            network_calls=out.nfe,
            sampling_s=out.elapsed_s,
            num_examples=gen.num_examples,
        )

    report.generative = run(sample)
    log.info(
        "generative PPL %.2f, unigram entropy %.3f nats",
        report.generative.gen_ppl,
        report.generative.unigram_entropy,
    )
    if gen.data_reference and dataset is not None:
        split = dataset.split(config.split)
        n = min(sample.num_samples, len(split))
        rows = np.linspace(0, len(split) - 1, n).round().astype(np.int64)
        ids = torch.from_numpy(split.get_batch(rows)["input_ids"])
        if sample.seq_len is not None:
            ids = ids[:, : sample.seq_len]
        report.data_reference = score_samples(
            ids,
            pipe.decode(ids),
            pipe.vocab,
            reference,
            protocol.model_copy(update={"notes": [*protocol.notes, "real rows of the split, not samples"]}),
            batch_size=gen.reference_batch_size,
            num_examples=gen.num_examples,
        )
    if gen.steps_sweep:
        if pipe.family == "ar":
            raise ValueError("steps_sweep applies to diffusion families; an AR model has no sampling steps")
        rows_ = [run(sample.model_copy(update={"steps": s})) for s in gen.steps_sweep]
        report.sweep = SweepResult(rows=rows_, protocol=_sample_protocol(pipe, sample, protocol))
    return report
