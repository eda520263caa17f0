"""`train` jobs through the real stack: uvicorn API, Celery worker processes, torchrun with 2 gloo ranks,
on the embedded default and on PostgreSQL + Redis + S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmdlm.pipeline import load_pretrained
from tests.integration.trainer.conftest import TRAIN_ENV, publish_local_artifact, train_spec, wait_for
from tests.utils.harness import Backend, Platform

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_streams_metrics_then_publishes_a_loadable_model(
    backend: Backend, platform_factory, tiny_dataset: Path, tmp_path: Path
) -> None:
    p: Platform = platform_factory(backend, workers_queues=[["train"]], env=TRAIN_ENV)
    dataset = publish_local_artifact(p, tiny_dataset, kind="dataset")
    job = p.client.submit(train_spec(dataset, steps=40, priority=3, log={"interval": 1, "console": True}))
    # metrics are readable through the API while the job still runs
    running = wait_for(
        lambda: (m := p.client.metrics(job["id"], ["loss"])["series"].get("loss"))
        and p.client.job(job["id"])["status"] == "running" and m,
        90, "loss metrics while running",
    )  # fmt: skip
    assert running["steps"][0] == 1
    done = p.wait(job["id"], timeout_s=120)
    assert done["status"] == "succeeded", (done, p.logs())
    assert done["progress"]["step"] == done["progress"]["total"] == 40
    series = p.client.metrics(job["id"])["series"]
    assert series["loss"]["steps"] == list(range(1, 41))  # one row per step: no duplicates
    for name in ("lr", "grad_norm", "tokens_per_s", "elbo", "val_nll"):
        assert name in series, sorted(series)
    assert series["val_nll"]["steps"] == [10, 20, 30, 40]

    [model_id] = done["artifacts"]
    artifact = p.client.artifact(model_id)
    assert artifact["kind"] == "model" and artifact["metadata"]["step"] == 40
    paths = {f["path"] for f in artifact["files"]}
    assert {"config.json", "model.safetensors", "job_spec.json", "tokenizer/tokenizer.json"} <= paths
    local = tmp_path / "model"
    p.client.download_all(model_id, local)
    job_spec = json.loads((local / "job_spec.json").read_text())
    assert job_spec["job_id"] == job["id"] and job_spec["spec"]["dataset"] == dataset
    pipe = load_pretrained(local)
    assert pipe.family == "mdlm" and pipe.trained["step"] == 40

    # every rank's log reached the event stream and the object store
    lines = [e.data["line"] for e in p.client.events(job["id"]) if e.type == "log"]
    assert any(line.startswith("[rank0]") and "step=40" in line for line in lines), lines[-20:]
    store = p.store()
    keys = {info.key for info in store.list(f"runs/{job['id']}/")}
    assert f"runs/{job['id']}/logs/attempt-1/rank-1.stderr.log" in keys
    markers = sorted(k for k in keys if "/index/" in k)
    assert 1 <= len(markers) <= 3  # keep_last 2 + the best
    assert markers[-1].endswith("step-00000040.json")
