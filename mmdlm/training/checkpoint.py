"""Training checkpoints: written atomically, pruned to the last M plus the best, found again on resume.

Layout (docs/ARCHITECTURE.md, "Training run directory"):
    run_dir/checkpoints/step-00000100/
        model.safetensors     raw float32 weights (the unwrapped model's state_dict)
        ema.safetensors       EMA shadow weights (only when EMA is on)
        optimizer.pt          optimizer.state_dict() (AdamW moments and step counts)
        trainer_state.json    step, tokens_seen, data position, best_val, best_step, world_size, ...
        rng/rank-<r>.pt       every rank's RNG states (torch CPU/CUDA, numpy, python, the objective's
                              generator) and its data-loader state
        config.json           the resolved TrainConfig
Rank 0 writes everything into `.tmp-step-...` and renames it: a directory named `step-*` is always
complete, so a crash mid-write leaves only a `.tmp-*` that the next save removes. The other ranks' RNG
and loader states travel to rank 0 through `gather_object`, so no shared filesystem is needed to save.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainerState:
    step: int = 0
    tokens_seen: int = 0
    best_val: float | None = None
    best_step: int | None = None
    skipped_steps: int = 0
    world_size: int = 1
    data: dict[str, Any] = field(default_factory=dict)
    """Rank 0's loader state (human-readable copy; each rank restores its own from rng/rank-<r>.pt)."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainerState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """All RNG streams of this process, so that a resumed rank draws exactly what it would have drawn."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (step, path), oldest first; `.tmp-*` leftovers are ignored."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1][1] if found else None


def _cpu_contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def write_checkpoint(
    ckpt_root: Path,
    *,
    state: TrainerState,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None,
    rank_states: list[dict[str, Any]],
    config_json: dict[str, Any],
) -> Path:
    """Write one complete checkpoint atomically (rank 0 only) and return its final path."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_dir_name(state.step)
    tmp = ckpt_root / f".tmp-{final.name}"
    for leftover in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    (tmp / "rng").mkdir(parents=True)
    save_file(_cpu_contiguous(model_state), str(tmp / "model.safetensors"))
    if ema_state is not None:
        save_file(_cpu_contiguous(ema_state), str(tmp / "ema.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    for r, rank_state in enumerate(rank_states):
        torch.save(rank_state, tmp / "rng" / f"rank-{r}.pt")
    (tmp / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    # trainer_state.json last: list_checkpoints treats a directory without it as incomplete.
    (tmp / "trainer_state.json").write_text(json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n")
    _fsync_tree(tmp)
    if final.exists():  # re-saving the same step (e.g. best and periodic at once): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def prune(ckpt_root: Path, keep_last: int, keep_step: int | None) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints, never the one at `keep_step` (the best)."""
    found = list_checkpoints(ckpt_root)
    removed = []
    for step, path in found[: max(0, len(found) - keep_last)]:
        if step != keep_step:
            shutil.rmtree(path)
            removed.append(path)
    return removed


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainerState
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    ema_state: dict[str, torch.Tensor] | None
    rank_state: dict[str, Any] | None


def read_checkpoint(path: Path, rank: int, map_location: torch.device | str = "cpu") -> LoadedCheckpoint:
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.json)")
    state = TrainerState.from_json(json.loads((path / "trainer_state.json").read_text()))
    ema_path = path / "ema.safetensors"
    rank_path = path / "rng" / f"rank-{rank}.pt"
    return LoadedCheckpoint(
        path=path,
        state=state,
        model_state=load_file(str(path / "model.safetensors"), device=str(map_location)),
        optimizer_state=torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True),
        ema_state=load_file(str(ema_path), device=str(map_location)) if ema_path.is_file() else None,
        rank_state=torch.load(rank_path, weights_only=False) if rank_path.is_file() else None,
    )
