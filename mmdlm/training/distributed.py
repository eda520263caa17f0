"""Process-group setup and the few collectives the loop needs, all safe without torchrun.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; without them this is a single process and every helper
here is a no-op, so nothing ever needs LOCAL_RANK to exist (spec §11 bug 3: the original crashed with
KeyError without torchrun and called `dist.barrier()` unconditionally). Backend: NCCL when the rank has a
CUDA device, gloo otherwise (CPU training and tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(device: Literal["auto", "cpu", "cuda"] = "auto", timeout_s: float = 1800) -> DistInfo:
    """Pick this rank's device and join the process group when launched by torchrun."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but CUDA is not available; use device: cpu or auto")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(seconds=timeout_s),
            device_id=dev if use_cuda else None,
        )
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place and returned (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's picklable `obj` on rank 0 (None elsewhere); [obj] in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class StopVote:
    """Did any rank ask to stop? Agreed on without making any step wait for it.

    `agreed()` is called once per step by every rank: it waits for the vote started at the previous call
    (long finished by then, on a CPU gloo group of its own, so NCCL streams are untouched) and starts the
    next one with this rank's `requested`. A request is therefore seen by all ranks together, one or two
    steps after it was made. Without a process group it is just the local flag.
    """

    def __init__(self) -> None:
        self.requested = False
        self._group: Any = None
        self._pending: tuple[Any, torch.Tensor] | None = None
        if dist.is_available() and dist.is_initialized():
            # every rank creates it, in the same order (a collective); gloo: the vote stays on the CPU
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.new_group()

    def agreed(self) -> bool:
        if self._group is None:
            return self.requested
        decided = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            decided = bool(flag.item() > 0)
        if decided:
            self._pending = None
            return True
        flag = torch.tensor([1.0 if self.requested else 0.0])
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flag)
        return False

    def close(self) -> None:
        """Finish the vote in flight (every rank has one: they all call agreed() equally often)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
        if self._group is not None:
            dist.destroy_process_group(self._group)
            self._group = None
