"""`clusters` jobs on the real platform (PostgreSQL + Redis + S3, one worker for queues encode and train): a
dataset's clusters feed an HDLM `train` job over REST, the trained model's own embeddings are a source too, and
bad input is refused. One backend only, to keep the cost near a minute: the runner only stages and publishes
through JobContext, which every backend implements the same way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmdlm.clusters import Clusters, tokenizer_fingerprint
from mmdlm.data.tokens import TokenDataset
from mmdlm.training.debug import prepare_debug_dataset
from services.common.client import ApiError
from tests.integration.sampler.helpers import publish_folder
from tests.integration.trainer.conftest import TRAIN_ENV
from tests.utils.fixtures import _backend
from tests.utils.harness import Platform

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

HDLM_TRAIN: dict[str, Any] = {
    "kind": "train", "data": {"batch_size": 4}, "optimizer": {"lr": 1e-3}, "schedule": {"kind": "constant"},
    "steps": 4, "precision": "fp32", "device": "cpu", "checkpoint": {"interval": 1000},
    "eval": {"interval": 1000, "batches": 1}, "log": {"interval": 1, "console": False}, "nproc_per_node": 1,
}  # fmt: skip


def succeeded(platform: Platform, spec: dict[str, Any], timeout_s: float = 120) -> dict[str, Any]:
    done = platform.wait(platform.client.submit(spec)["id"], timeout_s=timeout_s)
    assert done["status"] == "succeeded", (done, platform.logs())
    return done


@pytest.fixture(scope="module")
def platform(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    workdir = tmp_path_factory.mktemp("clusters-platform")
    with (
        _backend("production", request, workdir / "backend") as backend,
        Platform(backend, workdir / "p", workers_queues=[["encode", "train"]], env=TRAIN_ENV) as p,
    ):
        yield p


@pytest.fixture(scope="module")
def dataset(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, TokenDataset]:
    """The trainer tests' tiny dataset (BPE 512, seq_len 32) as a `dataset` artifact, with the tokenizer
    metadata a prepare-data job records (the submit-time num_clusters check reads it)."""
    folder = prepare_debug_dataset(
        tmp_path_factory.getbasetemp() / "trainer-datasets", seq_len=32, vocab_size=512, documents_per_part=60
    )
    local = TokenDataset.open(folder)
    metadata = {"tokenizer": {"vocab_size": local.vocab.vocab_size}}
    return publish_folder(platform, folder, kind="dataset", metadata=metadata), local


def load_clusters(platform: Platform, artifact_id: str, dest: Path, tokenizer: Any) -> Clusters:
    platform.client.download_all(artifact_id, dest)
    return Clusters.load(dest, vocab_size=len(tokenizer), tokenizer=tokenizer)


def test_hdlm_trains_over_rest_on_a_clusters_job(
    platform: Platform, dataset: tuple[str, TokenDataset], tmp_path: Path
) -> None:
    dataset_id, local = dataset
    tokenizer, vocab = local.tokenizer(), local.vocab
    done = succeeded(platform, {"kind": "clusters", "dataset": dataset_id, "num_clusters": 16, "seed": 3})
    clusters_id = done["artifacts"][0]
    artifact = platform.client.artifact(clusters_id)
    assert artifact["kind"] == "clusters" and len(done["artifacts"]) == 1
    meta = artifact["metadata"]
    assert meta["num_clusters"] == 16 and meta["vocab_size"] == vocab.vocab_size == len(tokenizer)
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert meta["source"]["artifact"] == dataset_id and meta["source"]["kind"] == "dataset"
    assert done["progress"]["step"] == done["progress"]["total"]

    clusters = load_clusters(platform, clusters_id, tmp_path / "clusters", tokenizer)
    assert clusters.num_clusters == 16 and clusters.centroids.shape[1] == 384  # MiniLM's width
    assert np.flatnonzero(clusters.cluster_map < 0).tolist() == [vocab.mask_id]
    low, high = meta["size_bounds"]
    sizes = clusters.sizes()
    assert sizes.sum() == vocab.vocab_size - 1 and low <= sizes.min() and sizes.max() <= high
    assert clusters.manifest["method"]["seed"] == 3

    hdlm = {"family": "hdlm", "model": {"preset": "cpu-nano", "max_seq_len": 32}, "clusters": clusters_id}
    trained = succeeded(platform, {**HDLM_TRAIN, "dataset": dataset_id, "model": hdlm}, timeout_s=180)
    [model_id] = trained["artifacts"]
    model = platform.client.artifact(model_id)
    assert model["metadata"]["clusters"] == clusters_id and model["metadata"]["step"] == 4

    # the trained model's own input embeddings are a source too (its width, its tokenizer)
    done = succeeded(platform, {"kind": "clusters", "model": model_id, "num_clusters": 8, "metric": "cosine"})
    again = load_clusters(platform, done["artifacts"][0], tmp_path / "again", tokenizer)
    assert again.num_clusters == 8 and again.manifest["source"]["artifact"] == model_id
    assert again.centroids.shape[1] == 64  # cpu-nano hidden size, not MiniLM's
    # the model artifact carries no vocabulary size: too many clusters fail the job, naming the field
    failed = platform.wait(
        platform.client.submit({"kind": "clusters", "model": model_id, "num_clusters": 5000})["id"]
    )
    assert failed["status"] == "failed" and failed["attempt"] == 1
    assert failed["error"].startswith("num_clusters:"), failed["error"]


def test_bad_clusters_requests_are_refused_with_the_field(
    platform: Platform, dataset: tuple[str, TokenDataset]
) -> None:
    dataset_id, local = dataset
    foreign = publish_folder(platform, local.root, kind="dataset", user="mallory")
    vocab_size = local.vocab.vocab_size
    cases = [  # (spec, field, words in the message)
        ({"dataset": dataset_id, "num_clusters": vocab_size}, "num_clusters", f"at most {vocab_size - 1}"),
        ({"dataset": dataset_id, "num_clusters": 1}, "num_clusters", "greater than or equal to 2"),
        ({"dataset": dataset_id, "metric": "manhattan"}, "metric", "cosine"),
        ({"dataset": "0" * 32}, "dataset", "not found"),
        ({"dataset": foreign}, "dataset", "not found"),  # another user's
        ({"model": dataset_id}, "model", "expected 'model'"),  # a dataset is no model
        ({"dataset": dataset_id, "model": dataset_id}, None, "exactly one source"),
        ({}, None, "exactly one source"),
    ]
    for spec, field, words in cases:
        with pytest.raises(ApiError) as info:
            platform.client.submit({"kind": "clusters", **spec})
        errors = info.value.body["errors"]
        assert info.value.status == 422 and words in info.value.detail, (spec, info.value.detail)
        assert field is None or field in [e["field"] for e in errors], (spec, errors)
    kinds = {k["name"]: k for k in platform.client.kinds()}
    assert kinds["clusters"]["queue"] == "encode"
