"""AdamW over float32 master weights, with weight decay only where it makes sense.

Parameters stay float32 (bf16 lives only inside autocast), so Adam's moments and small updates are not
lost to bf16 rounding (spec §11 bug 24: the original trained pure-bf16 weights with eps 1e-9).
"""

from __future__ import annotations

import torch
from torch import nn

from mmdlm.config.train import OptimizerSection


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """Two groups: decayed matrices, and undecayed norms / biases / embedding tables (unless decay_all)."""
    embedding_params = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    }
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if decay_all or (p.ndim >= 2 and id(p) not in embedding_params):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerSection) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.decay_all)
    # lr is overwritten every step from the schedule; the value here only matters for logging at step 0.
    # fused: one kernel per step, and it honours `optimizer.found_inf` (skip the update without a host sync)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
