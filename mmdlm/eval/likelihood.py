"""Validation NLL from a family's `nll_bound`: exact for AR, the negative ELBO for diffusion families.

Sums are accumulated in float64 and all-reduced across ranks before dividing, so a DDP validation reports
the same number as one process over the same rows (the original logged rank 0's share only, spec §11
bug 16). Only non-pad tokens are counted (the objective's token counts).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mmdlm.data.tokens import TokenSplit
from mmdlm.families import Objective
from mmdlm.training.distributed import all_reduce_sum


def eval_batches(
    split: TokenSplit, batch_size: int, rank: int, world_size: int, max_batches: int | None
) -> Iterator[dict[str, Tensor]]:
    """This rank's validation batches: rows rank, rank + W, ... in order, each row exactly once over all ranks.

    Ranks may get one batch more or less than each other; evaluation has no collective per batch, so that
    is fine, and no row is duplicated to even them out.
    """
    rows = np.arange(rank, len(split), world_size)
    if max_batches is not None:
        rows = rows[: max_batches * batch_size]
    for start in range(0, len(rows), batch_size):
        arrays = split.get_batch(rows[start : start + batch_size])
        yield {k: torch.from_numpy(v) for k, v in arrays.items()}


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
