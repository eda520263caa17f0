"""Exponential moving average of the weights, kept as a float32 shadow copy on the model's device."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class EMA:
    """ema <- decay * ema + (1 - decay) * weights, after every optimizer step (floating tensors only)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow: list[Tensor] = [params[n].detach().clone().float() for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module, skip: Tensor | None = None) -> None:
        """One EMA step; `skip` (a 0-dim float tensor, 1 = skipped optimizer step) leaves the shadow as is
        without a host sync."""
        params = dict(model.named_parameters())
        current = [params[n].detach().float() for n in self.names]
        if skip is None:
            torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)
            return
        delta = torch._foreach_sub(current, self.shadow)
        torch._foreach_mul_(delta, (1.0 - self.decay) * (1.0 - skip))
        torch._foreach_add_(self.shadow, delta)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.shadow, strict=True))

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.names) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        for i, n in enumerate(self.names):
            self.shadow[i].copy_(state[n])

    @contextmanager
    @torch.no_grad()
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Run the block with the EMA weights in `model`, then restore the raw weights exactly."""
        params = dict(model.named_parameters())
        backup = [params[n].detach().clone() for n in self.names]
        for n, s in zip(self.names, self.shadow, strict=True):
            params[n].copy_(s)
        try:
            yield
        finally:
            for n, b in zip(self.names, backup, strict=True):
                params[n].copy_(b)
