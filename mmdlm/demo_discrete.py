"""The discrete demo: bundled corpus -> a CPU-sized MDLM, HDLM and the AR baseline, each trained for under a
minute, then sampled and evaluated side by side. About 4-5 minutes on 2 CPU cores.

    from mmdlm.demo_discrete import run
    result = run("var/demo-discrete")      # dict: rows (one per family), data_reference, table, paths
    print(result["table"])

Steps (each skipped when its output folder is already complete, so a rerun only re-evaluates):
  1. prepare   the first 400 documents of each bundled part (Wikipedia leads, KJV Bible, Shakespeare),
               byte-level BPE 1024, 64-token packed rows, validation split by document;
  2. clusters  16 HDLM clusters of that tokenizer from the offline MiniLM encoder's input embeddings;
  3. train     `cpu-nano` (d=64, 2 blocks) MDLM, HDLM (16 clusters) and AR for `train_seconds` each
               (fp32, batch 32, lr 3e-3 constant after warm-up);
  4. evaluate  validation NLL (AR exact; diffusion: ELBO bound, 2 time samples), then `num_samples`
               samples (diffusion: `sampling_steps` steps; float64 sampler) scored by the offline
               SmolLM2-135M reference with their unigram entropy, and the same metrics on real rows.
The corpus is an unusual mix of encyclopedic and Early Modern English, and the models are tiny and briefly
trained: the table is a smoke test of the whole pipeline, not a result to compare with published ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FAMILIES = ("mdlm", "hdlm", "ar")


def _train(family: str, dataset: Path, clusters: Path, run_dir: Path, seconds: float) -> Path:
    from mmdlm.training.debug import debug_train_config
    from mmdlm.training.distributed import destroy
    from mmdlm.training.trainer import Trainer

    final = run_dir / "final"
    if (final / "config.json").is_file():
        return final
    extra = {"clusters": str(clusters)} if family == "hdlm" else {}
    cfg = debug_train_config(
        family,
        dataset,
        run_dir,
        overrides={
            "steps": 20_000,
            "time_limit_s": seconds,
            "data": {"batch_size": 32},
            "optimizer": {"lr": 3e-3},
            "schedule": {"kind": "constant", "warmup_steps": 50},
            "eval": {"interval": 10**6, "batches": 10, "batch_size": 64},
            "checkpoint": {"interval": 10**6, "keep_last": 1},
            "log": {"interval": 50, "console": False},
            "resume": "auto",
        },
        **extra,
    )
    try:
        Trainer(cfg).train()
    finally:
        destroy()
    return final


def _row(family: str, report: Any) -> dict[str, Any]:
    nll, gen = report.nll, report.generative
    return {
        "family": family,
        "estimator": nll.protocol.estimator,
        "tokens_seen": nll.protocol.tokens_seen,
        "val_nll": nll.nll,
        "val_ppl": nll.ppl,
        "gen_ppl": gen.gen_ppl,
        "entropy": gen.unigram_entropy,
        "distinct_2": gen.distinct_2,
        "network_calls": gen.network_calls,
        "sampling_steps": gen.protocol.sampling_steps,
        "example": gen.examples[0] if gen.examples else "",
    }


def format_table(rows: list[dict[str, Any]], data: dict[str, Any] | None) -> str:
    head = f"{'model':10s} {'tokens seen':>11s} {'val NLL':>8s} {'val PPL':>8s} {'gen PPL':>8s} {'entropy':>8s} {'steps':>6s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        kind = "" if r["estimator"] == "exact" else "<="
        lines.append(
            f"{r['family']:10s} {r['tokens_seen']:>11,d} {kind + format(r['val_nll'], '.3f'):>8s} "
            f"{kind + format(r['val_ppl'], '.1f'):>8s} {r['gen_ppl']:8.1f} {r['entropy']:8.3f} "
            f"{r['sampling_steps'] or '-':>6}"
        )
    if data is not None:
        lines.append(
            f"{'real rows':10s} {'':>11s} {'':>8s} {'':>8s} {data['gen_ppl']:8.1f} {data['entropy']:8.3f} {'':>6s}"
        )
    lines.append(
        "val NLL in nats/token on the validation split (AR exact; '<=' marks a diffusion ELBO upper bound); "
        "gen PPL under SmolLM2-135M (Q4_1 GGUF), always read with the samples' unigram entropy (nats)."
    )
    return "\n".join(lines)


def run(
    workdir: str | Path = "var/demo-discrete",
    *,
    train_seconds: float = 55.0,
    num_samples: int = 8,
    sampling_steps: int = 64,
    families: tuple[str, ...] = FAMILIES,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo under `workdir` and return its results (see the module docstring)."""
    from mmdlm.config.eval import EvalConfig
    from mmdlm.eval.evaluate import evaluate
    from mmdlm.eval.reference import ReferenceLM
    from mmdlm.eval.results import BUNDLED_CORPUS_NOTE
    from mmdlm.training.debug import prepare_debug_clusters, prepare_debug_dataset

    say = progress or log.info
    start = time.perf_counter()
    root = Path(workdir)
    say("preparing a slice of the bundled corpus (BPE 1024, 64-token rows)")
    dataset = prepare_debug_dataset(root / "data")
    clusters = prepare_debug_clusters(dataset, root / "clusters", 16) if "hdlm" in families else root
    reference = ReferenceLM.load()
    rows, data_reference, paths = [], None, {"dataset": str(dataset)}
    for family in families:
        say(f"training {family} for {train_seconds:.0f} s")
        final = _train(family, dataset, clusters, root / "runs" / family, train_seconds)
        paths[family] = str(final)
        say(f"evaluating {family}")
        config = EvalConfig.model_validate(
            {
                "dataset": str(dataset),
                "max_batches": 10,
                "batch_size": 64,
                "num_time_samples": 2,
                "device": "cpu",
                "generative": {
                    "sample": {"num_samples": num_samples, "steps": sampling_steps},
                    "data_reference": data_reference is None,
                    "num_examples": 1,
                },
            }
        )
        report = evaluate(final, config, reference=reference)
        rows.append(_row(family, report))
        if report.data_reference is not None:
            data_reference = {
                "gen_ppl": report.data_reference.gen_ppl,
                "entropy": report.data_reference.unigram_entropy,
            }
    table = format_table(rows, data_reference)
    elapsed = time.perf_counter() - start
    return {
        "rows": rows,
        "data_reference": data_reference,
        "table": table,
        "summary": f"{table}\nnote: {BUNDLED_CORPUS_NOTE}\n({elapsed:.0f} s)",
        "paths": paths,
        "elapsed_s": elapsed,
        "reference_model": reference.name,
    }
