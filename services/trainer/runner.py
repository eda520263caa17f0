"""Runner of `train` (queue `train`): one attempt of a training job on this worker.

    stage the dataset (and HDLM clusters) -> restore the newest committed checkpoint from the store
    -> reconcile metrics rows with it -> write the resolved TrainConfig -> torchrun in its own session
    -> while it runs: metrics.jsonl -> metrics + progress, rank logs -> job log, checkpoints -> store
    -> publish run_dir/final (+ job_spec.json) as the job's `model` artifact

Every attempt resumes from the store, not from this machine's disk, so the attempt after a SIGKILLed
worker (sweeper) or a crashed rank (retry with backoff) continues wherever it runs. The lease decides who
runs: a re-delivered message finds the job running and claims nothing (platform), and an attempt that
loses its lease stops its ranks through the cancel callback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import IO

import services
from services.common.context import JobContext
from services.common.errors import JobCancelled, PermanentError
from services.common.store import StoreError
from services.trainer.kinds import TrainSpec, dataset_kind
from services.trainer.metrics import MetricsTail, reconcile
from services.trainer.settings import TrainerSettings, get_trainer_settings
from services.trainer.supervise import AttemptDirs, RankLogTail, Torchrun, failure_message, torchrun_command
from services.trainer.sync import CheckpointSync, Marker, RunStore

logger = logging.getLogger(__name__)

ARTIFACT_NAME = "model"


class TrainingFailed(Exception):
    """A rank (or torchrun) failed; the message is that rank's error. Retried with backoff."""


def run(ctx: JobContext) -> None:
    spec = ctx.spec
    assert isinstance(spec, TrainSpec)
    if spec.launcher == "kubeflow":
        from services.trainer.kubeflow import run_kubeflow

        run_kubeflow(ctx)
        return
    done = ctx.find_artifact(ARTIFACT_NAME)
    if done is not None:  # an earlier attempt published the model, then lost its worker
        ctx.log(f"model already published by an earlier attempt: {done}")
        return
    settings = get_trainer_settings()
    if spec.nproc_per_node > settings.max_procs:
        raise PermanentError(
            f"nproc_per_node: {spec.nproc_per_node} ranks requested, this worker runs at most "
            f"{settings.max_procs} (MMDLM_TRAIN_MAX_PROCS)"
        )
    LocalTraining(ctx, spec, settings).run()


class LocalTraining:
    """One attempt of a single-node job under torchrun on this worker."""

    def __init__(self, ctx: JobContext, spec: TrainSpec, settings: TrainerSettings) -> None:
        self.ctx = ctx
        self.spec = spec
        self.settings = settings
        self.run_dir = ctx.scratch_dir / "run"
        self.dirs = AttemptDirs(ctx.scratch_dir / f"attempt-{ctx.attempt}")
        self.run_store = RunStore(ctx.store, ctx.job_id)
        self._failure: Exception = TrainingFailed("training failed")

    # --- phases -----------------------------------------------------------------------------------------

    def run(self) -> None:
        ctx, spec = self.ctx, self.spec
        shutil.rmtree(self.dirs.root, ignore_errors=True)
        self.dirs.root.mkdir(parents=True)
        ctx.progress(0, spec.steps, "staging inputs")
        dataset_dir = ctx.stage_artifact(spec.dataset, kind=dataset_kind(spec.model.family))
        clusters = spec.clusters_artifact
        clusters_dir = ctx.stage_artifact(clusters, kind="clusters") if clusters is not None else None
        ctx.check_cancelled()

        marker = self.run_store.restore(self.run_dir / "checkpoints")
        resume_step = marker.step if marker is not None else 0
        if marker is not None:
            ctx.log(f"resuming from the stored checkpoint at step {resume_step}")
        snapshot = self.run_store.metrics_lines() if marker is not None else []
        offset = reconcile(ctx, resume_step, snapshot, self.run_dir / "metrics.jsonl")
        shutil.rmtree(self.run_dir / "final", ignore_errors=True)
        config = spec.to_train_config(
            str(dataset_dir), str(self.run_dir), clusters_dir=str(clusters_dir) if clusters_dir else None
        )
        config.to_file(self.dirs.config)
        ctx.check_cancelled()

        returncode = self._train(resume_step, offset)
        if ctx.cancelled.is_set():
            raise JobCancelled(ctx.cancel_reason or "cancelled")
        if returncode != 0:
            raise self._failure
        self._publish()

    def _train(self, resume_step: int, metrics_offset: int) -> int:
        ctx, spec, settings = self.ctx, self.spec, self.settings
        launcher_log: IO[str] = (self.dirs.root / "torchrun.log").open("a", encoding="utf-8")

        def launcher_line(line: str, stream: str) -> None:
            launcher_log.write(line + "\n")
            ctx.log(f"[torchrun] {line}", stream=stream)

        torchrun = Torchrun(
            torchrun_command(self.dirs, spec.nproc_per_node), self._env(), self.dirs, launcher_line
        )
        ranks = RankLogTail(
            self.dirs,
            lambda rank, stream, line: ctx.log(f"[rank{rank}] {line}", stream=stream),
            echo=torchrun.echo,  # a cancel's tracebacks are folded to one line
        )
        metrics = MetricsTail(self.run_dir / "metrics.jsonl", ctx, spec.steps, offset=metrics_offset)

        def before_commit() -> None:
            launcher_log.flush()
            self.ctx.store.put_file(self.run_store.metrics_key, self.run_dir / "metrics.jsonl")
            self._upload_logs()

        def on_commit(marker: Marker) -> None:
            ctx.event(
                "checkpoint",
                {"step": marker.step, "best_step": marker.best_step, "best_val": marker.best_val},
            )

        sync = CheckpointSync(
            self.run_store, self.run_dir / "checkpoints", keep_last=spec.checkpoint.keep_last,
            keep_best=spec.checkpoint.keep_best, interval_s=settings.sync_interval_s,
            before_commit=before_commit, on_commit=on_commit,
        )  # fmt: skip
        ctx.progress(resume_step, spec.steps, "starting torchrun")
        torchrun.start()
        unregister = ctx.on_cancel(lambda: torchrun.stop(settings.stop_grace_s))
        sync.start()
        returncode: int | None = None
        try:
            while (returncode := torchrun.poll()) is None:
                metrics.poll()
                ranks.poll()
                time.sleep(settings.poll_interval_s)
        finally:
            unregister()
            if torchrun.poll() is None:  # this loop itself failed: never leave the ranks behind
                torchrun.stop(settings.stop_grace_s)
                torchrun.wait()
            sync.stop()
            torchrun.wait_readers()
            ranks.poll(final=True)
            metrics.poll()
            launcher_log.close()
            try:  # the last checkpoint (also of a cancelled or failed attempt) and every log line
                sync.sync_now()
                self._upload_logs()
            except (StoreError, OSError) as exc:
                ctx.log(f"could not store the last checkpoint/logs: {exc}", stream="stderr")
        returncode = torchrun.wait()
        if returncode != 0 and not ctx.cancelled.is_set():
            message = failure_message(torchrun, ranks, returncode, settings.error_lines)
            ctx.log(f"training failed: {message}", stream="stderr")
            if "(invalid config)" in message.splitlines()[0]:
                self._failure = PermanentError(message)
            else:
                self._failure = TrainingFailed(message)
        return returncode

    def _publish(self) -> None:
        ctx, spec = self.ctx, self.spec
        final = self.run_dir / "final"
        if not (final / "config.json").is_file():
            raise TrainingFailed(f"training exited cleanly but wrote no model folder at {final}")
        ctx.progress(spec.steps, spec.steps, "publishing the model")
        job_spec = {
            "job_id": ctx.job_id, "kind": ctx.kind, "attempt": ctx.attempt, "max_attempts": ctx.max_attempts,
            "spec": spec.model_dump(mode="json"),
        }  # fmt: skip
        (final / "job_spec.json").write_text(json.dumps(job_spec, indent=2, sort_keys=True) + "\n")
        trained = json.loads((final / "config.json").read_text()).get("trained") or {}
        artifact_id = ctx.publish_directory(
            final, kind="model", name=ARTIFACT_NAME,
            metadata={
                "family": spec.model.family, "step": trained.get("step"), "tokens_seen": trained.get("tokens_seen"),
                "best_val": trained.get("best_val"), "best_step": trained.get("best_step"),
                "dataset": spec.dataset, "clusters": spec.clusters_artifact, "world_size": spec.world_size,
                "precision": spec.precision, "checkpoints": self.run_store.prefix,
            },
        )  # fmt: skip
        ctx.log(f"model published as artifact {artifact_id}")

    # --- helpers ----------------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        threads = self.settings.omp_threads or max(1, (os.cpu_count() or 1) // self.spec.nproc_per_node)
        env["OMP_NUM_THREADS"] = str(threads)
        env["PYTHONUNBUFFERED"] = "1"
        root = str(Path(services.__file__).resolve().parents[1])  # ranks import services.trainer.rank
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        return env

    def _upload_logs(self) -> None:
        prefix = self.run_store.logs_prefix(self.ctx.attempt)
        for (rank, stream), path in self.dirs.rank_logs().items():
            self.ctx.store.put_file(f"{prefix}rank-{rank}.{stream}.log", path)
        launcher = self.dirs.root / "torchrun.log"
        if launcher.is_file():
            self.ctx.store.put_file(f"{prefix}torchrun.log", launcher)
