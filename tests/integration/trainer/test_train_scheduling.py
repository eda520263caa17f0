"""Scheduling in the `train` queue (fast `probe-train` jobs stand in for training): priority decides
the order, a waiting job can be reprioritized or cancelled, and a per-user limit on running jobs lets
another user's job run first."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.common.client import ApiError
from tests.integration.trainer.conftest import wait_for
from tests.utils.harness import Platform

pytestmark = pytest.mark.integration


def _started(p: Platform, job_id: str) -> datetime:
    return datetime.fromisoformat(p.client.job(job_id)["started_at"])


def _finished(p: Platform, job_id: str) -> datetime:
    return datetime.fromisoformat(p.client.job(job_id)["finished_at"])


def test_priority_reprioritize_and_cancel_while_queued(make_backend, platform_factory) -> None:
    p: Platform = platform_factory(make_backend("embedded"), workers_queues=[["train"]])
    blocker = p.client.submit({"kind": "probe-train", "steps": 20, "step_s": 0.1})
    p.wait_progress(blocker["id"], 1)
    low = p.client.submit({"kind": "probe-train", "steps": 1})
    high = p.client.submit({"kind": "probe-train", "steps": 1, "priority": 5})
    bumped = p.client.submit({"kind": "probe-train", "steps": 1})
    doomed = p.client.submit({"kind": "probe-train", "steps": 1, "priority": 50})
    assert p.client.set_priority(bumped["id"], 10)["priority"] == 10
    assert p.client.cancel(doomed["id"])["status"] == "cancelled"
    with pytest.raises(ApiError) as info:
        p.client.set_priority(blocker["id"], 1)
    assert info.value.status == 409
    with pytest.raises(ApiError) as info:
        p.client.set_priority(low["id"], 1000)
    assert info.value.status == 422 and info.value.body["errors"][0]["field"] == "priority"
    for job in (low, high, bumped):
        assert p.wait(job["id"])["status"] == "succeeded"
    order = sorted((low, high, bumped), key=lambda j: _started(p, j["id"]))
    assert [j["id"] for j in order] == [bumped["id"], high["id"], low["id"]]
    assert p.client.job(doomed["id"])["started_at"] is None


def test_per_user_limit_on_running_jobs(make_backend, platform_factory) -> None:
    p: Platform = platform_factory(
        make_backend("embedded"),
        workers_queues=[["train"], ["train"]],
        env={"MMDLM_MAX_RUNNING_PER_USER": "1"},
    )
    bob = p.client_for("bob")
    first = p.client.submit({"kind": "probe-train", "steps": 30, "step_s": 0.1})
    p.wait_progress(first["id"], 1)
    second = p.client.submit({"kind": "probe-train", "steps": 1, "priority": 9})
    other = bob.submit({"kind": "probe-train", "steps": 1})
    wait_for(lambda: bob.job(other["id"])["status"] == "succeeded", 30, "bob's job to run beside alice's")
    assert p.wait(second["id"])["status"] == "succeeded"
    # bob's job ran while alice's first one did; alice's second (higher priority) waited for her first
    bob_started = datetime.fromisoformat(bob.job(other["id"])["started_at"])
    assert bob_started < _finished(p, first["id"]) <= _started(p, second["id"])
