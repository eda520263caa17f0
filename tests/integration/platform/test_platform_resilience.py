"""What the platform does when things break: a worker SIGKILLed mid-job, a message delivered twice,
the object store unreachable, a runner that ignores cancel; and routing jobs to their queue's workers.
On both backends, with real worker processes."""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.queue import create_celery, publish
from tests.utils.fixtures import BACKEND_PARAMS, _backend
from tests.utils.harness import Platform
from tests.utils.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """An API and three workers: one for `train`, two for `encode`; nobody consumes `sample` yet."""
    workdir = tmp_path_factory.mktemp(f"cluster-{request.param}")
    with _backend(request.param, request, workdir / "backend") as backend:
        with Platform(backend, workdir / "p", workers_queues=[["train"], ["encode"], ["encode"]]) as p:
            yield p


def markers(directory: Path, job_id: str) -> list[str]:
    return sorted(p.name for p in directory.glob(f"{job_id}-attempt-*"))


def test_jobs_go_to_the_workers_of_their_queue(cluster: Platform) -> None:
    client = cluster.client
    waiting = client.submit({"kind": "probe-sample", "steps": 1})
    trained = client.submit({"kind": "probe-train", "steps": 1})
    done = cluster.wait(trained["id"])
    assert done["status"] == "succeeded" and cluster.worker_running(done).queues == ["train"]
    time.sleep(1.0)
    assert client.job(waiting["id"])["status"] == "queued"  # no `sample` worker: it waits, untouched
    assert client.cancel(waiting["id"])["status"] == "cancelled"


def test_a_second_delivery_does_not_start_the_job_twice(cluster: Platform, tmp_path: Path) -> None:
    client = cluster.client
    job = client.submit({"kind": "probe", "steps": 12, "step_s": 0.25, "marker_dir": str(tmp_path)})
    running = cluster.wait_progress(job["id"], 2)
    owner = cluster.worker_running(running)
    app = create_celery(cluster.settings)
    for _ in range(2):  # what Redis does after its visibility timeout, or a duplicate publish
        publish(app, job["id"], "encode")
    app.close()
    done = cluster.wait(job["id"], timeout_s=60)
    assert (done["status"], done["attempt"]) == ("succeeded", 1)
    assert markers(tmp_path, job["id"]) == [
        f"{job['id']}-attempt-1-pid-{m.split('-pid-')[1]}" for m in markers(tmp_path, job["id"])
    ]
    assert len(markers(tmp_path, job["id"])) == 1
    others = [w for w in cluster.workers if w is not owner and "encode" in w.queues]
    assert any("nothing claimable" in w.log_text() for w in [*others, owner])


def test_sigkilled_worker_job_runs_again_exactly_once(cluster: Platform, tmp_path: Path) -> None:
    client = cluster.client
    spec = {"kind": "probe", "steps": 12, "step_s": 0.25, "files": 2, "marker_dir": str(tmp_path)}
    job = client.submit(spec)
    running = cluster.wait_progress(job["id"], 2)
    victim = cluster.worker_running(running)
    cluster.kill_worker(victim, signal.SIGKILL)  # the whole worker: main process and its pool child
    assert len(markers(tmp_path, job["id"])) == 1
    done = cluster.wait(job["id"], timeout_s=90)
    assert done["status"] == "succeeded", f"{done}\n{cluster.logs()}"
    assert done["attempt"] == 2 and cluster.worker_running(done) is not victim
    states = [e.data for e in client.events(job["id"]) if e.type == "state"]
    lost = [s for s in states if s["status"] == "retrying"]
    assert len(lost) == 1 and "stopped responding" in lost[0]["error"]
    assert client.artifacts(job_id=job["id"])["count"] == 1
    time.sleep(2 * cluster.settings.sweep_interval_s + 0.5)
    assert len(markers(tmp_path, job["id"])) == 2  # attempt 1 (killed) and attempt 2, nothing more
    assert client.job(job["id"])["status"] == "succeeded"
    cluster.workers.remove(victim)


def test_unreachable_store_fails_the_job_with_a_clear_error_and_no_artifact(cluster: Platform) -> None:
    if cluster.backend.name == "production":
        broken = {"MMDLM_S3_ENDPOINT": f"127.0.0.1:{free_port()}"}  # nothing listens there
        expected = "unreachable"
    else:
        blocker = cluster.workdir / f"not-a-folder-{secrets.token_hex(3)}"
        blocker.write_text("")
        broken = {"MMDLM_STORE_PATH": str(blocker / "store")}
        expected = "not writable"
    # without its start-up checks: a worker would refuse to start on this store (the store breaking
    # while the worker runs is the case under test)
    broken["MMDLM_STARTUP_CHECKS"] = "false"
    worker = cluster.add_worker(["sample"], env=broken, wait_ready=False)  # the job waits for it
    try:
        job = cluster.client.submit({"kind": "probe-sample", "steps": 1, "files": 3, "max_attempts": 2})
        done = cluster.wait(job["id"], timeout_s=90)
        assert (done["status"], done["attempt"]) == ("failed", 2), done
        assert expected in done["error"] and "Traceback" not in done["error"]
        retry = [
            e.data
            for e in cluster.client.events(job["id"])
            if e.type == "state" and e.data["status"] == "retrying"
        ]
        assert len(retry) == 1 and expected in retry[0]["error"]
        assert cluster.client.artifacts(job_id=job["id"])["count"] == 0
        assert list(cluster.store().list(f"artifacts/{job['id']}/")) == []
    finally:
        cluster.kill_worker(worker)  # idle by now; no warm shutdown needed
        cluster.workers.remove(worker)


def test_a_runner_that_ignores_cancel_is_stopped(cluster: Platform) -> None:
    worker = cluster.add_worker(["sample"], wait_ready=False)
    try:
        client = cluster.client
        stuck = client.submit({"kind": "probe-sample", "steps": 1, "ignore_cancel": True})
        cluster.wait_progress(stuck["id"], 1)
        client.cancel(stuck["id"])
        done = cluster.wait(stuck["id"], timeout_s=30)
        grace = cluster.settings.cancel_grace_s
        assert done["status"] == "cancelled" and f"did not stop within {grace:g}s" in done["error"]
        # the pool replaced the process it ended: the same worker runs the next job
        after = client.submit({"kind": "probe-sample", "steps": 1})
        done = cluster.wait(after["id"], timeout_s=60)
        assert done["status"] == "succeeded" and cluster.worker_running(done) is worker
        assert worker.alive()
    finally:
        cluster.kill_worker(worker)
        cluster.workers.remove(worker)
