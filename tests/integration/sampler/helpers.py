"""Helpers of the sampler and encoder integration tests: tiny trained models of every family (trained with
the library, like the trainer service would), publishing a local folder as a real artifact, and the
sampler process next to a platform's API and workers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import select

from services.common import artifacts, lifecycle
from services.common.lifecycle import Lease
from services.common.models import Job, JobStatus, User, utcnow
from tests.utils.harness import REPO, Platform
from tests.utils.servers import free_port, stop_process_group, tail

TOKEN_FAMILIES = ("mdlm", "gidd", "hdlm", "ar")
LATENT_FAMILIES = ("mmdit", "latent-dit", "cross-dit")
TEST_ENV = {
    "OMP_NUM_THREADS": "1",  # tiny models; the machine has 2 shared cores
    "MMDLM_SAMPLER_THREADS": "1",
    "MMDLM_SAMPLER_DEVICE": "cpu",
    "MMDLM_SAMPLER_BATCH_WINDOW_MS": "40",
    "MMDLM_SAMPLER_EMBED_MAX_BATCH": "8",
    "MMDLM_SAMPLER_EMBED_MAX_CHARS": "300",
}


@dataclass(frozen=True)
class TinyModels:
    dataset: Path  # `dataset` folder (BPE 512, seq_len 32)
    latents: Path  # `latent-dataset` folder encoded from it with MiniLM
    models: dict[str, Path]  # family -> `model` folder


def build_tiny_models(root: Path) -> TinyModels:
    """Train every family for a few steps on CPU with `mmdlm.training.train` (about 15 s in all)."""
    import torch

    from mmdlm.clusters import compute_clusters
    from mmdlm.config.latent import EncodeConfig, EncoderConfig
    from mmdlm.config.train import TrainConfig
    from mmdlm.data.latent import encode_dataset
    from mmdlm.data.tokens import TokenDataset
    from mmdlm.training import train
    from mmdlm.training.debug import debug_train_config, prepare_debug_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = prepare_debug_dataset(
            root / "trainer-datasets", seq_len=32, vocab_size=512, documents_per_part=60
        )
        vocab = TokenDataset.open(dataset, verify=False).vocab
        emb = np.random.default_rng(0).normal(size=(vocab.vocab_size, 8)).astype(np.float32)
        clusters = compute_clusters(emb, 16, source={"kind": "random"}, exclude_ids=[vocab.mask_id], seed=0)
        clusters_dir = root / "tiny-clusters"
        if not (clusters_dir / "manifest.json").is_file():
            clusters.save(clusters_dir)
        latents = root / "tiny-latents"
        if not (latents / "manifest.json").is_file():
            encode_dataset(
                EncodeConfig(shard_rows=128, max_rows=192, encoder=EncoderConfig(batch_size=64)),
                dataset,
                latents,
            )
        models: dict[str, Path] = {}
        for family in TOKEN_FAMILIES:
            run = root / f"tiny-{family}"
            extra = {"clusters": str(clusters_dir)} if family == "hdlm" else {}
            if not (run / "final" / "config.json").is_file():
                overrides = {"steps": 12, "data": {"batch_size": 8}, "model": {"model": {"max_seq_len": 32}}}
                train(debug_train_config(family, dataset, run, overrides=overrides, **extra))
            models[family] = run / "final"
        latent_models = {
            "mmdit": {
                "hidden_size": 32,
                "n_blocks": 2,
                "n_heads": 4,
                "cond_dim": 32,
                "max_seq_len": 32,
                "latent_dim": 384,
            },
            "latent-dit": {"preset": "cpu-nano", "max_seq_len": 32, "latent_dim": 384},
            "cross-dit": {"preset": "cpu-nano", "max_seq_len": 32, "latent_dim": 384},
        }
        for family, model in latent_models.items():
            run = root / f"tiny-{family}"
            if not (run / "final" / "config.json").is_file():
                config = TrainConfig.model_validate({
                    "model": {"family": family, "model": model}, "data": {"dataset": str(latents), "batch_size": 8},
                    "optimizer": {"lr": 1e-3}, "schedule": {"kind": "cosine", "warmup_steps": 2}, "steps": 12,
                    "precision": "fp32", "checkpoint": {"interval": 1000}, "eval": {"interval": 1000, "batches": 1},
                    "log": {"interval": 1, "console": False}, "run_dir": str(run), "seed": 0,
                })  # fmt: skip
                train(config)
            models[family] = run / "final"
        return TinyModels(dataset=dataset, latents=latents, models=models)
    finally:
        torch.set_num_threads(threads)


def publish_folder(
    platform: Platform,
    folder: Path,
    *,
    kind: str,
    metadata: dict[str, Any] | None = None,
    user: str = "alice",
) -> str:
    """Register `folder` as an artifact of `user` the way a job publishes one (every byte stored and
    verified, then the row), from a finished stand-in job."""
    with platform.db.begin() as s:
        owner = s.execute(select(User).where(User.name == user)).scalar_one_or_none()
        if owner is None:
            platform.create_token(user)
            owner = s.execute(select(User).where(User.name == user)).scalar_one()
        now = utcnow()
        job = Job(
            owner_id=owner.id, kind="probe", queue="encode", spec={"kind": "probe"}, status=JobStatus.running.value,
            attempt=1, max_attempts=1, lease_owner="tests", lease_expires_at=now + timedelta(hours=1),
            available_at=now, created_at=now, updated_at=now,
        )  # fmt: skip
        s.add(job)
        s.flush()
        job_id, owner_id = job.id, owner.id
    lease = Lease(job_id=job_id, owner="tests", attempt=1)
    artifact_id = artifacts.publish_directory(
        platform.db, platform.store(), lease=lease, owner_id=owner_id, local_dir=folder, kind=kind, name=kind,
        metadata=metadata,
    )  # fmt: skip
    assert lifecycle.finish_succeeded(platform.db, lease)
    return artifact_id


def model_metadata(folder: Path) -> dict[str, Any]:
    """What the trainer service records on a `model` artifact."""
    import json

    config = json.loads((folder / "config.json").read_text())
    trained = config.get("trained") or {}
    return {
        "family": config["family"],
        "step": trained.get("step"),
        "tokens_seen": trained.get("tokens_seen"),
    }


@contextmanager
def sampler_process(
    platform: Platform, port: int, timeout_s: float = 60.0, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`mmdlm serve-sampler` with the platform's settings (the API was started with MMDLM_SAMPLER_URL);
    `env` overrides settings of this process only."""
    log = platform.workdir / "sampler.log"
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve-sampler", "--host", "127.0.0.1", "--port", str(port)],
            stdout=handle, stderr=subprocess.STDOUT, env=platform.process_env(env or {}), cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sampler exited ({proc.returncode}):\n{tail(log)}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sampler not up after {timeout_s}s:\n{tail(log)}")
            time.sleep(0.2)
        yield proc
    finally:
        stop_process_group(proc, timeout_s=10)


def sampler_env() -> tuple[int, dict[str, str]]:
    port = free_port()
    return port, {
        **TEST_ENV,
        "MMDLM_SAMPLER_URL": f"http://127.0.0.1:{port}",
        "MMDLM_SAMPLER_PORT": str(port),
    }
