"""`encode` jobs on real encode workers over PostgreSQL + Redis + S3: texts sent with the job, bad input,
and a job split over two workers with one SIGKILLed mid-job, whose output must be complete and identical
(file by file) to a single-worker run, with no stored shard encoded twice."""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmdlm.data.latent import LatentDataset
from services.common.client import ApiError
from tests.integration.sampler.helpers import publish_folder
from tests.utils.fixtures import _backend
from tests.utils.harness import Platform, Worker

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

ENV = {"OMP_NUM_THREADS": "1", "MMDLM_LEASE_TTL_S": "3", "MMDLM_HEARTBEAT_INTERVAL_S": "0.25"}
SPEC = {
    "kind": "encode",
    "shard_rows": 48,
    "max_rows": 480,
    "shards_per_task": 2,
    "encoder": {"batch_size": 48},
}


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """An API and one encode worker; the SIGKILL test adds the second."""
    workdir = tmp_path_factory.mktemp("encode-cluster")
    with (
        _backend("production", request, workdir / "backend") as backend,
        Platform(backend, workdir / "p", workers_queues=[["encode"]], env=ENV) as platform,
    ):
        yield platform


@pytest.fixture(scope="module")
def dataset_id(cluster: Platform, tmp_path_factory: pytest.TempPathFactory) -> str:
    from mmdlm.training.debug import prepare_debug_dataset

    folder = prepare_debug_dataset(
        tmp_path_factory.getbasetemp() / "trainer-datasets", seq_len=32, vocab_size=512, documents_per_part=60
    )
    return publish_folder(cluster, folder, kind="dataset")


def files_of(cluster: Platform, artifact_id: str) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in cluster.client.artifact(artifact_id)["files"]}


def manifest_of(cluster: Platform, artifact_id: str) -> dict[str, Any]:
    manifest = json.loads(cluster.client.download(artifact_id, "manifest.json"))
    manifest.pop("created_at")
    return manifest


def test_texts_sent_with_the_job_become_a_latent_dataset(cluster: Platform, tmp_path: Path) -> None:
    things, places = ["river", "castle", "garden", "violin"], ["sea", "hill", "town", "forest", "road"]
    texts = [
        f"Sentence number {i} talks about a {things[i % 4]} near the {places[i % 5]}." for i in range(20)
    ]
    job = cluster.client.submit({"kind": "encode", "texts": texts, "seq_len": 32, "shard_rows": 6,
                                 "validation_fraction": 0.2})  # fmt: skip
    done = cluster.wait(job["id"], timeout_s=120)
    assert done["status"] == "succeeded", f"{done}\n{cluster.logs()}"
    kinds = {a["kind"]: a for a in cluster.client.artifacts(job_id=job["id"])["data"]}
    assert set(kinds) == {"dataset", "latent-dataset"}
    assert kinds["dataset"]["metadata"]["source"] == {"type": "texts", "count": 20}
    cluster.client.download_all(kinds["latent-dataset"]["id"], tmp_path / "latents")
    data = LatentDataset.open(tmp_path / "latents", verify=True)
    assert data.dim == 384 and data.encoder_name == "minilm"
    rows = len(data.split("train")) + len(data.split("validation"))
    assert rows == 20 and len(data.split("validation")) > 0  # one row per short text
    from mmdlm.encoders import load_encoder

    split = data.split("train")
    expected = load_encoder("minilm").encode(split.texts([0, 1]))
    np.testing.assert_allclose(split.latents()[:2], expected, atol=1e-5)
    assert {t.lower() for t in split.texts()} <= {t.lower() for t in texts}


def test_bad_encode_requests_are_refused(cluster: Platform, dataset_id: str) -> None:
    cases = [
        ({"kind": "encode", "dataset": "0" * 32}, "dataset"),
        ({"kind": "encode", "dataset": dataset_id, "texts": ["a", "b"]}, "exactly one source"),
        ({"kind": "encode"}, "exactly one source"),
        ({"kind": "encode", "texts": ["fine", "  "]}, "texts[1] is empty"),
        ({"kind": "encode", "dataset": dataset_id, "encoder": {"name": "nope"}}, "encoder.name"),
        (
            {
                "kind": "encode-shard",
                "parent": "x",
                "source": dataset_id,
                "shard_start": 0,
                "shard_stop": 1,
                "shards_total": 1,
                "config": {},
            },
            "kind",
        ),  # fmt: skip
    ]
    for spec, words in cases:
        with pytest.raises(ApiError) as info:
            cluster.client.submit(spec)
        assert info.value.status == 422 and words in info.value.detail, info.value.detail


def _children(cluster: Platform, parent: str) -> list[dict[str, Any]]:
    jobs = cluster.client.jobs(kind="encode-shard", limit=500)["data"]
    return [j for j in jobs if j["spec"]["parent"] == parent]


def _victim(cluster: Platform, parent: dict[str, Any]) -> tuple[Worker, dict[str, Any]] | None:
    """A worker that runs one of the job's shard tasks and is not the worker holding the parent."""
    if parent["status"] != "running":
        return None
    children = _children(cluster, parent["id"])
    if not any(child["status"] == "succeeded" for child in children):
        return None  # wait for a shard in the store first, so the kill lands mid-job
    # (not the parent's progress: the parent's process may be busy encoding a shard task itself)
    holder = cluster.worker_running(parent)
    for child in children:
        if child["status"] == "running" and child["worker"]:
            worker = cluster.worker_running(child)
            if worker is not holder:
                return worker, child
    return None


def test_a_job_split_over_two_workers_survives_a_sigkill(cluster: Platform, dataset_id: str) -> None:
    # reference: one worker does everything (the parent claims its own shard tasks)
    spec = {**SPEC, "dataset": dataset_id}
    reference = cluster.client.submit(spec)
    first = cluster.wait(reference["id"], timeout_s=180)
    assert first["status"] == "succeeded", f"{first}\n{cluster.logs()}"
    [ref_id] = first["artifacts"]
    shards = first["progress"]["total"]
    assert shards >= 8 and first["progress"]["step"] == shards

    cluster.add_worker(["encode"])
    job = cluster.client.submit(spec)
    found = None
    deadline = time.monotonic() + 120
    while found is None and time.monotonic() < deadline:
        found = _victim(cluster, cluster.client.job(job["id"]))
        time.sleep(0.05)
    assert found is not None, f"no shard task ran on the second worker\n{cluster.logs()}"
    victim, child = found
    cluster.kill_worker(victim, signal.SIGKILL)
    cluster.workers.remove(victim)

    done = cluster.wait(job["id"], timeout_s=180)
    assert done["status"] == "succeeded", f"{done}\n{cluster.logs()}"
    [out_id] = done["artifacts"]
    assert files_of(cluster, out_id) | {"manifest.json": ""} == files_of(cluster, ref_id) | {
        "manifest.json": ""
    }
    assert manifest_of(cluster, out_id) == manifest_of(cluster, ref_id)
    assert cluster.client.artifact(out_id)["metadata"]["tasks"] == -(-shards // SPEC["shards_per_task"])

    children = {c["id"]: c for c in _children(cluster, job["id"])}
    assert all(c["status"] == "succeeded" for c in children.values())
    assert children[child["id"]]["attempt"] == 2  # the killed task ran again, once
    stored: Counter[str] = Counter()
    for child_id in children:
        for event in cluster.client.events(child_id, follow=False):
            if event.type == "log" and (m := re.match(r"shard (\S+) stored", event.data["line"])):
                stored[m.group(1)] += 1
    assert stored and max(stored.values()) == 1, stored  # a stored shard is never encoded again
    assert not list(cluster.store().list(f"work/encode/{job['id']}/"))  # the work prefix is gone
    progress = [e.data for e in cluster.client.events(job["id"], follow=False) if e.type == "progress"]
    assert any("sentences encoded" in p["message"] for p in progress)
