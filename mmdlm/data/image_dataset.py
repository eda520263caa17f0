"""The `image-dataset` format: captioned uint8 images + a word-level caption tokenizer + manifest.

    manifest.json          ImageManifest (format "image-dataset", format_version 1; written last)
    <split>/images.npy     uint8 (N, C, S, S)
    <split>/captions.npy   int32 (N, L) caption ids ([BOS] words [EOS], cut at L), padded with pad_id
    <split>/caption_mask.npy  bool (N, L)
    <split>/labels.npy     int64 (N,), -1 where unknown (only when manifest.labels is not null)
    <split>/captions.jsonl the raw caption strings, one JSON string per line
    tokenizer/             HF fast tokenizer, word-level, specials [PAD] [MASK] [BOS] [EOS] [UNK] (ids 0-4)

`ImageDatasetWriter` builds such a folder row by row with bounded memory (pixels stream to disk);
`ImageDataset.open(dir)` reads it with the interface the training loop and the image family use
(`vocab`, `seq_len`, `root`, `manifest.tokenizer.dir`, `manifest.source`, `split(name).get_batch(idx)`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mmdlm.data.vocab import VocabInfo

FORMAT = "image-dataset"
FORMAT_VERSION = 1
SPECIALS = ("[PAD]", "[MASK]", "[BOS]", "[EOS]", "[UNK]")
SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
_CHUNK_ROWS = 4096


class ImageTokenizerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    dir: str = "tokenizer"
    kind: str = "word-level"
    name: str = "image-captions"
    vocab_size: int = Field(ge=1)
    pad_id: int
    mask_id: int
    bos_id: int
    eos_id: int
    unk_id: int | None = None
    lowercase: bool = True


class SkippedImage(BaseModel):
    name: str
    reason: str


class ImageManifest(BaseModel):
    """manifest.json of an image-dataset (unknown keys are kept: newer writers may add some)."""

    model_config = ConfigDict(extra="allow")

    format: Literal["image-dataset"] = FORMAT
    format_version: int = FORMAT_VERSION
    resolution: int = Field(ge=1)
    channels: int = Field(ge=1)
    pixel_dtype: Literal["uint8"] = "uint8"
    levels: int = Field(default=256, ge=2, le=256)
    """Grey levels the uint8 pixels carry natively (17 for unresized digits, else 256)."""
    caption_len: int = Field(ge=1)
    splits: dict[str, int]
    """Rows (image x caption pairs) per split."""
    split_images: dict[str, int] = Field(default_factory=dict)
    labels: list[str] | None = None
    source: dict[str, Any] = Field(default_factory=dict)
    tokenizer: ImageTokenizerInfo
    checksums: dict[str, str] = Field(default_factory=dict)
    skipped: list[SkippedImage] = Field(default_factory=list)
    seed: int = 0
    validation_fraction: float | None = None
    test_fraction: float | None = None
    config: dict[str, Any] | None = None
    created_by: str = "mmdlm.data.images.prepare_images"
    mmdlm_version: str | None = None
    created_at: str | None = None

    @property
    def seq_len(self) -> int:
        return self.caption_len


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ tokenizer


def build_word_tokenizer(
    captions: Iterable[str],
    directory: Path,
    *,
    lowercase: bool = True,
    min_frequency: int = 1,
    max_vocab: int = 16_384,
) -> Any:
    """A word-level fast tokenizer over `captions` (the train split's), saved to `directory`.

    Words are ordered by frequency, then alphabetically, so the ids do not depend on caption order; the
    specials come first (ids 0-4). Words outside the vocabulary become [UNK]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    norm = normalizers.Lowercase() if lowercase else None
    counts: Counter[str] = Counter()
    for text in captions:
        text = norm.normalize_str(text) if norm is not None else text
        counts.update(word for word, _ in pre.pre_tokenize_str(text))
    words = sorted((w for w, c in counts.items() if c >= min_frequency and w not in SPECIALS),
                   key=lambda w: (-counts[w], w))[: max(0, max_vocab - len(SPECIALS))]  # fmt: skip
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre
    if norm is not None:
        backend.normalizer = norm
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", mask_token="[MASK]", bos_token="[BOS]",
        eos_token="[EOS]", unk_token="[UNK]",
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def encode_captions(tokenizer: Any, captions: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 (N, L), mask bool (N, L)): [BOS] + words + [EOS], cut at `length`, padded with [PAD]."""
    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = np.full((len(captions), length), pad, dtype=np.int32)
    for start in range(0, len(captions), 1024):
        batch = list(captions[start : start + 1024])
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"] if batch else []
        for i, row in enumerate(encoded):
            full = [bos, *row, eos][:length]
            ids[start + i, : len(full)] = full
    return ids, ids != pad


# ------------------------------------------------------------------------------------------------ writer


class ImageDatasetWriter:
    """Builds an image-dataset folder in `directory` (created empty): `add()` rows, then `finish()`.

    Pixels stream to a raw file per split and become `.npy` at the end, so memory stays bounded by the
    captions, not the images."""

    def __init__(self, directory: Path, resolution: int, channels: int, caption_len: int) -> None:
        self.dir = Path(directory)
        self.resolution, self.channels, self.caption_len = resolution, channels, caption_len
        self.dir.mkdir(parents=True, exist_ok=True)
        self._raw: dict[str, Any] = {}
        self.captions: dict[str, list[str]] = {}
        self.labels: dict[str, list[int]] = {}
        self.images: dict[str, int] = {}

    def add(self, split: str, pixels: np.ndarray, captions: Sequence[str], label: int = -1) -> None:
        """One image (uint8 (C, S, S)) with its captions: a row per caption."""
        shape = (self.channels, self.resolution, self.resolution)
        if pixels.shape != shape or pixels.dtype != np.uint8:
            raise ValueError(f"image rows must be uint8 {shape}, got {pixels.dtype} {pixels.shape}")
        if split not in self._raw:
            (self.dir / split).mkdir(exist_ok=True)
            self._raw[split] = open(self.dir / split / "images.raw", "wb")  # noqa: SIM115 (closed in finish)
            self.captions[split], self.labels[split], self.images[split] = [], [], 0
        data = np.ascontiguousarray(pixels).tobytes()
        for text in captions:
            self._raw[split].write(data)
            self.captions[split].append(text)
            self.labels[split].append(int(label))
        self.images[split] += 1

    def close(self) -> None:
        for handle in self._raw.values():
            handle.close()

    def finish(
        self,
        tokenizer_fn: Any,
        *,
        labels: list[str] | None,
        source: dict[str, Any],
        skipped: list[SkippedImage],
        levels: int = 256,
        **extra: Any,
    ) -> ImageManifest:
        """Tokenize the captions (`tokenizer_fn(train_captions, directory) -> tokenizer`), write every array
        and the manifest (last), and return it."""
        self.close()
        if not self.captions.get("train"):
            raise ValueError("no image is left for the train split")
        tokenizer = tokenizer_fn(self.captions["train"], self.dir / "tokenizer")
        item = self.channels * self.resolution**2
        for split, captions in self.captions.items():
            folder = self.dir / split
            rows = len(captions)
            images = np.lib.format.open_memmap(
                folder / "images.npy", mode="w+", dtype=np.uint8,
                shape=(rows, self.channels, self.resolution, self.resolution),
            )  # fmt: skip
            with open(folder / "images.raw", "rb") as raw:
                for start in range(0, rows, _CHUNK_ROWS):
                    n = min(_CHUNK_ROWS, rows - start)
                    block = np.frombuffer(raw.read(n * item), dtype=np.uint8)
                    images[start : start + n] = block.reshape(n, *images.shape[1:])
            images.flush()
            del images
            (folder / "images.raw").unlink()
            ids, mask = encode_captions(tokenizer, captions, self.caption_len)
            np.save(folder / "captions.npy", ids)
            np.save(folder / "caption_mask.npy", mask)
            if labels is not None:
                np.save(folder / "labels.npy", np.asarray(self.labels[split], dtype=np.int64))
            with open(folder / "captions.jsonl", "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(text, ensure_ascii=False) + "\n" for text in captions)
        checksums = {
            path.relative_to(self.dir).as_posix(): sha256_file(path)
            for path in sorted(self.dir.rglob("*"))
            if path.is_file() and path.name != MANIFEST
        }
        import mmdlm

        manifest = ImageManifest(
            resolution=self.resolution, channels=self.channels, levels=levels, caption_len=self.caption_len,
            splits={s: len(c) for s, c in self.captions.items()}, split_images=dict(self.images),
            labels=labels, source=source,
            tokenizer=ImageTokenizerInfo(
                vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id, mask_id=tokenizer.mask_token_id,
                bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, unk_id=tokenizer.unk_token_id,
                lowercase=bool(extra.pop("lowercase", True)),
            ),
            checksums=checksums, skipped=skipped, mmdlm_version=getattr(mmdlm, "__version__", None),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"), **extra,
        )  # fmt: skip
        tmp = self.dir / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=1), encoding="utf-8")
        os.replace(tmp, self.dir / MANIFEST)
        return manifest

    def abort(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ reader


class ImageDataset:
    """A prepared image-dataset folder (images memory-mapped, captions in memory)."""

    def __init__(
        self, root: Path, manifest: ImageManifest, tokenizer: Any, levels: int | None = None
    ) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self._tokenizer = tokenizer
        self.levels = int(levels if levels is not None else manifest.levels)
        if not 2 <= self.levels <= 256:
            raise ValueError(f"levels must be in 2..256 (uint8 pixels), got {self.levels}")

    @classmethod
    def open(cls, directory: str | Path, *, levels: int | None = None, verify: bool = True) -> ImageDataset:
        """Read `directory`; `verify` checks every file's sha256 against the manifest; `levels` sets the
        grey levels of `pixels` (default: the manifest's)."""
        root = Path(directory)
        path = root / MANIFEST
        if not path.is_file():
            raise ValueError(f"{root} is not an image-dataset folder (no {MANIFEST})")
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"{root}: manifest format is {found!r}, expected {FORMAT!r}")
        if int(raw.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{root}: image-dataset format_version {raw['format_version']} is newer than this reader "
                f"({FORMAT_VERSION}); upgrade mmdlm"
            )
        manifest = ImageManifest.model_validate(raw)
        if verify:
            for rel, expected in manifest.checksums.items():
                file = root / rel
                if not file.is_file():
                    raise ValueError(f"{root}: {rel} is missing")
                if sha256_file(file) != expected:
                    raise ValueError(f"{root}: {rel} does not match its sha256 in the manifest")
        from mmdlm.data.tokenizers import load_tokenizer

        return cls(root, manifest, load_tokenizer(root / manifest.tokenizer.dir), levels)

    @property
    def vocab(self) -> VocabInfo:
        t = self.manifest.tokenizer
        return VocabInfo(vocab_size=t.vocab_size, pad_id=t.pad_id, mask_id=t.mask_id, bos_id=t.bos_id,
                         eos_id=t.eos_id)  # fmt: skip

    @property
    def seq_len(self) -> int:
        return self.manifest.caption_len

    @property
    def resolution(self) -> int:
        return self.manifest.resolution

    @property
    def channels(self) -> int:
        return self.manifest.channels

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.labels

    def tokenizer(self) -> Any:
        return self._tokenizer

    def split(self, name: str) -> ImageSplit:
        if name not in self.manifest.splits:
            raise KeyError(f"this image dataset has splits {sorted(self.manifest.splits)}, not {name!r}")
        return ImageSplit(self, name)


class ImageSplit:
    """One split: `len()`, `[i]`, `get_batch(indices)` (the rows the image family trains on), `captions()`."""

    def __init__(self, data: ImageDataset, name: str) -> None:
        self.data, self.name = data, name
        folder = data.root / name
        self.images = np.load(folder / "images.npy", mmap_mode="r")
        self.caption_ids = np.load(folder / "captions.npy").astype(np.int64)
        self.caption_mask = np.load(folder / "caption_mask.npy")
        labels = folder / "labels.npy"
        self.labels = (
            np.load(labels) if labels.is_file() else np.full(len(self.caption_ids), -1, dtype=np.int64)
        )
        self._texts: list[str] | None = None
        n = data.manifest.splits[name]
        if not (len(self.images) == len(self.caption_ids) == len(self.labels) == n):
            raise ValueError(f"{data.root}/{name}: arrays disagree with the manifest's {n} rows")

    def __len__(self) -> int:
        return len(self.caption_ids)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.get_batch([i]).items()}

    def get_batch(self, indices: Any) -> dict[str, np.ndarray]:
        rows = np.asarray(indices, dtype=np.int64)
        u8 = np.asarray(self.images[rows])
        levels = self.data.levels
        pixels = np.rint(u8.astype(np.float32) * ((levels - 1) / 255.0)).astype(
            np.int64
        )  # as the family quantises
        return {
            "input_ids": self.caption_ids[rows],
            "attention_mask": self.caption_mask[rows],
            "image": u8.astype(np.float32) / 127.5 - 1.0,
            "pixels": pixels.reshape(len(rows), -1),
            "label": self.labels[rows],
        }

    def captions(self, indices: Any | None = None) -> list[str]:
        """The raw caption strings of `indices` (all rows when None)."""
        if self._texts is None:
            path = self.data.root / self.name / "captions.jsonl"
            with open(path, encoding="utf-8") as handle:
                self._texts = [json.loads(line) for line in handle]
        if indices is None:
            return list(self._texts)
        return [self._texts[int(i)] for i in np.asarray(indices, dtype=np.int64)]
