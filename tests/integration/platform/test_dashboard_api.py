"""The API pieces of the dashboard, in-process (TestClient) on both backends (SQLite + local store and
PostgreSQL + Redis + S3): downsampled metrics that keep a curve's extremes, the system view (queues,
running jobs, workers seen, versions) with per-user isolation, and the dataset manifest view."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

import mmdlm
from services.api.downsample import downsample_indices
from services.api.main import create_app
from services.common import artifacts, lifecycle
from services.common.auth import create_token
from services.common.db import Database
from services.common.lifecycle import Lease
from services.common.migrate import upgrade
from services.common.models import Job, JobStatus, Metric, User, utcnow
from services.common.settings import Settings
from services.common.store import open_store
from tests.utils.harness import Backend

pytestmark = pytest.mark.integration


@dataclass
class Api:
    client: TestClient
    settings: Settings
    db: Database
    headers: dict[str, str]  # alice
    other: dict[str, str]  # bob

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        return self.client.get(path, headers=headers or self.headers, params=params)

    def user_id(self, name: str) -> int:
        with self.db.session() as s:
            return s.query(User).filter(User.name == name).one().id


@pytest.fixture
def api(backend: Backend, tmp_path: Path) -> Iterator[Api]:
    settings = backend.settings(
        {
            "MMDLM_HOME": str(tmp_path / "home"),
            "MMDLM_KIND_MODULES": "tests.utils.kinds",
            "MMDLM_TOKEN_CACHE_S": "0",
        }
    )
    upgrade(settings.database_url)
    db = Database(settings.database_url, pool_size=2)
    with db.begin() as s:
        alice, bob = create_token(s, "alice")[1], create_token(s, "bob")[1]
    with TestClient(create_app(settings)) as client:
        yield Api(
            client, settings, db, {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
        )
    db.engine.dispose()


def add_job(
    api: Api, owner: str, *, queue: str = "train", status: str = "queued", lease: str | None = None
) -> str:
    now = utcnow()
    with api.db.begin() as s:
        job = Job(
            owner_id=api.user_id(owner), kind="probe-train", queue=queue, spec={"kind": "probe-train"},
            status=status, attempt=1 if lease else 0, max_attempts=1, lease_owner=lease,
            lease_expires_at=now + timedelta(hours=1) if lease else None, heartbeat_at=now if lease else None,
            available_at=now, created_at=now, updated_at=now,
        )  # fmt: skip
        s.add(job)
        s.flush()
        return job.id


# --- downsampling ----------------------------------------------------------------------------------------


def test_downsampling_keeps_every_bucket_extreme_the_ends_and_the_gaps() -> None:
    rng = np.random.default_rng(0)
    values = list(np.cumsum(rng.normal(size=20_000)))
    values[777] = 1e6  # a spike
    values[15_001] = -1e6  # a dip
    values[9_999] = math.nan  # a divergence
    keep = downsample_indices(values, 1000)
    assert len(keep) <= 1000 and keep == sorted(set(keep))
    assert {0, len(values) - 1, 777, 15_001, 9_999} <= set(keep)
    finite = [v for v in values if math.isfinite(v)]
    kept = [values[i] for i in keep if math.isfinite(values[i])]
    assert (min(kept), max(kept)) == (min(finite), max(finite))
    assert downsample_indices(values[:50], 1000) == list(range(50))  # short series: untouched
    assert downsample_indices(values, 1) == [len(values) - 1]
    three = downsample_indices(values, 3)  # too few for buckets: evenly spaced, both ends included
    assert len(three) == 3 and (three[0], three[-1]) == (0, len(values) - 1)


def test_metrics_downsampled_on_request_with_the_original_count(api: Api) -> None:
    job = add_job(api, "alice", status="succeeded")
    n = 30_000
    loss = [5.0 / (1 + i / 1000) for i in range(n)]
    loss[12_345] = 50.0  # a spike the downsampled curve must still show
    now = utcnow()
    rows = [
        {"job_id": job, "step": i + 1, "name": "loss", "value": v, "created_at": now}
        for i, v in enumerate(loss)
    ]
    rows += [
        {"job_id": job, "step": i + 1, "name": "lr", "value": 1e-3, "created_at": now} for i in range(100)
    ]
    with api.db.begin() as s:
        s.execute(insert(Metric), rows)

    full = api.get(f"/v1/jobs/{job}/metrics").json()
    assert full["max_points"] is None
    assert full["series"]["loss"]["count"] == n and len(full["series"]["loss"]["steps"]) == n
    assert full["series"]["loss"]["downsampled"] is False

    small = api.get(f"/v1/jobs/{job}/metrics", max_points=2000).json()
    curve = small["series"]["loss"]
    assert small["max_points"] == 2000
    assert curve["count"] == n and curve["downsampled"] is True
    assert len(curve["steps"]) <= 2000 and len(curve["steps"]) == len(curve["values"])
    assert curve["steps"] == sorted(curve["steps"])
    assert curve["steps"][0] == 1 and curve["steps"][-1] == n
    assert max(curve["values"]) == 50.0 and 12_346 in curve["steps"]
    assert min(curve["values"]) == min(loss)
    assert small["series"]["lr"] == {"steps": list(range(1, 101)), "values": [1e-3] * 100, "count": 100,
                                     "downsampled": False}  # fmt: skip

    only = api.get(f"/v1/jobs/{job}/metrics", max_points=10, name="lr").json()["series"]
    assert list(only) == ["lr"] and len(only["lr"]["steps"]) <= 10 and only["lr"]["count"] == 100

    for bad in (0, 10_001, "x"):
        response = api.get(f"/v1/jobs/{job}/metrics", max_points=bad)
        assert response.status_code == 422, response.text
        assert any("max_points" in e["field"] for e in response.json()["errors"]), response.text
    assert api.get(f"/v1/jobs/{job}/metrics", headers=api.other, max_points=100).status_code == 404


def test_sql_downsampling_matches_the_python_reference(api: Api) -> None:
    """The database cuts the curve (crud.job_metric_points); services.api.downsample is the rule. Random
    series with ties, repeated steps, +-inf (and NaN where the backend can store one: PostgreSQL; SQLite
    turns NaN into NULL, refused by the NOT NULL column) must give the same points through the API."""
    job = add_job(api, "alice", status="succeeded")
    rng = np.random.default_rng(7)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for name, n in (("loss", 4_001), ("grad_norm", 257), ("lr", 1), ("flat", 60)):
        values = np.round(np.cumsum(rng.normal(size=n)), 1)  # rounded: equal minima/maxima in a bucket
        if name == "flat":
            values[:] = 2.0
        elif n > 1:
            for i in rng.choice(n, size=4, replace=False):
                values[i] = math.inf
            values[rng.integers(n)] = -math.inf
            if not api.settings.is_sqlite:
                values[rng.integers(n)] = math.nan
        steps = np.sort(rng.integers(0, max(1, n // 2), size=n))  # repeated steps: ordered by id among them
        series[name] = (steps.tolist(), values.tolist())
    # steps up to the column's bound: the bucket arithmetic must not overflow (a 500 on PostgreSQL)
    far = [0, *sorted(rng.integers(1, 2**62, size=48).tolist()), 2**63 - 1]
    series["far"] = (far, np.round(rng.normal(size=50), 1).tolist())
    now = utcnow()
    rows = [
        {"job_id": job, "step": step, "name": name, "value": value, "created_at": now}
        for name, (steps, values) in series.items()
        for step, value in zip(steps, values, strict=True)
    ]
    with api.db.begin() as s:
        s.execute(insert(Metric), rows)

    def expected(name: str, max_points: int, since_step: int | None = None) -> dict[str, Any]:
        steps, values = series[name]
        first = 0 if since_step is None else bisect.bisect_left(steps, since_step)
        steps, values = steps[first:], values[first:]
        keep = downsample_indices(values, max_points, steps)
        return {
            "steps": [steps[i] for i in keep],
            "values": [values[i] if math.isfinite(values[i]) else None for i in keep],
            "count": len(steps),
            "downsampled": len(keep) < len(steps),
        }

    for max_points in (1, 2, 3, 4, 5, 9, 64, 257, 2000):
        got = api.get(f"/v1/jobs/{job}/metrics", max_points=max_points).json()["series"]
        assert got == {name: expected(name, max_points) for name in series}, max_points
    far_cut = api.get(f"/v1/jobs/{job}/metrics", max_points=9, name="far").json()["series"]["far"]
    assert len(far_cut["steps"]) <= 9 and far_cut["steps"][-1] == 2**63 - 1 and far_cut["count"] == 50
    got = api.get(f"/v1/jobs/{job}/metrics", max_points=20, name=["loss", "flat"], since_step=10).json()
    assert got["series"] == {"loss": expected("loss", 20, 10), "flat": expected("flat", 20, 10)}


# --- system ---------------------------------------------------------------------------------------------


def test_system_counts_every_queue_and_worker_but_shows_no_other_users_jobs(api: Api) -> None:
    add_job(api, "alice", queue="train")
    add_job(api, "alice", queue="train", status="retrying")
    add_job(api, "bob", queue="encode")
    bobs_running = add_job(api, "bob", queue="train", status="running", lease="gpu-host:4242:4300:ab12cd")
    add_job(api, "alice", queue="sample", status="running", lease="cpu-host:77:78:ef34ab")
    add_job(api, "alice", queue="sample", status="succeeded", lease="cpu-host:77:79:ff00ff")

    response = api.get("/v1/system")
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["versions"]["mmdlm"] == mmdlm.__version__ and view["versions"]["python"]
    database = "sqlite" if api.settings.is_sqlite else "postgresql"
    assert view["backends"]["database"] == database
    assert view["backends"]["store"] == api.settings.store_backend
    queues = {q["name"]: q for q in view["queues"]}
    assert {"encode", "train", "sample"} <= set(queues)
    assert queues["train"] == {"name": "train", "queued": 1, "retrying": 1, "running": 1}
    assert queues["encode"]["queued"] == 1 and queues["sample"]["running"] == 1
    assert view["running_jobs"] == 2
    assert view["you"] == {"queued": 1, "retrying": 1, "running": 1}
    workers = {w["name"]: w for w in view["workers"]}
    assert set(workers) == {"gpu-host:4242", "cpu-host:77"}
    assert (workers["cpu-host:77"]["running"], workers["cpu-host:77"]["jobs"]) == (1, 2)
    assert (workers["gpu-host:4242"]["running"], workers["gpu-host:4242"]["jobs"]) == (1, 1)
    assert bobs_running not in response.text  # aggregates only

    assert api.get("/v1/system", headers=api.other).json()["you"] == {
        "queued": 1,
        "retrying": 0,
        "running": 1,
    }
    assert api.get("/v1/system", window_s=5).status_code == 422
    assert api.client.get("/v1/system").status_code == 401


# --- dataset manifest -------------------------------------------------------------------------------------


def publish(api: Api, folder: Path, kind: str, metadata: dict[str, Any] | None = None) -> str:
    """Register `folder` as alice's artifact the way a job publishes one (a leased stand-in job)."""
    job = add_job(api, "alice", queue="encode", status=JobStatus.running.value, lease="tests:1:2:x")
    lease = Lease(job_id=job, owner="tests:1:2:x", attempt=1)
    artifact = artifacts.publish_directory(
        api.db, open_store(api.settings), lease=lease, owner_id=api.user_id("alice"), local_dir=folder,
        kind=kind, name=kind, metadata=metadata,
    )  # fmt: skip
    assert lifecycle.finish_succeeded(api.db, lease)
    return artifact


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmdlm.training.debug import prepare_debug_dataset

    return prepare_debug_dataset(
        tmp_path_factory.getbasetemp() / "trainer-datasets", seq_len=32, vocab_size=512, documents_per_part=60
    )


def test_manifest_view_of_a_dataset_and_refusals(api: Api, tiny_dataset: Path, tmp_path: Path) -> None:
    import json

    dataset = publish(api, tiny_dataset, "dataset")
    response = api.get(f"/v1/artifacts/{dataset}/manifest")
    assert response.status_code == 200, response.text
    view = response.json()
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert (view["kind"], view["format"], view["seq_len"]) == ("dataset", "mmdlm.tokens/v1", 32)
    assert view["tokenizer"] == {k: manifest["tokenizer"][k] for k in ("kind", "name", "vocab_size")}
    assert set(view["splits"]) == set(manifest["splits"]) == {"train", "validation"}
    for name, split in manifest["splits"].items():
        assert view["splits"][name] == {"documents": split["documents"], "tokens": split["tokens"],
                                        "rows": split["rows"], "shards": len(split["shards"])}  # fmt: skip
    assert view["latent"] is None and view["source"] == manifest["source"]
    assert (
        "shards" not in json.dumps(view["manifest"]["splits"])
        and view["manifest"]["seed"] == manifest["seed"]
    )

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "weights.bin").write_bytes(b"\0" * 10)
    without = publish(api, plain, "output")
    response = api.get(f"/v1/artifacts/{without}/manifest")
    assert response.status_code == 404 and "manifest.json" in response.json()["detail"]
    assert api.get(f"/v1/artifacts/{dataset}/manifest", headers=api.other).status_code == 404


@pytest.mark.slow
def test_manifest_view_of_a_latent_dataset_has_dim_and_statistics(api: Api, tmp_path: Path) -> None:
    """A real (MiniLM) latent dataset of a few dozen rows: dim, encoder and the train-split statistics."""
    from mmdlm.config.latent import EncodeConfig, EncoderConfig
    from mmdlm.data.latent import LatentManifest, encode_dataset

    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(12):
        (texts / f"doc{i:02d}.txt").write_text(f"Document {i} tells of a river and a castle number {i * 3}.")
    config = EncodeConfig(
        shard_rows=8, seq_len=16, validation_fraction=0.25, encoder=EncoderConfig(batch_size=16)
    )
    encode_dataset(config, texts, tmp_path / "latents")
    manifest = LatentManifest.read(tmp_path / "latents")
    latent = publish(api, tmp_path / "latents", "latent-dataset")

    view = api.get(f"/v1/artifacts/{latent}/manifest").json()
    assert view["kind"] == "latent-dataset" and view["latent"]["dim"] == manifest.dim
    stats = manifest.normalization.stats
    assert view["latent"]["stats"]["count"] == stats.count
    assert view["latent"]["stats"]["mean"] == pytest.approx(stats.mean)
    assert view["latent"]["stats"]["std"] == pytest.approx(stats.std)
    assert view["latent"]["stats"]["mean_norm"] == pytest.approx(stats.mean_norm)
    assert view["latent"]["unit_norm"] == manifest.normalization.unit_norm
    assert view["latent"]["encoder"]["name"] == manifest.encoder["name"]
    assert {name: s["rows"] for name, s in view["splits"].items()} == {
        name: s.rows for name, s in manifest.splits.items()
    }
