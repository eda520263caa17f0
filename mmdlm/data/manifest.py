"""`DatasetManifest`: the `manifest.json` of a `dataset` artifact (format `mmdlm.tokens/v1`).

Layout of the artifact folder (docs/ARCHITECTURE.md, "dataset"):
    manifest.json
    tokenizer/                   HF fast tokenizer folder
    train/shard-00000.npy        int32 (rows, seq_len); pad positions hold special_tokens.pad
    validation/shard-00000.npy
The manifest lists sha256 and size of every other file, so the artifact's own checksum (sha256 of
manifest.json) covers all bytes. No torch import here: the services read manifests cheaply.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmdlm.data.vocab import VocabInfo

DATASET_FORMAT = "mmdlm.tokens/v1"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "validation")


class _Record(BaseModel):
    # Readers ignore fields they do not know, so a later v1 writer may add information.
    model_config = ConfigDict(extra="ignore", frozen=True)


class FileEntry(_Record):
    path: str  # relative to the dataset folder, POSIX separators
    sha256: str
    bytes: int = Field(ge=0)


class ShardEntry(FileEntry):
    rows: int = Field(ge=0)


class SplitInfo(_Record):
    documents: int = Field(ge=0)
    tokens: int = Field(ge=0, description="non-PAD tokens, BOS/EOS included")
    rows: int = Field(ge=0)
    shards: list[ShardEntry]


class TokenizerInfo(_Record):
    kind: str  # the PrepareDataConfig tokenizer type: gpt2 | bert-base-uncased | bpe | pretrained
    name: str
    vocab_size: int = Field(ge=1, description="len(tokenizer), special tokens included")
    dir: str = "tokenizer"
    files: list[FileEntry]


class SpecialTokens(_Record):
    pad: int
    mask: int
    bos: int
    eos: int


class DatasetManifest(_Record):
    format: Literal["mmdlm.tokens/v1"] = DATASET_FORMAT
    source: dict[str, Any]
    tokenizer: TokenizerInfo
    special_tokens: SpecialTokens
    seq_len: int
    packing: Literal["pack", "pad"]
    dtype: Literal["int32"] = "int32"
    splits: dict[str, SplitInfo]
    seed: int
    validation_fraction: float
    config: dict[str, Any] = Field(description="the PrepareDataConfig that produced this dataset")
    mmdlm_version: str
    created_at: str

    @property
    def vocab(self) -> VocabInfo:
        s = self.special_tokens
        return VocabInfo(
            vocab_size=self.tokenizer.vocab_size, pad_id=s.pad, mask_id=s.mask, bos_id=s.bos, eos_id=s.eos
        )

    def files(self) -> list[FileEntry]:
        """Every file of the artifact except manifest.json, with its checksum (tokenizer first)."""
        entries: list[FileEntry] = list(self.tokenizer.files)
        for split in self.splits.values():
            entries.extend(FileEntry(path=s.path, sha256=s.sha256, bytes=s.bytes) for s in split.shards)
        return entries

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, directory: Path) -> DatasetManifest:
        """Parse `directory/manifest.json`, refusing other formats with a message that names them."""
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {MANIFEST_NAME}; is this a prepared dataset folder?")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        fmt = raw.get("format") if isinstance(raw, dict) else None
        if fmt != DATASET_FORMAT:
            raise ValueError(f"{path}: unknown dataset format {fmt!r}; this mmdlm reads {DATASET_FORMAT!r}")
        return cls.model_validate(raw)


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(root: Path, path: Path) -> FileEntry:
    return FileEntry(
        path=path.relative_to(root).as_posix(), sha256=sha256_file(path), bytes=path.stat().st_size
    )
