"""Which precision a device can run fast: bf16 autocast only where the hardware has bf16 arithmetic.

Why: on a CPU without native bf16 (no AVX512-BF16 or AMX, e.g. an AVX2-only AMD EPYC), PyTorch's bf16
matmul falls back to slow kernels. Measured on such a machine (torch 2.13, 2 threads): a 1024^3 matmul
takes 2.27 s in bf16 against 18 ms in fp32 (~130x), and one training step of the issue-12 config ~140 s
against ~3.6 s (~40x). A bf16 run there gives no speed, only that slowdown, so it runs in fp32 (more
precise, never less) with a warning, and what ran is recorded as fp32.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Literal

import torch

logger = logging.getLogger(__name__)

Precision = Literal["bf16", "fp32"]


@cache
def has_fast_bf16(device_type: str) -> bool:
    """Whether bf16 arithmetic is native on this kind of device (CUDA: the GPU says; CPU: oneDNN's check
    for AVX512-BF16 / AMX)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True  # other accelerators (mps, xpu): trust the request


def effective_precision(requested: Precision, device: torch.device | str) -> Precision:
    """`requested`, except bf16 on a device without fast bf16, which runs in fp32 (warned once)."""
    device_type = torch.device(device).type
    if requested != "bf16" or has_fast_bf16(device_type):
        return requested
    _warn_once(device_type)
    return "fp32"


@cache
def _warn_once(device_type: str) -> None:
    capability = torch.backends.cpu.get_cpu_capability() if device_type == "cpu" else device_type
    logger.warning(
        "bf16 requested, but this %s (%s) has no native bf16 arithmetic: bf16 would be tens of times "
        "slower than fp32 here, so this runs in fp32 (recorded as fp32)",
        device_type,
        capability,
    )
