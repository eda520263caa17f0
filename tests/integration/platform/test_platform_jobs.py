"""Jobs through the real stack (uvicorn API, Celery worker process, broker, database, store), on the
embedded default (SQLite + sqla+sqlite broker + local store) and on PostgreSQL + Redis + S3."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest

from services.common.client import ApiError
from tests.utils.harness import Platform

pytestmark = pytest.mark.integration


def test_submit_succeeds_with_an_artifact_whose_bytes_match(platform: Platform) -> None:
    client = platform.client
    job = client.submit({"kind": "probe", "steps": 3, "files": 3, "file_bytes": 5000})
    done = platform.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1 and done["progress"] == {"step": 3, "total": 3, "message": "probing"}
    [artifact_id] = done["artifacts"]
    artifact = client.artifact(artifact_id)
    assert artifact["producer_job_id"] == job["id"] and artifact["uri"] == f"artifacts/{job['id']}/output/"
    store = platform.store()
    total = 0
    for record in artifact["files"]:
        via_api = client.download(artifact_id, record["path"])
        in_store = store.get_bytes(artifact["uri"] + record["path"])
        assert via_api == in_store
        assert hashlib.sha256(in_store).hexdigest() == record["sha256"] and len(in_store) == record["bytes"]
        total += record["bytes"]
    manifest = client.download(artifact_id, "manifest.json")
    assert hashlib.sha256(manifest).hexdigest() == artifact["sha256"] and total == artifact["bytes"]
    assert client.artifacts(job_id=job["id"])["count"] == 1


def test_http_errors_over_the_wire(platform: Platform) -> None:
    client = platform.client
    with pytest.raises(ApiError) as info:
        client.submit({"kind": "probe", "steps": "many"})
    assert info.value.status == 422 and info.value.detail.startswith("steps: ")
    anonymous = platform.new_client(None)
    with pytest.raises(ApiError) as info:
        anonymous.jobs()
    assert info.value.status == 401
    job = client.submit({"kind": "probe", "steps": 1})
    intruder = platform.client_for("mallory")
    for call in (
        lambda: intruder.job(job["id"]),
        lambda: intruder.cancel(job["id"]),
        lambda: intruder.metrics(job["id"]),
    ):
        with pytest.raises(ApiError) as info:
            call()
        assert info.value.status == 404
    with pytest.raises(ApiError) as info:
        list(intruder.events(job["id"]))
    assert info.value.status == 404
    huge = {"kind": "probe", "marker_dir": "x" * 100_000}
    with pytest.raises(ApiError) as info:
        client.submit(huge)
    assert info.value.status == 413
    assert platform.wait(job["id"])["status"] == "succeeded"


def test_transient_failure_retries_then_succeeds(platform: Platform) -> None:
    job = platform.client.submit({"kind": "probe", "steps": 1, "fail_attempts": 1, "max_attempts": 3})
    done = platform.wait(job["id"])
    assert (done["status"], done["attempt"], done["error"]) == ("succeeded", 2, None)
    states = [e.data for e in platform.client.events(job["id"]) if e.type == "state"]
    retry = next(s for s in states if s["status"] == "retrying")
    assert retry["error"] == "RuntimeError: probe failure on attempt 1" and retry[
        "retry_in_s"
    ] == pytest.approx(0.2)


def test_failure_after_the_last_attempt(platform: Platform) -> None:
    job = platform.client.submit({"kind": "probe-train", "steps": 1, "fail_attempts": 9, "max_attempts": 2})
    done = platform.wait(job["id"])
    assert (done["status"], done["attempt"]) == ("failed", 2)
    assert done["error"] == "RuntimeError: probe failure on attempt 2"


def test_permanent_error_fails_without_retry(platform: Platform) -> None:
    job = platform.client.submit({"kind": "probe-sample", "permanent_error": True, "max_attempts": 3})
    done = platform.wait(job["id"])
    assert (done["status"], done["attempt"], done["error"]) == (
        "failed",
        1,
        "probe: permanent_error was requested",
    )


def test_cancel_a_queued_and_a_running_job(platform: Platform) -> None:
    client = platform.client
    running = client.submit({"kind": "probe", "steps": 200, "step_s": 0.05})
    platform.wait_progress(running["id"], 2)
    queued = client.submit({"kind": "probe", "steps": 1})  # the only worker is busy: it waits
    assert client.job(queued["id"])["status"] == "queued"
    assert client.cancel(queued["id"])["status"] == "cancelled"  # at once
    requested = time.monotonic()
    assert client.cancel(running["id"])["cancel_requested"] is True
    done = platform.wait(running["id"], timeout_s=15)
    assert done["status"] == "cancelled" and time.monotonic() - requested < 5
    assert done["progress"]["step"] < 200
    assert platform.wait(queued["id"])["status"] == "cancelled"  # never started
    assert client.job(queued["id"])["attempt"] == 0
    with pytest.raises(ApiError) as info:
        client.cancel(platform.wait(client.submit({"kind": "probe", "steps": 1})["id"])["id"])
    assert info.value.status == 409


def test_priority_orders_waiting_jobs_within_a_queue(platform: Platform) -> None:
    client = platform.client
    blocker = client.submit({"kind": "probe", "steps": 200, "step_s": 0.05})
    platform.wait_progress(blocker["id"], 1)
    low = [client.submit({"kind": "probe", "steps": 1, "priority": 0})["id"] for _ in range(2)]
    high = client.submit({"kind": "probe", "steps": 1, "priority": 10})["id"]
    client.cancel(blocker["id"])
    started = {job_id: platform.wait(job_id)["started_at"] for job_id in [*low, high]}
    assert sorted(started, key=started.__getitem__) == [high, *low]


def test_event_stream_follows_a_running_job(platform: Platform) -> None:
    job = platform.client.submit({"kind": "probe", "steps": 8, "step_s": 0.15, "log_lines": 2})
    events = list(platform.client.events(job["id"]))
    types = [e.type for e in events]
    assert types[0] == "state" and types[-1] == "end" and events[-1].data["status"] == "succeeded"
    steps = [e.data["step"] for e in events if e.type == "progress"]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == 8
    assert [e.data["line"] for e in events if e.type == "log"][:2] == ["probe log line 0", "probe log line 1"]
    ids = [e.id for e in events if e.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    resumed = list(platform.client.events(job["id"], after=ids[2]))
    assert [e.id for e in resumed if e.id is not None] == ids[3:]


def test_metrics_are_recorded_per_step(platform: Platform) -> None:
    job = platform.client.submit({"kind": "probe", "steps": 5})
    platform.wait(job["id"])
    series = platform.client.metrics(job["id"])["series"]
    assert series["loss"]["steps"] == [1, 2, 3, 4, 5]
    assert series["loss"]["values"] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])


def test_ready_and_prometheus_over_http(platform: Platform) -> None:
    ready = httpx.get(f"{platform.url}/readyz").json()
    assert ready["status"] == "ok", ready
    text = httpx.get(f"{platform.url}/metrics").text
    assert 'mmdlm_jobs{queue="encode",status="succeeded"}' in text


@pytest.mark.slow
def test_prepare_data_end_to_end(platform: Platform, tmp_path: Path) -> None:
    from mmdlm.data.tokens import TokenDataset

    client = platform.client
    spec = {
        "kind": "prepare-data",
        "source": "bundled",
        "tokenizer": "gpt2",
        "seq_len": 64,
        "max_documents": 300,
    }
    job = client.submit(spec)
    done = platform.wait(job["id"], timeout_s=240)
    assert done["status"] == "succeeded", f"{done}\n{platform.logs()}"
    [dataset_id] = done["artifacts"]
    artifact = client.download_all(dataset_id, tmp_path / "dataset")  # every file's sha256 checked
    assert artifact["kind"] == "dataset"
    manifest_bytes = (tmp_path / "dataset" / "manifest.json").read_bytes()
    assert hashlib.sha256(manifest_bytes).hexdigest() == artifact["sha256"]
    manifest = json.loads(manifest_bytes)
    dataset = TokenDataset.open(tmp_path / "dataset", verify=True)
    assert dataset.manifest.seq_len == 64 and dataset.manifest.tokenizer.name == manifest["tokenizer"]["name"]
    meta = artifact["metadata"]
    assert meta["splits"]["train"]["documents"] + meta["splits"]["validation"]["documents"] == 300
    assert meta["splits"]["train"]["rows"] == len(dataset.split("train"))
    progress = [e.data for e in client.events(job["id"]) if e.type == "progress"]
    assert {"tokenizing"} <= {p["message"] for p in progress}
    # a later job stages the dataset by id (checked reference, verified download)
    probe = client.submit({"kind": "probe", "steps": 1, "dataset": dataset_id})
    assert platform.wait(probe["id"])["status"] == "succeeded"
    assert any("staged" in e.data.get("line", "") for e in client.events(probe["id"]) if e.type == "log")
    with pytest.raises(ApiError) as info:  # wrong kind of artifact for the field
        output = client.submit({"kind": "probe", "steps": 1, "files": 1})
        other = platform.wait(output["id"])["artifacts"][0]
        client.submit({"kind": "probe", "dataset": other})
    assert info.value.status == 422 and info.value.detail.startswith("dataset: ")


def test_prepare_data_bad_folder_is_refused_at_submit(platform: Platform, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-corpus"
    with pytest.raises(ApiError) as info:  # outside the data roots, and missing: one answer, no echo
        platform.client.submit({"kind": "prepare-data", "source": {"type": "folder", "path": str(missing)}})
    assert info.value.status == 422 and info.value.detail.startswith("source.path: ")
    assert str(tmp_path) not in str(info.value.body)
