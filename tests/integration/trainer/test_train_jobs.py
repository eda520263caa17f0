"""`train` jobs through the real stack: uvicorn API, Celery worker processes, torchrun with 2 gloo ranks,
on the embedded default and on PostgreSQL + Redis + S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmdlm.pipeline import load_pretrained
from services.common.client import ApiError
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


def test_specs_that_cannot_run_are_refused_with_the_field(
    make_backend, platform_factory, tiny_dataset: Path
) -> None:
    p: Platform = platform_factory(
        make_backend("embedded"), workers_queues=[], env={"MMDLM_TRAIN_MAX_PROCS": "4"}
    )
    dataset = publish_local_artifact(p, tiny_dataset, kind="dataset")
    not_a_dataset = publish_local_artifact(p, tiny_dataset / "tokenizer", kind="model")
    foreign = publish_local_artifact(p, tiny_dataset, kind="dataset", user="mallory")
    hdlm = {"family": "hdlm", "model": "cpu-nano"}
    cases = {
        "dataset": [
            train_spec("0" * 32), train_spec(foreign), train_spec(not_a_dataset),
            train_spec(dataset, model={"family": "image-mmdit"}),  # a token dataset, not an image-dataset
        ],  # fmt: skip
        "nproc_per_node": [train_spec(dataset, nproc_per_node=8)],
        "nnodes": [train_spec(dataset, nnodes=2)],
        "model.family": [train_spec(dataset, model={"family": "nope"})],
        "model.clusters": [
            train_spec(dataset, model=hdlm),
            train_spec(dataset, model={**hdlm, "clusters": dataset}),
        ],
        "steps": [train_spec(dataset, steps=0)],
        # alpha_t <= 0 near t = 1 for this vocabulary: refused at submit, not a NaN ELBO in the worker
        "model.process.p_uniform": [
            train_spec(
                dataset, model={"family": "gidd", "model": "cpu-nano", "process": {"p_uniform": 0.999}}
            )
        ],
    }
    for field, specs in cases.items():
        for spec in specs:
            with pytest.raises(ApiError) as info:
                p.client.submit(spec)
            assert info.value.status == 422, (field, info.value.detail)
            fields = [e["field"] for e in info.value.body["errors"]]
            assert field in fields, (field, info.value.detail)
    latent = train_spec(dataset, model={"family": "latent-dit"})
    with pytest.raises(ApiError) as info:
        p.client.submit(latent)
    assert (
        "expected 'latent-dataset'" in info.value.detail
        and info.value.body["errors"][0]["field"] == "dataset"
    )
    kinds = {k["name"]: k for k in p.client.kinds()}
    assert "nproc_per_node <= 4" in kinds["train"]["description"]
    assert p.client.jobs(kind="train")["count"] == 0
