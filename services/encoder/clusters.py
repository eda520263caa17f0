"""Runner of `clusters`: stage the source artifact, cluster its tokenizer's ids with
`mmdlm.clusters.clusters_for_tokenizer`, and publish the folder (`mmdlm.clusters/v1`) as the job's `clusters`
artifact, which an HDLM `train` job takes as `model.clusters`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mmdlm.clusters import clusters_for_tokenizer
from mmdlm.data.vocab import VocabInfo
from services.common.context import JobContext
from services.common.errors import FieldError
from services.encoder.clusters_kinds import ClustersSpec, check_num_clusters
from services.trainer.kinds import LATENT_FAMILIES

ARTIFACT_NAME = "clusters"
PHASES = 3  # staging, embedding + k-means, publishing


def _dataset_tokenizer(folder: Path) -> tuple[Any, VocabInfo]:
    from mmdlm.data.tokens import TokenDataset

    dataset = TokenDataset.open(folder, verify=False)  # staging verified every byte
    return dataset.tokenizer(), dataset.vocab


def _model_tokenizer(folder: Path) -> tuple[Any, VocabInfo]:
    """The tokenizer and vocabulary of a model folder, read without building the network."""
    from mmdlm.data.tokenizers import load_tokenizer
    from mmdlm.pipeline import CONFIG_NAME

    config = json.loads((folder / CONFIG_NAME).read_text())
    if config.get("family") in LATENT_FAMILIES:
        raise FieldError("model", f"a {config['family']!r} model has no token embeddings to cluster")
    if not (folder / "tokenizer").is_dir():
        raise FieldError("model", "the model folder has no tokenizer/ to say which token ids to cluster")
    return load_tokenizer(folder / "tokenizer"), VocabInfo.model_validate(config["vocab"])


def run(ctx: JobContext) -> None:
    spec = ctx.spec
    assert isinstance(spec, ClustersSpec)
    done = ctx.find_artifact(ARTIFACT_NAME)
    if done is not None:  # an earlier attempt published it and then lost its worker
        ctx.log(f"clusters already published by an earlier attempt: {done}")
        return
    field, artifact_id = spec.source
    ctx.progress(0, PHASES, f"staging the {field}")
    folder = ctx.stage_artifact(artifact_id, kind=field)
    tokenizer, vocab = _dataset_tokenizer(folder) if field == "dataset" else _model_tokenizer(folder)
    if len(tokenizer) != vocab.vocab_size:
        raise FieldError(
            field, f"tokenizer has {len(tokenizer)} ids but the vocabulary says {vocab.vocab_size}"
        )
    check_num_clusters(spec.num_clusters, vocab.vocab_size)
    ctx.check_cancelled()

    embeddings = (
        "encoder input embeddings (all-MiniLM-L6-v2)" if field == "dataset" else "checkpoint embed.weight"
    )
    ctx.progress(
        1, PHASES, f"clustering {vocab.vocab_size - 1} tokens into {spec.num_clusters} by {embeddings}"
    )
    clusters = clusters_for_tokenizer(
        tokenizer, spec.num_clusters, mask_id=vocab.mask_id, checkpoint=folder if field == "model" else None,
        metric=spec.metric, seed=spec.seed,
    )  # fmt: skip
    source = {**clusters.manifest["source"], "artifact": artifact_id, "artifact_kind": field}
    clusters.manifest["source"] = source
    ctx.check_cancelled()

    out_dir = ctx.scratch_dir / ARTIFACT_NAME
    shutil.rmtree(out_dir, ignore_errors=True)  # debris of an attempt that crashed on this machine
    clusters.save(out_dir)
    manifest = clusters.manifest
    method = manifest["method"]
    ctx.log(
        f"{spec.num_clusters} clusters of {vocab.vocab_size - 1} tokens, sizes {manifest['sizes']['min']}-"
        f"{manifest['sizes']['max']} (bounds {method['min_size']}-{method['max_size']}), "
        f"{method['iterations']} k-means iterations, converged: {method['converged']}"
    )
    ctx.progress(2, PHASES, "publishing")
    artifact = ctx.publish_directory(
        out_dir, kind="clusters", name=ARTIFACT_NAME,
        metadata={
            "format": manifest["format"], "num_clusters": spec.num_clusters, "vocab_size": vocab.vocab_size,
            "tokenizer_fingerprint": manifest["tokenizer_fingerprint"],
            "source": {"artifact": artifact_id, "kind": field, "embeddings": embeddings},
            "metric": spec.metric, "seed": spec.seed, "embedding_dim": manifest["embedding_dim"],
            "sizes": manifest["sizes"], "size_bounds": [method["min_size"], method["max_size"]],
            "iterations": method["iterations"], "converged": method["converged"],
        },
    )  # fmt: skip
    ctx.log(f"clusters published as artifact {artifact}")
    ctx.progress(PHASES, PHASES, "done")
    shutil.rmtree(out_dir, ignore_errors=True)
