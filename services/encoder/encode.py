"""Runners of `encode` (the parent) and `encode-shard` (a task of it).

Shards of one job live in the object store under `work/encode/<parent job>/` with the library's layout
(`train/shard-00000.{tokens.npy,latents.npy,texts.jsonl}`, then its record `train/shard-00000.json`,
uploaded last, then `encoder.json`). A stored record means a finished shard: a task that runs again
after its worker died downloads those shards instead of encoding them, so a shard is encoded once unless
its worker died while encoding it.

Parent:  stage the source -> plan shards -> create the `encode-shard` jobs (ids derived from the parent's
         id and the shard range, so a retried parent finds the same ones) -> work through them: claim one
         of them inline when it waits (so one worker alone finishes the job), otherwise watch the others
         and report progress -> download every shard, let `encode_dataset` verify the records and write the
         manifest -> `LatentDataset.open(verify=True)` -> publish the `latent-dataset` once -> delete the
         work prefix.
Task:    stage the source -> restore its stored shards -> `encode_dataset(..., shard_range=...)`, uploading
         each shard as soon as its record is written.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select

from mmdlm.config.data import FolderSource, PrepareDataConfig
from mmdlm.config.latent import EncodeConfig, EncoderConfig
from mmdlm.confine import PathRoots
from mmdlm.data.latent import (
    LATENT_FORMAT,
    LatentDataset,
    ShardPlan,
    encode_dataset,
    plan_shards,
    select_rows,
)
from services.common import lifecycle
from services.common.context import JobContext
from services.common.errors import JobCancelled, PermanentError
from services.common.models import Job, JobStatus
from services.common.queue import create_celery, publish
from services.common.runner import run_claimed
from services.encoder.encode_kinds import EncodeShardSpec, EncodeSpec

ARTIFACT_NAME = "latents"
SOURCE_NAME = "source"
POLL_S = 0.25
PROGRESS_EVERY_S = 1.0
_CHILD_NS = uuid.UUID("5d1f6a3e-9a47-4a0e-8f0b-6b1e3c2a7d10")
_RECORD = re.compile(r"(^|/)shard-\d+\.json$")


def work_prefix(parent_id: str) -> str:
    return f"work/encode/{parent_id}/"


def shard_files(shard: ShardPlan) -> tuple[list[str], str]:
    """The shard's data files and its record (uploaded last), relative to the dataset folder."""
    return [
        f"{shard.stem}.tokens.npy",
        f"{shard.stem}.latents.npy",
        f"{shard.stem}.texts.jsonl",
    ], f"{shard.stem}.json"


def plan_for(config: EncodeConfig, source_dir: Path) -> list[ShardPlan]:
    """The job's shards, exactly as `encode_dataset` plans them."""
    from mmdlm.data.tokens import TokenDataset

    source = TokenDataset.open(source_dir, verify=False)
    rows = {
        name: len(select_rows(len(source.split(name)), config.max_rows)) for name in ("train", "validation")
    }
    return plan_shards(rows, config.shard_rows)


@lru_cache(maxsize=2)
def _encoder(config_json: str) -> Any:
    """One loaded encoder per worker process and config: tasks of a job reuse it."""
    from mmdlm.encoders import load_encoder

    return load_encoder(EncoderConfig.model_validate_json(config_json))


# --- parent ------------------------------------------------------------------------------------------------------


def run(ctx: JobContext) -> None:
    spec = ctx.spec
    assert isinstance(spec, EncodeSpec)
    prefix = work_prefix(ctx.job_id)
    if ctx.find_artifact(ARTIFACT_NAME) is not None:  # published, then the worker died before cleaning up
        ctx.log("latent dataset already published by an earlier attempt")
        ctx.store.delete_prefix(prefix)
        return
    source_id = spec.dataset or _prepare_texts(ctx, spec)
    source_dir = ctx.stage_artifact(source_id, kind="dataset")
    config = spec.encode_config()
    plan = plan_for(config, source_dir)
    if not plan:
        raise PermanentError("the source has no rows to encode")
    step = spec.task_shards()
    tasks = [(a, min(a + step, len(plan))) for a in range(0, len(plan), step)]
    children = _create_children(ctx, source_id, config, tasks, len(plan))
    ctx.on_cancel(lambda: [lifecycle.request_cancel(ctx.db, child) for child in children])
    ctx.log(f"{len(plan)} shards of up to {config.shard_rows} rows in {len(tasks)} tasks")
    _work_through(ctx, children, plan, prefix)
    ctx.progress(len(plan), len(plan), "assembling")
    out = _assemble(ctx, config, source_dir, prefix)
    dataset = LatentDataset.open(out, verify=True)
    manifest = dataset.manifest
    ctx.publish_directory(
        out, kind="latent-dataset", name=ARTIFACT_NAME,
        metadata={
            "format": LATENT_FORMAT, "source": source_id, "dim": manifest.dim, "role": manifest.role,
            "seq_len": manifest.seq_len,
            "encoder": {k: manifest.encoder.get(k) for k in ("name", "model", "revision", "dim", "precision")},
            "splits": {name: {"rows": s.rows, "shards": len(s.shards)} for name, s in manifest.splits.items()},
            "tasks": len(tasks),
        },
    )  # fmt: skip
    ctx.store.delete_prefix(prefix)
    shutil.rmtree(out, ignore_errors=True)


def _prepare_texts(ctx: JobContext, spec: EncodeSpec) -> str:
    """Texts sent with the job -> a `dataset` artifact (`source`), prepared as `mmdlm encode` prepares a
    text folder (packing `pad`: every row starts a document)."""
    existing = ctx.find_artifact(SOURCE_NAME)
    if existing is not None:
        return existing
    from mmdlm.data.prepare import prepare_dataset

    assert spec.texts is not None
    folder = ctx.scratch_dir / "texts"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "texts.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in spec.texts), encoding="utf-8"
    )
    out = ctx.scratch_dir / "source"
    shutil.rmtree(out, ignore_errors=True)
    ctx.progress(0, None, "tokenizing the texts")
    manifest = prepare_dataset(
        PrepareDataConfig(
            source=FolderSource(path=str(folder)), tokenizer=spec.tokenizer, seq_len=spec.seq_len, packing="pad",
            validation_fraction=spec.validation_fraction, max_documents=spec.max_documents, seed=spec.seed,
        ),
        out,
        # the user's tokenizer folder must lie in their roots; the texts folder is this job's own
        roots=PathRoots((*ctx.data_roots.roots, folder.resolve())),
    )  # fmt: skip
    artifact = ctx.publish_directory(
        out, kind="dataset", name=SOURCE_NAME,
        metadata={"format": manifest.format, "seq_len": manifest.seq_len, "packing": manifest.packing,
                  "source": {"type": "texts", "count": len(spec.texts)}},
    )  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    return artifact


def _create_children(
    ctx: JobContext, source_id: str, config: EncodeConfig, tasks: list[tuple[int, int]], total: int
) -> list[str]:
    ids = [uuid.uuid5(_CHILD_NS, f"{ctx.job_id}:{a}:{b}").hex for a, b in tasks]
    created = []
    with ctx.db.begin() as s:
        priority = s.execute(select(Job.priority).where(Job.id == ctx.job_id)).scalar_one()
        existing = set(s.execute(select(Job.id).where(Job.id.in_(ids))).scalars())
        for child, (a, b) in zip(ids, tasks, strict=True):
            if child in existing:
                continue
            spec = EncodeShardSpec(parent=ctx.job_id, source=source_id, shard_start=a, shard_stop=b,
                                   shards_total=total, config=config)  # fmt: skip
            lifecycle.create_job(
                s, owner_id=ctx.owner_id, kind="encode-shard", queue="encode", spec=spec.model_dump(mode="json"),
                priority=priority, max_attempts=ctx.max_attempts, job_id=child,
            )  # fmt: skip
            created.append(child)
    if created:
        app = create_celery(ctx.settings)
        try:
            for child in created:
                try:
                    publish(app, child, "encode")
                except Exception as exc:  # the sweeper publishes it later; the parent may claim it anyway
                    ctx.log(f"could not publish the wake-up of {child}: {exc}", stream="stderr")
                    lifecycle.clear_enqueued(ctx.db, child)
        finally:
            app.close()
    return ids


def _work_through(ctx: JobContext, children: list[str], plan: list[ShardPlan], prefix: str) -> None:
    """Run waiting tasks inline; wait for the ones other workers run; fail if one fails."""
    rows = {shard.stem: shard.row_stop - shard.row_start for shard in plan}
    total_rows = sum(rows.values())
    reported = 0.0
    while True:
        ctx.check_cancelled()
        claim = lifecycle.claim_next(
            ctx.db,
            "encode",
            f"{ctx.lease.owner}/{uuid.uuid4().hex[:6]}",
            ctx.settings.lease_ttl_s,
            only=children,
        )
        if claim is not None:
            status = run_claimed(claim, settings=ctx.settings, db=ctx.db, store=ctx.store)
            ctx.log(f"task {claim.id} (attempt {claim.attempt}) ran here: {status}")
            reported = 0.0
        with ctx.db.session() as s:
            states = s.execute(select(Job.id, Job.status, Job.error).where(Job.id.in_(children))).all()
        broken = [row for row in states if row.status in (JobStatus.failed.value, JobStatus.cancelled.value)]
        if broken and not ctx.cancelled.is_set():
            row = broken[0]
            raise PermanentError(f"shard task {row.id} {row.status}: {row.error}")
        if time.monotonic() - reported > PROGRESS_EVERY_S:
            stored = [
                info.key[len(prefix) : -len(".json")]
                for info in ctx.store.list(prefix)
                if _RECORD.search(info.key)
            ]
            sentences = sum(rows.get(stem, 0) for stem in stored)
            ctx.progress(len(stored), len(plan), f"{sentences}/{total_rows} sentences encoded")
            reported = time.monotonic()
        if all(row.status == JobStatus.succeeded.value for row in states) and len(states) == len(children):
            return
        if claim is None:
            ctx.cancelled.wait(POLL_S)


def _assemble(ctx: JobContext, config: EncodeConfig, source_dir: Path, prefix: str) -> Path:
    out = ctx.scratch_dir / ARTIFACT_NAME
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for info in ctx.store.list(prefix):
        ctx.store.get_file(info.key, out / info.key[len(prefix) :])
    # every record is verified against its files (sha256) and the job fingerprint; the manifest is written
    # only when all shards are there
    result = encode_dataset(config, source_dir, out)
    if result.shards_encoded:
        ctx.log(
            f"{len(result.shards_encoded)} shards were not in the store and were encoded now", stream="stderr"
        )
    if result.manifest is None:
        raise RuntimeError("the latent dataset is incomplete after assembling its shards")
    return out


# --- task --------------------------------------------------------------------------------------------------------


def run_shard(ctx: JobContext) -> None:
    spec = ctx.spec
    assert isinstance(spec, EncodeShardSpec)
    source_dir = ctx.stage_artifact(spec.source, kind="dataset")
    config = spec.config
    plan = plan_for(config, source_dir)
    if len(plan) != spec.shards_total:
        raise PermanentError(
            f"the source plans {len(plan)} shards, the encode job planned {spec.shards_total}"
        )
    mine = plan[spec.shard_start : spec.shard_stop]
    prefix = work_prefix(spec.parent)
    out = ctx.scratch_dir / "latents"
    out.mkdir(parents=True, exist_ok=True)
    stored = {info.key for info in ctx.store.list(prefix)}
    done: set[str] = set()
    for shard in mine:
        files, record = shard_files(shard)
        if prefix + record in stored:
            for name in (*files, record):
                ctx.store.get_file(prefix + name, out / name)
            done.add(shard.stem)
    if done:
        ctx.log(f"restored {len(done)} finished shards from the store: {', '.join(sorted(done))}")
    restored_rows = sum(s.row_stop - s.row_start for s in mine if s.stem in done)
    total_rows = sum(s.row_stop - s.row_start for s in mine)
    encoder_json = prefix + "encoder.json" in stored

    def upload_finished() -> None:
        nonlocal encoder_json
        for shard in mine:
            files, record = shard_files(shard)
            if shard.stem in done or not (out / record).is_file():
                continue
            for name in (*files, record):  # the record last: it says the shard is complete
                ctx.store.put_file(prefix + name, out / name)
            done.add(shard.stem)
            ctx.log(f"shard {shard.stem} stored")
        if not encoder_json and (out / "encoder.json").is_file():
            ctx.store.put_file(prefix + "encoder.json", out / "encoder.json")
            encoder_json = True

    def progress(rows_done: int, _total: int, phase: str) -> None:
        upload_finished()
        ctx.progress(restored_rows + rows_done, total_rows, phase)
        if ctx.cancelled.is_set():
            raise JobCancelled(ctx.cancel_reason or "cancelled")

    encoder = _encoder(config.encoder.model_dump_json()) if len(done) < len(mine) else None
    encode_dataset(
        config, source_dir, out, progress, shard_range=(spec.shard_start, spec.shard_stop), encoder=encoder
    )
    upload_finished()
    ctx.progress(total_rows, total_rows, "stored")
