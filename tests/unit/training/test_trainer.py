"""The training loop: gradient accumulation, NaN-safe steps, checkpoints and exact resume (single process).

Runs without torchrun, which is itself the check for spec §11 bug 3 (the original needed LOCAL_RANK and
called dist.barrier() unconditionally).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmdlm import precision as precision_module
from mmdlm.families import LossOutput
from mmdlm.training import checkpoint as ckpt
from mmdlm.training.debug import debug_train_config
from mmdlm.training.distributed import init_distributed
from mmdlm.training.metrics import read_metrics
from mmdlm.training.trainer import Trainer


def test_single_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed) == (0, 1, False)


def test_bf16_keeps_float32_master_weights(
    debug_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spec bug 24: bf16 lives only inside autocast; weights and Adam moments stay float32, so an update far
    below bf16 resolution (lr 1e-6 on O(0.02) weights) still changes them. (bf16 forced: on a CPU without
    native bf16 the trainer would run fp32, see the next test.)"""
    monkeypatch.setattr(precision_module, "has_fast_bf16", lambda device_type: True)
    trainer = _trainer(debug_dataset, tmp_path / "run", precision="bf16", optimizer={"lr": 1e-6},
                       schedule={"warmup_steps": 0})  # fmt: skip
    before = [p.detach().clone() for p in trainer.raw_model.parameters()]
    trainer._train_step([next(trainer.train_loader)])
    params = list(trainer.raw_model.parameters())
    assert all(p.dtype == torch.float32 for p in params)
    assert all(trainer.optimizer.state[p]["exp_avg_sq"].dtype == torch.float32 for p in params)
    w0, w1 = before[1], params[1].detach()
    changed = (w0 != w1) & (w0.bfloat16().float() == w1.bfloat16().float())
    assert bool(changed.any())  # moved, yet invisible at bf16 resolution


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_runs_in_fp32_where_it_is_slow(
    fast: bool,
    debug_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """bf16 on a device without native bf16 (an AVX2-only CPU: tens of times slower than fp32) trains in fp32,
    says so, and records fp32 as what ran; with native bf16 it stays bf16."""
    monkeypatch.setattr(precision_module, "has_fast_bf16", lambda device_type: fast)
    precision_module._warn_once.cache_clear()
    with caplog.at_level("WARNING", logger="mmdlm.precision"):
        trainer = _trainer(debug_dataset, tmp_path / "run", precision="bf16")
    ran = "bf16" if fast else "fp32"
    assert trainer.config.precision == ran and (trainer.amp_dtype is torch.bfloat16) == fast
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == ran
    assert ("no native bf16" in caplog.text) != fast


def _trainer(dataset: Path, run_dir: Path, family: str = "ar", **overrides: object) -> Trainer:
    return Trainer(debug_train_config(family, dataset, run_dir, overrides=dict(overrides)))


def test_gradient_accumulation_equals_one_big_batch(debug_dataset: Path, tmp_path: Path) -> None:
    common = {"steps": 1, "grad_clip": None, "save_final": False, "schedule": {"warmup_steps": 0}}
    big = _trainer(debug_dataset, tmp_path / "big", data={"batch_size": 8, "shuffle": False}, **common)
    big.train()
    acc = _trainer(
        debug_dataset, tmp_path / "acc", data={"batch_size": 4, "grad_accum": 2, "shuffle": False}, **common
    )
    acc.train()
    # Adam's first moment after one step is (1 - beta1) * grad: compare the gradients themselves
    for p_big, p_acc in zip(big.raw_model.parameters(), acc.raw_model.parameters(), strict=True):
        m_big = big.optimizer.state[p_big]["exp_avg"]
        m_acc = acc.optimizer.state[p_acc]["exp_avg"]
        torch.testing.assert_close(m_acc, m_big, rtol=1e-5, atol=1e-9)
    assert read_metrics(tmp_path / "big" / "metrics.jsonl")[0]["loss"] == pytest.approx(
        read_metrics(tmp_path / "acc" / "metrics.jsonl")[0]["loss"], rel=1e-6
    )


class _NaNOnce:
    """Wraps an objective and poisons the loss of the next call when armed."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.armed = False

    def __call__(self, model, batch, generator=None) -> LossOutput:  # type: ignore[no-untyped-def]
        out = self.inner(model, batch, generator)  # type: ignore[operator]
        if self.armed:
            self.armed = False
            out = LossOutput(loss=out.loss * float("nan"), metrics=out.metrics, num_tokens=out.num_tokens)
        return out


def test_nan_step_skips_the_whole_update(debug_dataset: Path, tmp_path: Path) -> None:
    trainer = _trainer(debug_dataset, tmp_path / "run", ema={"enabled": True, "decay": 0.5})
    wrapped = _NaNOnce(trainer.objective)
    trainer.objective = wrapped  # type: ignore[assignment]
    trainer._train_step([next(trainer.train_loader)])  # one real step so Adam has state

    def snapshot() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        params = [p.detach().clone() for p in trainer.raw_model.parameters()]
        moments = [trainer.optimizer.state[p]["exp_avg"].clone() for p in trainer.raw_model.parameters()]
        assert trainer.ema is not None
        return params, moments, [s.clone() for s in trainer.ema.shadow]

    before = snapshot()
    steps_before = [trainer.optimizer.state[p]["step"].item() for p in trainer.raw_model.parameters()]
    wrapped.armed = True
    out = trainer._train_step([next(trainer.train_loader)])
    assert out["skipped"].item() == 1.0 and not torch.isfinite(out["grad_norm"])
    for old, new in zip(before, snapshot(), strict=True):
        for a, b in zip(old, new, strict=True):
            assert torch.equal(a, b)  # weights, Adam moments and EMA untouched: no decay either
    assert [trainer.optimizer.state[p]["step"].item() for p in trainer.raw_model.parameters()] == steps_before
    out = trainer._train_step([next(trainer.train_loader)])  # and training goes on normally
    assert out["skipped"].item() == 0.0
    assert not torch.equal(before[0][0], next(trainer.raw_model.parameters()))


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "checkpoints"
    kwargs = {
        "model_state": {"w": torch.ones(2)},
        "optimizer_state": {"state": {}, "param_groups": []},
        "ema_state": None,
        "rank_states": [{"rng": ckpt.rng_state(None), "loader": {}}],
        "config_json": {},
    }
    ckpt.write_checkpoint(root, state=ckpt.TrainerState(step=1), **kwargs)

    def broken_save(*args: object, **kw: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.write_checkpoint(root, state=ckpt.TrainerState(step=2), **kwargs)
    monkeypatch.undo()
    assert (root / ".tmp-step-00000002").is_dir()  # the interrupted write stays invisible ...
    assert ckpt.latest_checkpoint(root) == root / "step-00000001"  # ... to resume
    ckpt.write_checkpoint(root, state=ckpt.TrainerState(step=3), **kwargs)
    assert not list(root.glob(".tmp-*"))  # and the next save clears the leftover
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [1, 3]


def test_prune_keeps_last_and_best(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30, 40, 50):
        (root / ckpt.step_dir_name(step)).mkdir(parents=True)
        (root / ckpt.step_dir_name(step) / "trainer_state.json").write_text("{}")
    ckpt.prune(root, keep_last=2, keep_step=20)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [20, 40, 50]


def test_resume_after_crash_reproduces_uninterrupted_run(debug_dataset: Path, tmp_path: Path) -> None:
    """Spec bug 4 (resume crashed and never restored Adam): MDLM (random times and masks) with EMA, N steps,
    crash, resume, M steps == N + M steps in one go, bitwise (weights, optimizer, RNG, data position)."""
    overrides = {
        "steps": 8,
        "ema": {"enabled": True, "decay": 0.9},
        "checkpoint": {"interval": 4, "keep_last": 1, "keep_best": False},
        "eval": {"interval": 4, "batches": 2},
        "data": {"batch_size": 8},
    }
    _trainer(debug_dataset, tmp_path / "straight", "mdlm", **overrides).train()

    crashing = _trainer(debug_dataset, tmp_path / "crashed", "mdlm", debug={"crash_at_step": 6}, **overrides)
    with pytest.raises(RuntimeError, match="injected crash"):
        crashing.train()
    crashing.logger.close()
    assert ckpt.latest_checkpoint(tmp_path / "crashed" / "checkpoints").name == "step-00000004"
    resumed = _trainer(debug_dataset, tmp_path / "crashed", "mdlm", **overrides)
    assert resumed.resumed_from is not None and resumed.state.step == 4
    resumed.train()

    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    again = read_metrics(tmp_path / "crashed" / "metrics.jsonl")
    assert [(r["step"], r.get("split")) for r in straight] == [(r["step"], r.get("split")) for r in again]
    for a, b in zip(straight, again, strict=True):
        key = "nll" if a.get("split") == "validation" else "loss"
        assert a[key] == b[key], f"step {a['step']}: {a[key]} != {b[key]}"  # bitwise, not approximately
    final_a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    final_b = load_file(str(tmp_path / "crashed" / "final" / "model.safetensors"))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    state = json.loads(
        (tmp_path / "crashed" / "checkpoints" / "step-00000008" / "trainer_state.json").read_text()
    )
    last_train = [r for r in straight if "split" not in r][-1]
    assert state["step"] == 8 and state["tokens_seen"] == last_train["tokens_seen"] == 8 * 8 * 64


def test_resume_none_refuses_to_overwrite(debug_dataset: Path, tmp_path: Path) -> None:
    no_warmup = {"warmup_steps": 0}
    _trainer(
        debug_dataset,
        tmp_path / "run",
        steps=2,
        schedule=no_warmup,
        checkpoint={"interval": 1},
        save_final=False,
    ).train()
    with pytest.raises(FileExistsError, match="resume"):
        _trainer(debug_dataset, tmp_path / "run", steps=2, schedule=no_warmup, resume=None)
