"""`BatchLoader`: deterministic, rank-sharded, resumable batches over any indexable of numpy dicts.

Epoch e uses the permutation `default_rng([seed, e]).permutation(n)` (identity when shuffle=False), the
same on every rank. Global batch b of the epoch is the slice `perm[b*G : (b+1)*G]` with
G = batch_size * world_size, and rank r takes its r-th contiguous block of batch_size items. So ranks are
disjoint within an epoch, and the union over ranks of an epoch is the whole dataset (drop_last=False) or
all but the last n mod G items (drop_last=True).

With drop_last=False the epoch's last global batch is short; every rank still gets the same number of
batches, of ceil(rest / world_size) items, by wrapping around to the start of the permutation (as
torch's DistributedSampler does), so DDP ranks never wait on each other.

The state (`epoch`, `batch` within the epoch) advances before a batch is handed out, so a state_dict
taken after receiving batch k resumes at batch k+1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import torch


class RowDataset(Protocol):
    """What BatchLoader reads: `len()` and `ds[i] -> {name: np.ndarray}`; `get_batch(indices)` is optional
    (a faster gather that returns the stacked arrays)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, np.ndarray]: ...


class BatchLoader:
    """Infinite iterator of batches `{name: torch.Tensor (batch_size, ...)}` for one rank."""

    def __init__(
        self,
        dataset: RowDataset,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
        self.dataset = dataset
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last, self.pin_memory = seed, shuffle, drop_last, pin_memory
        self.num_items = len(dataset)
        global_batch = batch_size * world_size
        if drop_last:
            self.batches_per_epoch = self.num_items // global_batch
        else:
            self.batches_per_epoch = -(-self.num_items // global_batch)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"dataset has {self.num_items} rows, fewer than one global batch "
                f"(batch_size {batch_size} x world_size {world_size}); lower batch_size or set drop_last=False"
            )
        self.epoch = 0
        self.batch = 0  # index of the next batch within self.epoch
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        """Batches per epoch (each rank gets this many)."""
        return self.batches_per_epoch

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        indices = self.indices(self.epoch, self.batch)
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return self._collate(indices)

    def epoch_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The remaining batches of the current epoch (a finite pass, e.g. for evaluation)."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield next(self)

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        """Dataset indices of this rank's batch `batch` of `epoch` (int64, shape (batch_size,) or shorter)."""
        if not 0 <= batch < self.batches_per_epoch:
            raise IndexError(f"batch {batch} out of range: an epoch has {self.batches_per_epoch} batches")
        perm = self._permutation(epoch)
        global_batch = self.batch_size * self.world_size
        start = batch * global_batch
        chunk = perm[start : start + global_batch]
        if len(chunk) < global_batch:  # drop_last=False, the short final batch
            per_rank = -(-len(chunk) // self.world_size)
            needed = per_rank * self.world_size - len(chunk)
            chunk = np.concatenate([chunk, np.resize(perm, needed)])
            return chunk[self.rank * per_rank : (self.rank + 1) * per_rank]
        return chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_items": self.num_items,
            "global_batch_size": self.batch_size * self.world_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue at the saved position; the data order settings must be the ones the state was saved with."""
        expected = {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_items": self.num_items,
            "global_batch_size": self.batch_size * self.world_size,
        }
        for key, value in expected.items():
            if key in state and state[key] != value:
                raise ValueError(
                    f"loader state was saved with {key}={state[key]!r} but this loader has {key}={value!r}; "
                    "resuming would not continue the same data order"
                )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch < self.batches_per_epoch:
            raise ValueError(f"loader state position epoch={epoch} batch={batch} is out of range")
        self.epoch, self.batch = epoch, batch

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
            else:
                self._perm = np.arange(self.num_items, dtype=np.int64)
            self._perm_epoch = epoch
        return self._perm

    def _collate(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        get_batch = getattr(self.dataset, "get_batch", None)
        if get_batch is not None:
            arrays = dict(get_batch(indices))
        else:
            items = [self.dataset[int(i)] for i in indices]
            arrays = {key: np.stack([np.asarray(item[key]) for item in items]) for key in items[0]}
        batch = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()}
        if self.pin_memory and torch.cuda.is_available():
            batch = {key: value.pin_memory() for key, value in batch.items()}
        return batch
