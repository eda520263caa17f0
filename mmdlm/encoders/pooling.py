"""Pooling of encoder hidden states into one vector per text, and the final truncate/normalise step.

All functions take hidden states `(B, L, H)` and an attention mask `(B, L)` (1 = real token) and return
float32 `(B, H)`; pooling always runs in float32, whatever precision the encoder forward used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average over real tokens only; padding never enters the mean (B17's T5 bug)."""
    weights = mask.to(torch.float32).unsqueeze(-1)  # (B, L, 1)
    summed = (hidden.to(torch.float32) * weights).sum(dim=1)
    return summed / weights.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: Tensor, mask: Tensor) -> Tensor:  # noqa: ARG001 - uniform signature
    """The first position ([CLS] / <s>); right padding keeps it a real token."""
    return hidden[:, 0].to(torch.float32)


def last_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """The last real token of each row, for left- or right-padded batches alike."""
    length = mask.shape[1]
    # index of the last 1 in each row: L-1 minus the position of the first 1 in the flipped mask
    last = length - 1 - torch.flip(mask.to(torch.int64), dims=[1]).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].to(torch.float32)


POOLERS = {"mean": mean_pool, "cls": cls_pool, "last": last_pool}


def finalize(vectors: Tensor, dim: int | None, normalize: bool) -> Tensor:
    """Matryoshka-truncate to `dim` first, then L2-normalise, so truncated vectors stay unit norm."""
    if dim is not None:
        vectors = vectors[:, :dim]
    if normalize:
        vectors = F.normalize(vectors, p=2, dim=-1)
    return vectors
