"""The edge stack of the input-bounds and OpenAPI tests: a real API + an `encode` worker + the sampler over
PostgreSQL, Redis and S3, with one tiny trained MDLM model and its dataset published as artifacts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.sampler.helpers import model_metadata, publish_folder, sampler_env, sampler_process
from tests.utils.fixtures import _backend
from tests.utils.harness import Platform

EDGE_ENV = {
    "MMDLM_TRAIN_MAX_TOKENS": "10000000",  # a quota small enough to be hit by a plausible spec
    "MMDLM_SAMPLER_MAX_STEPS": "16",  # the fuzzer's valid requests stay cheap on 2 cores
}


@dataclass
class EdgeStack:
    platform: Platform
    model: str  # a `model` artifact of alice (tiny MDLM, vocabulary 512, context 32)
    dataset: str  # its `dataset` artifact (seq_len 32)
    job: str  # a succeeded probe job of alice (with metrics, events and an `output` artifact)
    output: str  # that job's `output` artifact


@pytest.fixture(scope="session")
def edge_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeStack]:
    from mmdlm.training import train
    from mmdlm.training.debug import debug_train_config, prepare_debug_dataset

    root = tmp_path_factory.mktemp("edge")
    dataset_dir = prepare_debug_dataset(root / "data", seq_len=32, vocab_size=512, documents_per_part=40)
    run = root / "mdlm"
    overrides = {"steps": 4, "data": {"batch_size": 4}, "model": {"model": {"max_seq_len": 32}}}
    train(debug_train_config("mdlm", dataset_dir, run, overrides=overrides))
    port, env = sampler_env()
    with (
        _backend("production", request, root / "backend") as backend,
        Platform(backend, root / "p", workers_queues=[["encode"]], env={**env, **EDGE_ENV}) as platform,
        sampler_process(platform, port),
    ):
        model = publish_folder(platform, run / "final", kind="model", metadata=model_metadata(run / "final"))
        # the metadata a prepare-data job records (the quota reads seq_len from it)
        dataset = publish_folder(platform, dataset_dir, kind="dataset", metadata={"seq_len": 32})
        job = platform.client.submit({"kind": "probe", "steps": 3, "log_lines": 2, "files": 1})
        assert platform.wait(job["id"])["status"] == "succeeded"
        output = platform.client.artifacts(job_id=job["id"])["data"][0]["id"]
        yield EdgeStack(platform, model, dataset, job["id"], output)
