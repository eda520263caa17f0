"""`mmdlm clusters`: size-constrained k-means token clusters for HDLM (calls `mmdlm.clusters`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmdlm.cli.common import fail, run_guarded, setup_logging


def clusters(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the cluster artifact to")],
    num_clusters: Annotated[int, typer.Option("--num-clusters", "-c", help="Number of clusters C")] = 64,
    data: Annotated[
        Path | None, typer.Option("--data", help="Dataset folder whose tokenizer is clustered")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Model folder whose input embeddings are clustered (default: encoder)")
    ] = None,
    encoder: Annotated[
        str | None, typer.Option(help="Sentence encoder folder (default: offline MiniLM)")
    ] = None,
    metric: Annotated[str, typer.Option(help="euclidean or cosine")] = "euclidean",
    seed: Annotated[int, typer.Option(help="k-means seed")] = 42,
) -> None:
    """Cluster the tokens of a dataset's (or a model's) tokenizer into C groups for HDLM."""
    setup_logging()
    if out.exists() and any(out.iterdir()):
        fail(f"--out {out} already exists and is not empty")
    if metric not in {"euclidean", "cosine"}:
        fail(f"--metric must be euclidean or cosine, got {metric!r}")
    if num_clusters < 2:
        fail(f"--num-clusters must be >= 2, got {num_clusters}")

    def run() -> Path:
        from mmdlm.clusters import clusters_for_tokenizer

        if data is not None:
            from mmdlm.data.tokens import TokenDataset

            dataset = TokenDataset.open(data)
            tokenizer, vocab = dataset.tokenizer(), dataset.vocab
        elif checkpoint is not None:
            from mmdlm.pipeline import load_pretrained

            pipe = load_pretrained(checkpoint)
            tokenizer, vocab = pipe.tokenizer, pipe.vocab
        else:
            raise ValueError(
                "give --data DATASET_DIR (or --checkpoint MODEL_DIR) to say which tokenizer to cluster"
            )
        result = clusters_for_tokenizer(
            tokenizer,
            num_clusters,
            mask_id=vocab.mask_id,
            checkpoint=checkpoint,
            encoder=encoder,
            metric=metric,
            seed=seed,
        )
        return result.save(out)

    path = run_guarded(run)
    typer.echo(f"clusters written to {path}")
