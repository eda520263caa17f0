"""Fixtures of the trainer service tests: one small prepared dataset per session, published into each
platform as a real `dataset` artifact, and helpers to find the processes of a job.

Sizes are the smallest that still train through 2 gloo ranks: cpu-nano DiT, seq_len 32, batch 4.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mmdlm.training.debug import prepare_debug_dataset
from services.common import artifacts, lifecycle
from services.common.auth import get_or_create_user
from services.common.lifecycle import Lease
from services.common.models import Job, JobStatus, utcnow
from tests.utils.harness import Platform

TRAIN_ENV = {"MMDLM_TRAIN_OMP_THREADS": "1", "MMDLM_TRAIN_SYNC_INTERVAL_S": "0.3"}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_debug_dataset(
        tmp_path_factory.getbasetemp() / "trainer-datasets", seq_len=32, vocab_size=512, documents_per_part=60
    )


def publish_local_artifact(platform: Platform, folder: Path, *, kind: str, user: str = "alice") -> str:
    """Register `folder` as an artifact of `user`, produced by a finished stand-in job (as a real
    prepare-data job would leave it: every byte stored and verified, then the row)."""
    with platform.db.begin() as s:
        owner = get_or_create_user(s, user)
        now = utcnow()
        job = Job(
            owner_id=owner.id, kind="prepare-data", queue="encode", spec={"kind": "prepare-data"},
            status=JobStatus.running.value, attempt=1, max_attempts=1, lease_owner="tests",
            lease_expires_at=now + timedelta(hours=1), available_at=now, created_at=now, updated_at=now,
        )  # fmt: skip
        s.add(job)
        s.flush()
        job_id, owner_id = job.id, owner.id
    lease = Lease(job_id=job_id, owner="tests", attempt=1)
    metadata = None
    if kind == "dataset":  # what prepare-data records and the train check reads (seq_len, vocab_size)
        manifest = json.loads((folder / "manifest.json").read_text())
        metadata = {
            "seq_len": manifest["seq_len"],
            "tokenizer": {"vocab_size": manifest["tokenizer"]["vocab_size"]},
        }
    artifact_id = artifacts.publish_directory(
        platform.db,
        platform.store(),
        lease=lease,
        owner_id=owner_id,
        local_dir=folder,
        kind=kind,
        name=kind,
        metadata=metadata,
    )
    assert lifecycle.finish_succeeded(platform.db, lease)
    return artifact_id


def train_spec(dataset: str, **overrides: Any) -> dict[str, Any]:
    """A job that runs ~1 s of training per 10 steps on 2 CPU ranks."""
    spec: dict[str, Any] = {
        "kind": "train",
        "dataset": dataset,
        "model": {"family": "mdlm", "model": {"preset": "cpu-nano", "max_seq_len": 32}},
        "data": {"batch_size": 4},
        "optimizer": {"lr": 1e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "steps": 30,
        "precision": "fp32",
        "device": "cpu",
        "checkpoint": {"interval": 10, "keep_last": 2, "keep_best": True},
        "eval": {"interval": 10, "batches": 1},
        "log": {"interval": 1, "console": False},
        "nproc_per_node": 2,
    }
    spec.update(overrides)
    return spec


def job_processes(job_id: str) -> list[int]:
    """Pids of every live process whose command line names this job (torchrun launcher and ranks:
    their --config path lies in the job's scratch dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if job_id in cmdline and "services.trainer" in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
