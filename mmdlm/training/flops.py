"""FLOPs of one training step, counted rather than estimated from parameter counts (for MFU).

    train FLOPs = 3 x F_linear + 3 x F_attention
    F_linear    = sum over every nn.Linear call of one forward of 2 x in_features x out_features x rows
                  (forward hooks; per-token layers and per-sequence adaLN / time MLP alike; an embedding
                  lookup is not a matmul)
    F_attention = 4 x B x L^2 x d per block (scores and weighted values; full L x L also when causal)
The factor 3 is forward + backward (= 2 x forward). For a plain transformer this is the familiar
6 N tokens + 12 n_layers d L tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn


def forward_linear_flops(model: nn.Module, run_forward: Callable[[], object]) -> int:
    total = 0

    def hook(module: nn.Linear, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        nonlocal total
        rows = inputs[0].numel() // module.in_features
        total += 2 * rows * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for h in handles:
            h.remove()
    return total


def train_step_flops(
    model: nn.Module, objective: Callable, batch: Mapping[str, Tensor], hidden_size: int, n_blocks: int
) -> float:
    """FLOPs of forward + backward of `objective(model, batch)` (see the module docstring)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    linear = forward_linear_flops(model, lambda: objective(model, batch, torch.Generator(device)))
    B, L = batch["input_ids"].shape
    return 3.0 * (linear + 4 * B * L * L * hidden_size * n_blocks)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock interval covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(dtype: torch.dtype, n: int, repeats: int, device: torch.device) -> float:
    """Median FLOP/s of an n x n x n matmul in `dtype`: this machine's same-precision peak, measured now,
    the denominator of a training run's share of peak."""
    import statistics
    import time

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)
