"""Validation NLL from a family's `nll_bound`: exact for AR, the negative ELBO for diffusion families.

Sums are accumulated in float64 and all-reduced across ranks before dividing, so a DDP validation reports
the same number as one process over the same rows (the original logged rank 0's share only, spec §11
bug 16). Only non-pad tokens are counted (the objective's token counts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmdlm.families import Objective
from mmdlm.training.distributed import all_reduce_sum


@dataclass
class NLLSums:
    nll: float
    """total nats"""
    tokens: int
    sequences: int


@torch.no_grad()
def nll_sums(
    objective: Objective,
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> NLLSums:
    """Total NLL (bound) and token / sequence counts over `batches`, summed over every rank."""
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    amp = torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    totals = torch.zeros(3, dtype=torch.float64, device=dev)  # nats, tokens, sequences
    for batch in batches:
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        with amp:
            nll, counts = objective.nll_bound(model, batch, num_samples, generator)
        totals[0] += nll.double().sum()
        totals[1] += counts.double().sum()
        totals[2] += nll.numel()
    all_reduce_sum(totals)
    model.train(was_training)
    nats, tokens, sequences = totals.tolist()
    return NLLSums(nll=nats, tokens=round(tokens), sequences=round(sequences))
