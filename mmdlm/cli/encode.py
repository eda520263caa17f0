"""`mmdlm encode SOURCE OUT`: a `dataset` folder (or a folder of .txt/.jsonl documents) -> `latent-dataset`.

Shards are independent: `--shard-range 0:4` on one worker and `--shard-range 4:9` on another fill the same
OUT; a rerun skips finished shards, and the manifest appears when the last shard is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mmdlm.cli.common import fail, run_guarded, set_options, setup_logging


def _config(options: dict[str, Any], config_file: Path | None, overrides: list[str]) -> Any:
    from mmdlm.config.base import apply_overrides, load_mapping
    from mmdlm.config.latent import EncodeConfig

    data: dict[str, Any] = load_mapping(config_file) if config_file else {}
    set_options(data, options)
    return EncodeConfig.model_validate(apply_overrides(data, overrides))


def _shard_range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    if not sep or not start.strip().isdigit() or not stop.strip().isdigit():
        raise ValueError(f"--shard-range must look like START:STOP (e.g. 0:4), got {text!r}")
    return int(start), int(stop)


def encode(
    source: Annotated[Path, typer.Argument(help="A `dataset` folder, or a folder of .txt/.jsonl documents")],
    out: Annotated[Path, typer.Argument(help="Output latent-dataset folder (created or resumed)")],
    encoder: Annotated[
        str | None, typer.Option(help="Encoder recipe: minilm (default), e5, bge-m3, qwen3, t5, sonar")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Hub id or local folder overriding the recipe's model")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit)")] = None,
    dim: Annotated[int | None, typer.Option(help="Matryoshka dimension (qwen3)")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, or bf16 (autocast)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Texts per encoder batch")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    role: Annotated[str | None, typer.Option(help="passage (default) or query side of the encoder")] = None,
    shard_rows: Annotated[int | None, typer.Option(help="Rows per latent shard")] = None,
    max_rows: Annotated[int | None, typer.Option(help="Rows per split, spread evenly (quick runs)")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Text folders: gpt2, bert-base-uncased, ...")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Text folders: tokens per row")] = None,
    shard_range: Annotated[str | None, typer.Option(help="Only shards START:STOP of the job")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="EncodeConfig YAML/JSON file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override an EncodeConfig field")] = None,
) -> None:
    """Encode every row's text into a sentence-embedding latent (see docs/ARCHITECTURE.md)."""
    setup_logging()
    options = {
        "encoder.name": encoder,
        "encoder.model": model,
        "encoder.revision": revision,
        "encoder.dim": dim,
        "encoder.precision": precision,
        "encoder.batch_size": batch_size,
        "encoder.device": device,
        "role": role,
        "shard_rows": shard_rows,
        "max_rows": max_rows,
        "tokenizer": tokenizer,
        "seq_len": seq_len,
    }
    cfg = run_guarded(lambda: _config(options, config, set_ or []))
    span = run_guarded(lambda: _shard_range(shard_range))
    if not source.exists():
        fail(f"source {source} does not exist")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mmdlm.data.latent import encode_dataset

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("encoding rows", total=None)

        def report(done: int, total: int, phase: str) -> None:
            bar.update(task, completed=done, total=total or None, description=phase)

        result = run_guarded(lambda: encode_dataset(cfg, source, out, progress=report, shard_range=span))
    typer.echo(
        f"{len(result.shards_encoded)} shard(s) encoded, {len(result.shards_skipped)} already done, "
        f"of {result.shards_total}",
        err=True,
    )
    if result.manifest is None:
        typer.echo(f"{out}: not complete yet; encode the remaining shards to write the manifest", err=True)
        return
    m = result.manifest
    rows = ", ".join(f"{name} {info.rows}" for name, info in m.splits.items())
    typer.echo(f"{out}: latent dataset, encoder {m.encoder['name']} ({m.dim}-d), rows: {rows}")
