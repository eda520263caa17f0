"""`TokenDataset`: read a `dataset` folder written by `prepare_dataset`, rows memory-mapped from shards."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmdlm.data.manifest import DATASET_FORMAT, DatasetManifest, FileEntry, sha256_file
from mmdlm.data.vocab import VocabInfo

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


class TokenDataset:
    """A prepared dataset: manifest, tokenizer and one `TokenSplit` per split."""

    def __init__(self, root: Path, manifest: DatasetManifest) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, directory: str | Path, verify: bool = True) -> TokenDataset:
        """Open a dataset folder; with `verify`, every file's size and sha256 must match the manifest.

        Verification reads every byte once (about 1 s per GB); skip it only for folders already checked,
        e.g. by the object store's download.
        """
        root = Path(directory)
        manifest = DatasetManifest.read(root)
        for entry in manifest.files():
            _check_file(root, entry, verify)
        return cls(root, manifest)

    @property
    def vocab(self) -> VocabInfo:
        return self.manifest.vocab

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest.splits)

    def tokenizer(self) -> PreTrainedTokenizerFast:
        from mmdlm.data.tokenizers import load_tokenizer

        return load_tokenizer(self.root / self.manifest.tokenizer.dir)

    def split(self, name: str) -> TokenSplit:
        if name not in self.manifest.splits:
            raise KeyError(f"dataset {self.root} has no split {name!r}; splits: {self.split_names}")
        return TokenSplit(self.root, self.manifest, name)

    def __repr__(self) -> str:
        rows = {name: info.rows for name, info in self.manifest.splits.items()}
        return f"TokenDataset({str(self.root)!r}, {DATASET_FORMAT}, seq_len={self.seq_len}, rows={rows})"


class TokenSplit:
    """Rows of one split as `{"input_ids": int64 (L,), "attention_mask": bool (L,)}`.

    attention_mask is `input_ids != pad`: True on text and BOS/EOS, False on right padding.
    `get_batch(indices)` gathers many rows at once (used by `BatchLoader`): arrays of shape (B, L).
    """

    def __init__(self, root: Path, manifest: DatasetManifest, name: str) -> None:
        self.name = name
        self.pad_id = manifest.special_tokens.pad
        self.seq_len = manifest.seq_len
        info = manifest.splits[name]
        self.num_tokens = info.tokens
        self.num_documents = info.documents
        self._paths = [root / shard.path for shard in info.shards]
        self._rows = [shard.rows for shard in info.shards]
        # _offsets[k] is the global index of shard k's first row; _offsets[-1] == len(self)
        self._offsets = np.concatenate([[0], np.cumsum(self._rows, dtype=np.int64)])

    @cached_property
    def _shards(self) -> list[np.ndarray]:
        """Memory maps, opened on first use (so a split object is cheap to pass to worker processes)."""
        shards = []
        for path, rows in zip(self._paths, self._rows, strict=True):
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.dtype != np.int32 or array.shape != (rows, self.seq_len):
                raise ValueError(
                    f"{path}: expected int32 of shape ({rows}, {self.seq_len}), found {array.dtype} {array.shape}"
                )
            shards.append(array)
        return shards

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"row {index} out of range for split {self.name!r} with {n} rows")
        index %= n
        shard = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self._item(np.asarray(self._shards[shard][index - self._offsets[shard]]))

    def get_batch(self, indices: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        """Rows `indices` (any order, repeats allowed) stacked: each value has shape (B, L)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"batch indices out of range for split {self.name!r} with {len(self)} rows")
        out = np.empty((len(indices), self.seq_len), dtype=np.int32)
        shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
        for shard in np.unique(shard_of):
            where = shard_of == shard
            local = indices[where] - self._offsets[shard]
            out[where] = self._shards[shard][local]
        return self._item(out)

    def _item(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        input_ids = tokens.astype(np.int64)
        return {"input_ids": input_ids, "attention_mask": input_ids != self.pad_id}


def _check_file(root: Path, entry: FileEntry, verify: bool) -> None:
    path = root / entry.path
    if not path.is_file():
        raise FileNotFoundError(f"{root}: file {entry.path} listed in the manifest is missing")
    size = path.stat().st_size
    if size != entry.bytes:
        raise ValueError(f"{root}: {entry.path} has {size} bytes, the manifest says {entry.bytes}")
    if verify and sha256_file(path) != entry.sha256:
        raise ValueError(
            f"{root}: {entry.path} does not match its sha256 in the manifest (corrupt or edited)"
        )
