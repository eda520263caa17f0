"""`mmdlm train CONFIG [--set key=value ...]`: run the training loop here (or as one torchrun rank)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from mmdlm.cli.common import run_guarded, setup_logging


def train(
    config: Annotated[
        str, typer.Argument(help="TrainConfig YAML/JSON file, or a preset such as cpu-nano/mdlm")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field: key.sub=value (YAML value). Repeatable."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Validate and print the resolved config, do not train")
    ] = False,
) -> None:
    """Train a model. Under `torchrun --nproc_per_node=N -m mmdlm.cli train ...` every rank runs this.

    Writes run_dir/{config.json, metrics.jsonl, checkpoints/, final/}; resume: auto continues a run.
    """
    from mmdlm.config.presets import load_train_config

    setup_logging()
    cfg = run_guarded(lambda: load_train_config(config, set_ or []))
    if dry_run:
        typer.echo(cfg.model_dump_json(indent=2))
        return
    from mmdlm.training import train as run_training

    result = run_guarded(lambda: run_training(cfg))
    if int(os.environ.get("RANK", 0)) == 0:
        typer.echo(f"trained {result.step} steps ({result.tokens_seen} tokens); model: {result.final_dir}")
