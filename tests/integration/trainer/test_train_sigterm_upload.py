"""The trainer's stop path stores the checkpoint that SIGTERM makes: a train job with no periodic
checkpoint (interval far beyond its progress) is cancelled mid-run on PostgreSQL + Redis + S3; the
ranks checkpoint at the next step boundary, the runner uploads and commits it, and the job ends
`cancelled` as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.trainer.conftest import TRAIN_ENV, publish_local_artifact, train_spec, wait_for
from tests.utils.harness import Platform

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_cancel_stores_the_sigterm_checkpoint(make_backend, platform_factory, tiny_dataset: Path) -> None:
    env = {**TRAIN_ENV, "MMDLM_CANCEL_GRACE_S": "60", "MMDLM_TRAIN_STOP_GRACE_S": "45"}
    p: Platform = platform_factory(make_backend("production"), workers_queues=[["train"]], env=env)
    dataset = publish_local_artifact(p, tiny_dataset, kind="dataset")
    spec = train_spec(
        dataset,
        steps=100_000,
        schedule={"kind": "constant", "warmup_steps": 0},
        checkpoint={"interval": 50_000, "keep_last": 2, "keep_best": False},
        eval={"interval": 50_000, "batches": 1},
    )
    job = p.client.submit(spec)
    p.wait_progress(job["id"], 3, timeout_s=120)
    assert not list(p.store().list(f"runs/{job['id']}/index/")), "no periodic checkpoint yet"
    p.client.cancel(job["id"])
    done = p.wait(job["id"], timeout_s=60)
    assert done["status"] == "cancelled" and done["attempt"] == 1

    markers = wait_for(lambda: list(p.store().list(f"runs/{job['id']}/index/")), 10, "a committed checkpoint")
    (marker,) = markers
    step = json.loads(p.store().get_bytes(marker.key))["step"]
    assert step >= 3, step
    files = {i.key.rsplit("/", 1)[-1] for i in p.store().list(f"runs/{job['id']}/checkpoints/")}
    assert {"trainer_state.json", "model.safetensors", "optimizer.pt", "rank-0.pt", "rank-1.pt"} <= files
    assert any("SIGTERM: checkpointing at step" in e.data.get("line", "") for e in p.client.events(job["id"])
               if e.type == "log")  # fmt: skip
