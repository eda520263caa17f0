"""`mmdlm eval MODEL_DIR --data DATASET_DIR`: validation NLL, generative PPL + entropy, optional steps sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mmdlm.cli.common import fail, run_guarded, set_options, setup_logging


def _build_config(options: dict[str, Any], config_file: Path | None, overrides: list[str]) -> Any:
    from mmdlm.config.base import apply_overrides, load_mapping
    from mmdlm.config.eval import EvalConfig

    data: dict[str, Any] = load_mapping(config_file) if config_file else {}
    set_options(data, options)
    return EvalConfig.model_validate(apply_overrides(data, overrides))


def eval_command(
    model_dir: Annotated[Path, typer.Argument(help="A model folder")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Dataset folder for NLL and the data reference")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split to evaluate (default validation)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per NLL batch")] = None,
    max_batches: Annotated[int | None, typer.Option(help="Limit the NLL pass")] = None,
    time_samples: Annotated[
        int | None, typer.Option(help="ELBO time samples per sequence (diffusion)")
    ] = None,
    num_samples: Annotated[
        int | None, typer.Option("--num-samples", "-n", help="Samples to generate")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps")] = None,
    sweep: Annotated[str | None, typer.Option(help="Comma-separated step counts, e.g. 16,64,256")] = None,
    reference: Annotated[str | None, typer.Option(help="Reference causal LM id or folder")] = None,
    generative: Annotated[bool, typer.Option(help="Sample and score generative PPL")] = True,
    precision: Annotated[str | None, typer.Option(help="fp32 or bf16 network forward")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for ELBO times and sampling")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="EvalConfig YAML/JSON file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override an EvalConfig field")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the full report (JSON) here")] = None,
    sts: Annotated[
        str | None, typer.Option(help="Latent families: STS pairs file (.tsv/.csv/.jsonl) or 'stsb'")
    ] = None,
    latent: Annotated[
        bool, typer.Option(help="Latent families: t2l cosine and l2t round trip against baselines")
    ] = True,
) -> None:
    """Evaluate a model; every number is printed with its protocol and written as JSON with --out."""
    setup_logging()
    sweep_steps = None
    if sweep:
        sweep_steps = run_guarded(lambda: [int(s) for s in sweep.split(",") if s.strip()])
    options: dict[str, Any] = {
        "dataset": str(data) if data else None,
        "split": split,
        "batch_size": batch_size,
        "max_batches": max_batches,
        "num_time_samples": time_samples,
        "precision": precision,
        "seed": seed,
        "device": device,
        "latent.sts": sts,
    }
    if generative:
        options.update(
            {
                "generative.sample.num_samples": num_samples,
                "generative.sample.steps": steps,
                "generative.sample.seed": seed,
                "generative.steps_sweep": sweep_steps,
                "generative.reference_model": reference,
            }
        )
    cfg = run_guarded(lambda: _build_config(options, config, set_ or []))
    if not generative:
        cfg = cfg.model_copy(update={"generative": None})
    if not latent:
        cfg = cfg.model_copy(update={"latent": None})
    if cfg.dataset is None and cfg.generative is None:
        fail("nothing to evaluate: give --data DATASET_DIR and/or keep --generative")

    from mmdlm.eval.evaluate import evaluate
    from mmdlm.eval.report import render_report

    report = run_guarded(lambda: evaluate(model_dir, cfg))
    render_report(report)
    if out is not None:
        out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        typer.echo(f"report written to {out}", err=True)
