"""The one training loop for every family (torchtitan-shaped: the loop owns scale, the model stays plain).

Build order: process group -> dataset -> family (model + objective) -> optional torch.compile -> DDP ->
optimizer -> EMA -> loaders -> resume. One optimizer step:

    for each of grad_accum micro-batches (no DDP gradient sync except on the last):
        loss_sum_i = objective(model, batch).loss * num_tokens_i            (bf16 autocast forward)
        loss_sum_i.backward()
    grads *= world_size / (non-pad tokens of the whole step, summed over ranks and micro-batches)
    grad_norm = clip(grads);  found_inf = not finite(grad_norm)
    AdamW step (fused: skipped inside the kernel when found_inf, identically on every rank)
    EMA update (also skipped when found_inf)

Rescaling after backward makes the update the gradient of the token mean over the global batch, whatever
the split into micro-batches and ranks (tested against one big batch), and nothing in a step waits on the
host: `.item()`-style syncs happen only at log, eval and checkpoint steps.

SIGTERM (what torchrun forwards to every rank when it is stopped, and what Kubernetes sends before it
kills a pod) does not kill a rank mid-step: the handler only raises a flag, the ranks agree on it through
a CPU (gloo) all-reduce that is started after one step and waited for after the next (so no step waits
on it), and at that step boundary every rank writes its part of a checkpoint and `train()` returns with
`stopped=True` (no final model). A second SIGTERM kills at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mmdlm.config.train import TrainConfig
from mmdlm.data.loader import BatchLoader
from mmdlm.data.tokens import TokenDataset
from mmdlm.diffusion.fused import compiled_kernels
from mmdlm.eval.likelihood import eval_batches, nll_sums
from mmdlm.families import Built, get_family
from mmdlm.precision import effective_precision
from mmdlm.training import checkpoint as ckpt
from mmdlm.training.distributed import (
    DistInfo,
    StopVote,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
)
from mmdlm.training.ema import EMA
from mmdlm.training.metrics import ConsoleLogger, FanOut, JsonlLogger, MetricLogger, NullLogger
from mmdlm.training.optim import build_optimizer, set_lr
from mmdlm.training.schedule import lr_at

log = logging.getLogger("mmdlm.training")


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, rank, purpose), independent streams for each combination."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens_seen: int
    best_val: float | None
    final_dir: Path | None
    last_metrics: dict[str, Any]
    stopped: bool = False  # ended early by SIGTERM, after a checkpoint at `step`


def _catch_sigterm(vote: StopVote) -> Any:
    """Turn SIGTERM into a stop request while training (main thread only: elsewhere signals cannot be
    caught); returns the function that puts the previous handler back. A second SIGTERM kills."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, _frame: Any) -> None:
        if vote.requested:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        vote.requested = True

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


class Trainer:
    """Train one `TrainConfig` to completion (single process or one rank of a torchrun job)."""

    def __init__(self, config: TrainConfig, logger: MetricLogger | None = None) -> None:
        self.config = config
        self.dist: DistInfo = init_distributed(config.device)
        self.device = self.dist.device
        self.run_dir = Path(config.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        precision = effective_precision(config.precision, self.device)  # bf16 only where it is fast
        if precision != config.precision:
            config = self.config = config.model_copy(update={"precision": precision})  # what runs is recorded
        self.amp_dtype = torch.bfloat16 if precision == "bf16" else None

        # 1. data (a family may read its own dataset kind: the latent families open a `latent-dataset`)
        self.family = get_family(config.model.family)
        opener = getattr(self.family, "open_dataset", None)
        if opener is not None:
            self.dataset = opener(config.model, config.data.dataset, verify=self.dist.is_main)
        else:
            self.dataset = TokenDataset.open(config.data.dataset, verify=self.dist.is_main)
        self.vocab = self.dataset.vocab
        max_len = config.model.model.max_seq_len
        if self.dataset.seq_len > max_len:
            raise ValueError(
                f"dataset rows have seq_len={self.dataset.seq_len} but model.model.max_seq_len={max_len}; "
                f"set model.model.max_seq_len >= {self.dataset.seq_len}"
            )

        # 2. model + objective: same initial weights on every rank (DDP would broadcast them anyway)
        torch.manual_seed(config.seed)
        self.built: Built = self.family.build(config.model, self.vocab)
        bind = getattr(self.family, "bind_dataset", None)  # e.g. latent statistics into the model
        if bind is not None:
            bind(self.built, self.dataset)
        self.raw_model: nn.Module = self.built.model.to(self.device)
        self.objective = self.built.objective
        model: nn.Module = torch.compile(self.raw_model) if config.compile else self.raw_model
        if self.dist.distributed:
            model = DDP(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(self.built.extras.get("find_unused_parameters", False)),
            )
        self.model = model

        # 3. optimizer, EMA, per-rank randomness
        self.optimizer = build_optimizer(self.raw_model, config.optimizer)
        self.ema = EMA(self.raw_model, config.ema.decay) if config.ema.enabled else None
        torch.manual_seed(derived_seed(config.seed, self.dist.rank, 1))  # dropout etc. differ per rank
        np.random.seed(derived_seed(config.seed, self.dist.rank, 2) % 2**32)
        self.generator = torch.Generator(self.device).manual_seed(
            derived_seed(config.seed, self.dist.rank, 3)
        )

        # 4. data loader (deterministic, rank-sharded, resumable)
        self.train_loader = BatchLoader(
            self.dataset.split("train"),
            config.data.batch_size,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            seed=config.seed,
            shuffle=config.data.shuffle,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
        )
        self.state = ckpt.TrainerState(world_size=self.dist.world_size)
        self.resumed_from = self._resume()
        # this rank's tokens since the last sync into state.tokens_seen (a device tensor: no host sync per step)
        self._unsynced_tokens = torch.zeros((), dtype=torch.float64, device=self.device)

        # 5. metrics (rank 0 only)
        if logger is not None:
            self.logger = logger
        elif self.dist.is_main:
            sinks: list[MetricLogger] = [JsonlLogger(self.run_dir / "metrics.jsonl")]
            if config.log.console:
                sinks.append(ConsoleLogger())
            self.logger = FanOut(*sinks)
        else:
            self.logger = NullLogger()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(self._config_json_text())

    # ------------------------------------------------------------------ setup helpers
    def _config_json(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def _config_json_text(self) -> str:
        return json.dumps(self._config_json(), indent=2, sort_keys=True) + "\n"

    def _resume(self) -> Path | None:
        cfg = self.config
        path: Path | None = None
        if self.dist.is_main:
            if cfg.resume == "auto":
                path = ckpt.latest_checkpoint(self.ckpt_root)
            elif cfg.resume is not None:
                path = Path(cfg.resume)
                if not (path / "trainer_state.json").is_file():
                    raise FileNotFoundError(f"resume: {path} is not a complete checkpoint directory")
            elif ckpt.latest_checkpoint(self.ckpt_root) is not None:
                raise FileExistsError(
                    f"run_dir {self.run_dir} already holds checkpoints and resume is none; "
                    "set resume: auto to continue it, or choose a new run_dir"
                )
        path = broadcast_object(str(path) if path else None)
        if path is None:
            return None
        loaded = ckpt.read_checkpoint(Path(path), self.dist.rank, map_location=self.device)
        if loaded.state.world_size != self.dist.world_size:
            raise ValueError(
                f"checkpoint {path} was written by {loaded.state.world_size} ranks, this job has "
                f"{self.dist.world_size}: the data order would not continue; resume with the same world size"
            )
        self.raw_model.load_state_dict(loaded.model_state)
        self.optimizer.load_state_dict(loaded.optimizer_state)
        if self.ema is not None:
            if loaded.ema_state is None:
                raise ValueError(f"ema is enabled but checkpoint {path} has no ema.safetensors")
            self.ema.load_state_dict(loaded.ema_state)
        if loaded.rank_state is None:
            raise FileNotFoundError(f"checkpoint {path} lacks rng/rank-{self.dist.rank}.pt")
        ckpt.set_rng_state(loaded.rank_state["rng"], self.generator)
        self.train_loader.load_state_dict(loaded.rank_state["loader"])
        self.state = loaded.state
        log.info("resumed from %s at step %d", path, self.state.step)
        return Path(path)

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self, micro_batches: list[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Forward/backward over the micro-batches and one (possibly skipped) optimizer update.

        Returns device tensors (no host sync): summed loss and metrics (token-weighted), token count,
        grad norm and the skip flag.
        """
        model, cfg = self.model, self.config
        sums: dict[str, Tensor] = {}
        tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        last = len(micro_batches) - 1
        for i, batch in enumerate(micro_batches):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            sync = nullcontext() if (i == last or not isinstance(model, DDP)) else model.no_sync()
            with sync:
                with self._autocast(), compiled_kernels(cfg.compile):
                    out = self.objective(model, batch, self.generator)
                n = out.num_tokens if out.num_tokens is not None else torch.tensor(batch["input_ids"].numel())
                n = n.to(self.device)
                (out.loss * n).backward()
            tokens += n
            weighted = {"loss": out.loss.detach(), **{k: v.detach() for k, v in out.metrics.items()}}
            for key, value in weighted.items():
                contrib = value.double() * n
                sums[key] = sums[key] + contrib if key in sums else contrib
        # grads hold sum over this rank's tokens, averaged over ranks by DDP: rescale to the global token mean
        global_tokens = all_reduce_sum(tokens.clone())
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        scale = (self.dist.world_size / global_tokens.clamp_min(1)).float()
        # one norm pass and one multiply: the token rescale and the clipping factor are folded together
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) * scale
        factor = scale
        if cfg.grad_clip is not None:
            factor = scale * (cfg.grad_clip / (grad_norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, factor)
        found_inf = (~torch.isfinite(grad_norm)).float()
        self.optimizer.found_inf = found_inf  # read by the fused AdamW kernel: skips the whole update
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.raw_model, skip=found_inf)
        sums["tokens"] = tokens
        sums["skipped"] = found_inf.double()
        sums["grad_norm"] = grad_norm.detach().double()
        return sums

    # ------------------------------------------------------------------ loop
    def _maybe_crash(self, step: int) -> None:
        d = self.config.debug
        if d.crash_at_step is None or step != d.crash_at_step:
            return
        if d.crash_rank is not None and d.crash_rank != self.dist.rank:
            return
        message = f"debug.crash_at_step: injected crash on rank {self.dist.rank} before step {step + 1}"
        log.error(message)
        if d.crash_mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if d.crash_mode == "exit":
            os._exit(3)
        raise RuntimeError(message)

    def train(self) -> TrainResult:
        cfg = self.config
        if self.resumed_from is not None:
            self.logger.log({"event": "resume", "step": self.state.step, "from": str(self.resumed_from)})
        acc: dict[str, Tensor] = {}
        last_metrics: dict[str, Any] = {}
        self._loop_start = time.perf_counter()
        train_time = 0.0
        steps_in_window = 0
        stopped = False
        vote = StopVote()
        restore = _catch_sigterm(vote)
        try:
            while self.state.step < cfg.steps:
                step = self.state.step
                self._maybe_crash(step)
                t0 = time.perf_counter()
                lr = lr_at(step, cfg.optimizer.lr, cfg.steps, cfg.schedule)
                set_lr(self.optimizer, lr)
                micro = [next(self.train_loader) for _ in range(cfg.data.grad_accum)]
                if hasattr(self.objective, "set_step"):  # step-keyed choices, identical on every rank
                    self.objective.set_step(step)
                sums = self._train_step(micro)
                self._unsynced_tokens += sums["tokens"]
                for key, value in sums.items():
                    if key == "grad_norm":
                        acc[key] = value  # the last step's norm
                    else:
                        acc[key] = acc[key] + value if key in acc else value
                self.state.step = step + 1
                steps_in_window += 1
                done = self.state.step == cfg.steps
                if self.state.step % cfg.log.interval == 0 or done:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    train_time += time.perf_counter() - t0
                    last_metrics = self._log_train(acc, lr, train_time, steps_in_window)
                    acc, train_time, steps_in_window = {}, 0.0, 0
                    if last_metrics.pop("time_up", False) and not done:
                        log.info("time_limit_s reached at step %d: finishing the run", self.state.step)
                        self.logger.log({"event": "time_limit", "step": self.state.step})
                        done = True
                else:
                    train_time += time.perf_counter() - t0
                if self.state.step % cfg.eval.interval == 0 or done:
                    improved = self.validate()
                    if improved and cfg.checkpoint.keep_best:
                        self.save_checkpoint()
                if (self.state.step % cfg.checkpoint.interval == 0 or done) and not self._saved_at_step():
                    self.save_checkpoint()
                if done:
                    break
                if vote.agreed():  # SIGTERM on some rank: every rank stops at this same step
                    stopped = True
                    log.warning("SIGTERM: checkpointing at step %d and stopping", self.state.step)
                    if not self._saved_at_step():
                        self.save_checkpoint()
                    self.logger.log({"event": "sigterm", "step": self.state.step, "time": time.time()})
                    break
            vote.close()
            final_dir = self.save_final() if cfg.save_final and not stopped else None
        finally:
            restore()
            self.logger.close()
        return TrainResult(
            run_dir=self.run_dir,
            step=self.state.step,
            tokens_seen=self.state.tokens_seen,
            best_val=self.state.best_val,
            final_dir=final_dir,
            last_metrics=last_metrics,
            stopped=stopped,
        )

    def _log_train(self, acc: dict[str, Tensor], lr: float, train_time: float, steps: int) -> dict[str, Any]:
        keys = sorted(k for k in acc if k != "grad_norm")
        limit = self.config.time_limit_s
        time_up = self.dist.is_main and limit is not None and time.perf_counter() - self._loop_start > limit
        # rank 0's clock decides for everyone, riding on the metrics all-reduce (no extra collective)
        packed = torch.stack(
            [*(acc[k].double() for k in keys), torch.tensor(float(time_up), device=self.device)]
        )
        packed = all_reduce_sum(packed).tolist()
        values = dict(zip(keys, packed[:-1], strict=True))
        tokens = values.pop("tokens")
        skipped = values.pop("skipped") / self.dist.world_size  # identical on every rank
        self._sync_tokens()
        self.state.skipped_steps += round(skipped)
        record: dict[str, Any] = {"step": self.state.step}
        record.update({k: v / max(tokens, 1.0) for k, v in values.items()})
        record.update(
            lr=lr,
            grad_norm=float(acc["grad_norm"].item()),
            tokens_per_s=tokens / max(train_time, 1e-9),
            steps_per_s=steps / max(train_time, 1e-9),
            tokens_seen=self.state.tokens_seen,
            skipped_steps=self.state.skipped_steps,
            time=time.time(),
        )
        self.logger.log(record)
        return {**record, "time_up": packed[-1] > 0}

    def _sync_tokens(self) -> None:
        """Collective: fold every rank's unsynced token count into state.tokens_seen."""
        self.state.tokens_seen += round(all_reduce_sum(self._unsynced_tokens.clone()).item())
        self._unsynced_tokens.zero_()

    # ------------------------------------------------------------------ validation
    def validate(self) -> bool:
        """Validation NLL (bound) over the configured batches; returns True if it is the best so far."""
        cfg = self.config
        split = self.dataset.split("validation")
        batch_size = cfg.eval.batch_size or cfg.data.batch_size
        # the same noise draws at every validation (common random numbers): curves are comparable
        generator = torch.Generator(self.device).manual_seed(derived_seed(cfg.seed, self.dist.rank, 4))
        t0 = time.perf_counter()
        with self.ema.swapped_in(self.raw_model) if self.ema is not None else nullcontext():
            sums = nll_sums(
                self.objective,
                self.raw_model,
                eval_batches(split, batch_size, self.dist.rank, self.dist.world_size, cfg.eval.batches),
                num_samples=cfg.eval.num_time_samples,
                generator=generator,
                autocast_dtype=self.amp_dtype,
                device=self.device,
            )
        nll = sums.nll / max(sums.tokens, 1)
        improved = bool(np.isfinite(nll)) and (self.state.best_val is None or nll < self.state.best_val)
        if improved:
            self.state.best_val, self.state.best_step = nll, self.state.step
        self.logger.log(
            {
                "step": self.state.step,
                "split": "validation",
                "nll": nll,
                "bits_per_token": nll / float(np.log(2)),
                "ppl": float(np.exp(min(nll, 700.0))),
                "tokens": sums.tokens,
                "sequences": sums.sequences,
                "ema": self.ema is not None,
                "best": improved,
                "eval_s": time.perf_counter() - t0,
                "time": time.time(),
            }
        )
        return improved

    # ------------------------------------------------------------------ saving
    def _saved_at_step(self) -> bool:
        # Collective: rank 0's answer everywhere. On a multi-node job each node has its own run dir, and
        # a rank whose disk said "not saved" would enter the collective save_checkpoint alone (a hang).
        return bool(broadcast_object((self.ckpt_root / ckpt.step_dir_name(self.state.step)).is_dir()))

    def save_checkpoint(self) -> Path | None:
        """Collective: every rank contributes its RNG and loader state; rank 0 writes."""
        self._sync_tokens()
        rank_state = {"rng": ckpt.rng_state(self.generator), "loader": self.train_loader.state_dict()}
        rank_states = gather_objects(rank_state)
        path = None
        if self.dist.is_main:
            assert rank_states is not None
            self.state.data = self.train_loader.state_dict()
            path = ckpt.write_checkpoint(
                self.ckpt_root,
                state=self.state,
                model_state=self.raw_model.state_dict(),
                optimizer_state=self.optimizer.state_dict(),
                ema_state=self.ema.state_dict() if self.ema is not None else None,
                rank_states=rank_states,
                config_json=self._config_json(),
            )
            keep = self.state.best_step if self.config.checkpoint.keep_best else None
            ckpt.prune(self.ckpt_root, self.config.checkpoint.keep_last, keep)
        barrier()
        return path

    def save_final(self) -> Path | None:
        """run_dir/final: a `model` folder (EMA weights as model.safetensors when EMA is on)."""
        from mmdlm.pipeline import save_model_folder

        out = None
        if self.dist.is_main:
            raw = self.raw_model.state_dict()
            weights = raw
            if self.ema is not None:
                weights = {**raw, **self.ema.state_dict()}
            out = save_model_folder(
                self.run_dir / "final",
                spec=self.config.model,
                vocab=self.vocab,
                state_dict=weights,
                raw_state_dict=raw if self.ema is not None else None,
                tokenizer_dir=self.dataset.root / self.dataset.manifest.tokenizer.dir,
                extras=self.built.extras,
                train=self._config_json(),
                trained={
                    "step": self.state.step,
                    "tokens_seen": self.state.tokens_seen,
                    "best_val": self.state.best_val,
                    "best_step": self.state.best_step,
                    "dataset": str(self.dataset.root),
                    "dataset_source": self.dataset.manifest.source,
                    "seq_len": self.dataset.seq_len,
                },
            )
        barrier()
        return out
