"""Turn token streams into fixed-length rows and write them as int32 `.npy` shards.

Row layouts (spec §8.4, without its bugs):
  pack  documents (BOS + text + EOS) are concatenated and cut into rows; only the final row of the split
        is right-padded with PAD, so no token is dropped.
  pad   each document is cut into rows on its own and its last row is right-padded; a document whose
        length is a multiple of seq_len ends exactly at a row boundary (no extra all-PAD row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from mmdlm.data.manifest import ShardEntry, SplitInfo, sha256_file

DTYPE = np.int32


class SplitWriter:
    """Accumulates one split's documents into rows and flushes full shards of `shard_rows` rows."""

    def __init__(
        self,
        root: Path,
        split: str,
        seq_len: int,
        pad_id: int,
        shard_rows: int,
        packing: Literal["pack", "pad"],
    ) -> None:
        self.root, self.split = root, split
        self.seq_len, self.pad_id, self.shard_rows, self.packing = seq_len, pad_id, shard_rows, packing
        (root / split).mkdir(parents=True, exist_ok=True)
        self.documents = self.tokens = self.rows = 0
        self.shards: list[ShardEntry] = []
        self._rows: list[np.ndarray] = []  # pending (r, seq_len) blocks not yet in a shard
        self._pending_rows = 0
        self._tail = np.empty(0, dtype=DTYPE)  # pack: tokens that do not yet fill a row

    def add(self, documents: list[np.ndarray]) -> None:
        """Add documents, each a 1-D int32 array that already holds BOS ... EOS."""
        if not documents:
            return
        self.documents += len(documents)
        self.tokens += sum(len(d) for d in documents)
        if self.packing == "pack":
            stream = np.concatenate([self._tail, *documents])
            full = len(stream) // self.seq_len * self.seq_len
            self._push(stream[:full].reshape(-1, self.seq_len))
            self._tail = stream[full:].copy()
        else:
            self._push(np.concatenate([self._padded(d) for d in documents]))

    def close(self) -> SplitInfo:
        if len(self._tail):
            self._push(self._padded(self._tail))
            self._tail = np.empty(0, dtype=DTYPE)
        while self._pending_rows:
            self._flush(min(self._pending_rows, self.shard_rows))
        return SplitInfo(documents=self.documents, tokens=self.tokens, rows=self.rows, shards=self.shards)

    def _padded(self, tokens: np.ndarray) -> np.ndarray:
        """(ceil(n / L), L) rows of one token run, right-padded; n = k*L gives exactly k rows."""
        num_rows = -(-len(tokens) // self.seq_len)
        rows = np.full(num_rows * self.seq_len, self.pad_id, dtype=DTYPE)
        rows[: len(tokens)] = tokens
        return rows.reshape(num_rows, self.seq_len)

    def _push(self, rows: np.ndarray) -> None:
        if len(rows):
            self._rows.append(rows)
            self._pending_rows += len(rows)
        while self._pending_rows >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, count: int) -> None:
        block = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
        shard, rest = block[:count], block[count:]
        self._rows = [rest] if len(rest) else []
        self._pending_rows = len(rest)
        path = self.root / self.split / f"shard-{len(self.shards):05d}.npy"
        np.save(path, np.ascontiguousarray(shard, dtype=DTYPE), allow_pickle=False)
        rel = path.relative_to(self.root).as_posix()
        self.shards.append(
            ShardEntry(path=rel, rows=count, sha256=sha256_file(path), bytes=path.stat().st_size)
        )
        self.rows += count
