"""BatchLoader: rank sharding, determinism, epochs, and exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmdlm.data import BatchLoader, TokenDataset


class Rows:
    """A plain dataset of numpy dicts (no get_batch), like the latent datasets."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"index": np.array(i, dtype=np.int64), "vec": np.full(3, i, dtype=np.float32)}


def _epoch_indices(loader: BatchLoader) -> list[int]:
    return [int(i) for batch in loader.epoch_batches() for i in batch["index"]]


@pytest.mark.parametrize(("n", "drop_last"), [(96, True), (100, False), (7, False)])
def test_union_over_ranks_is_the_dataset_without_overlap(n: int, drop_last: bool) -> None:
    world = 4
    loaders = [
        BatchLoader(Rows(n), 6, rank=r, world_size=world, seed=3, drop_last=drop_last) for r in range(world)
    ]
    assert len({len(loader) for loader in loaders}) == 1  # every rank runs the same number of steps
    per_rank = [_epoch_indices(loader) for loader in loaders]
    everything = [i for indices in per_rank for i in indices]
    assert set(everything) == set(range(n))
    if n % (6 * world) == 0:
        assert sorted(everything) == list(range(n))  # each item exactly once
    else:  # the short last batch wraps around: every rank still gets equally many items
        assert len({len(indices) for indices in per_rank}) == 1
        main_part = [i for indices in per_rank for i in indices[: (len(loaders[0]) - 1) * 6]]
        assert len(main_part) == len(set(main_part))


def test_drop_last_leaves_out_only_the_remainder() -> None:
    loaders = [BatchLoader(Rows(50), 4, rank=r, world_size=3, seed=0) for r in range(3)]
    assert len(loaders[0]) == 4  # 50 // 12
    seen = [i for loader in loaders for i in _epoch_indices(loader)]
    assert len(seen) == len(set(seen)) == 48


def test_batches_are_tensors_with_the_row_shapes() -> None:
    batch = next(BatchLoader(Rows(10), 4))
    assert batch["index"].dtype == torch.int64 and batch["index"].shape == (4,)
    assert batch["vec"].dtype == torch.float32 and batch["vec"].shape == (4, 3)
    torch.testing.assert_close(batch["vec"][:, 0], batch["index"].float())


def test_same_seed_same_order_new_epoch_new_order() -> None:
    a, b = BatchLoader(Rows(40), 8, seed=5), BatchLoader(Rows(40), 8, seed=5)
    first_a, first_b = _epoch_indices(a), _epoch_indices(b)
    assert first_a == first_b and sorted(first_a) == list(range(40)) and first_a != list(range(40))
    second = _epoch_indices(a)
    assert sorted(second) == list(range(40)) and second != first_a
    assert _epoch_indices(BatchLoader(Rows(40), 8, seed=6)) != first_a
    assert _epoch_indices(BatchLoader(Rows(40), 8, shuffle=False)) == list(range(40))


def test_resume_from_state_dict_continues_with_the_same_batches() -> None:
    reference = BatchLoader(Rows(30), 4, rank=1, world_size=2, seed=9)  # 3 batches per epoch
    stream = [next(reference)["index"].tolist() for _ in range(11)]
    first = BatchLoader(Rows(30), 4, rank=1, world_size=2, seed=9)
    for _ in range(5):
        next(first)
    state = first.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 2)
    resumed = BatchLoader(Rows(30), 4, rank=1, world_size=2, seed=9)
    resumed.load_state_dict(state)
    assert [next(resumed)["index"].tolist() for _ in range(6)] == stream[5:]


def test_state_from_a_different_order_is_refused() -> None:
    state = BatchLoader(Rows(30), 4, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1 .* seed=2"):
        BatchLoader(Rows(30), 4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch_size"):
        BatchLoader(Rows(30), 4, world_size=2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="num_items"):
        BatchLoader(Rows(31), 4, seed=1).load_state_dict(state)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(Rows(10), 0)
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(Rows(10), 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        BatchLoader(Rows(10), 4, world_size=4)


def test_token_split_batches(small_gpt2_dataset: Path) -> None:
    split = TokenDataset.open(small_gpt2_dataset, verify=False).split("validation")
    loader = BatchLoader(split, 16, seed=0)
    batch = next(loader)
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].shape == (16, 64)
    assert batch["attention_mask"].dtype == torch.bool
    expected = split.get_batch(loader.indices(0, 0))
    np.testing.assert_array_equal(batch["input_ids"].numpy(), expected["input_ids"])
    assert torch.equal(batch["attention_mask"], batch["input_ids"] != 50257)
