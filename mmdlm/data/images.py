"""Captioned images for the toy image MMDiT (spec §6): scikit-learn's `load_digits()` (1,797 8x8 grey
digits, values 0..16), each captioned from its label ("a handwritten seven"), offline.

`DigitsDataset.open("sklearn:digits")` gives the object the training loop expects of a dataset (`vocab`,
`seq_len`, `root`, `manifest.tokenizer.dir`, `manifest.source`, `split(name)`), with rows
    {"input_ids": (L,) int64, "attention_mask": (L,) bool, "image": (1, 8, 8) float32 in [-1, 1],
     "pixels": (64,) int64 grey levels 0..16, "label": () int64}.
The caption tokenizer is a word-level fast tokenizer ([PAD] [MASK] [BOS] [EOS] + caption words) saved in
the cache, so a trained model folder carries it like any other. The validation split holds 10% of the
images, chosen by a seeded hash of the image index (an image is a document here).

Prepared image datasets (the `image-dataset` artifact format) live in `mmdlm.data.image_dataset` (format,
writer, `ImageDataset` reader) and `mmdlm.data.image_prepare` (`prepare_images`); `open_image_dataset`
below opens either a prepared folder or `"sklearn:digits"` (written once into the cache in that format).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmdlm.data.image_dataset import ImageDataset, ImageManifest, ImageSplit
from mmdlm.data.vocab import VocabInfo
from mmdlm.paths import cache_dir

__all__ = [
    "DIGITS", "ImageDataset", "ImageManifest", "ImageSplit", "DigitsDataset", "open_image_dataset", "prepare_images",
]  # fmt: skip

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a handwritten {}", "the digit {}", "a {} written by hand", "an image of a {}"]
SPECIALS = ["[PAD]", "[MASK]", "[BOS]", "[EOS]"]
CAPTION_LEN = 8
LEVELS = 17
SOURCE = "sklearn:digits"


def caption(label: int, index: int) -> str:
    return TEMPLATES[index % len(TEMPLATES)].format(DIGITS[label])


def caption_words() -> list[str]:
    words = {w for t in TEMPLATES for w in t.format("").split()} | set(DIGITS)
    return sorted(words)


def _cache_root() -> Path:
    return cache_dir() / "digits"


def build_caption_tokenizer(directory: Path) -> Any:
    """Word-level fast tokenizer over the caption words; saved to `directory` and reloadable."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *caption_words(), "[UNK]"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", mask_token="[MASK]", bos_token="[BOS]",
        eos_token="[EOS]", unk_token="[UNK]",
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


@dataclass
class _TokenizerInfo:
    dir: str = "tokenizer"
    name: str = "digits-captions"


@dataclass
class DigitsManifest:
    tokenizer: _TokenizerInfo = field(default_factory=_TokenizerInfo)
    source: dict[str, Any] = field(default_factory=lambda: {"type": SOURCE, "images": 1797, "levels": LEVELS})
    seq_len: int = CAPTION_LEN


class DigitsDataset:
    """The captioned digits, held in memory (they are 115 KB)."""

    def __init__(self, root: Path, tokenizer: Any, seed: int = 0) -> None:
        from sklearn.datasets import load_digits

        self.root = root
        self.manifest = DigitsManifest()
        self._tokenizer = tokenizer
        digits = load_digits()
        self.pixels = digits.images.reshape(len(digits.images), -1).astype(np.int64)  # (N, 64), 0..16
        self.labels = digits.target.astype(np.int64)
        keys = [
            hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest() for i in range(len(self.labels))
        ]
        order = np.argsort([int.from_bytes(k, "big") for k in keys], kind="stable")
        is_val = np.zeros(len(self.labels), dtype=bool)
        is_val[order[: len(order) // 10]] = True
        self._index = {"train": np.flatnonzero(~is_val), "validation": np.flatnonzero(is_val)}
        ids = np.full((len(self.labels), CAPTION_LEN), self.vocab.pad_id, dtype=np.int64)
        for i, label in enumerate(self.labels):
            row = [
                self.vocab.bos_id,
                *tokenizer(caption(int(label), i), add_special_tokens=False)["input_ids"],
            ]
            row = [*row, self.vocab.eos_id][:CAPTION_LEN]
            ids[i, : len(row)] = row
        self.caption_ids = ids

    @classmethod
    def open(cls, name: str = SOURCE, root: Path | None = None) -> Any:
        """The in-memory digits for `"sklearn:digits"`; a prepared image-dataset folder opens as
        `ImageDataset` (same interface)."""
        if name != SOURCE and (Path(name) / "manifest.json").is_file():
            return ImageDataset.open(name)
        if name != SOURCE:
            raise ValueError(f"unknown image dataset {name!r}; the toy image MMDiT reads {SOURCE!r}")
        root = root or _cache_root()
        from mmdlm.data.tokenizers import load_tokenizer

        folder = root / "tokenizer"
        tokenizer = (
            load_tokenizer(folder)
            if (folder / "tokenizer.json").is_file()
            else build_caption_tokenizer(folder)
        )
        return cls(root, tokenizer)

    @property
    def vocab(self) -> VocabInfo:
        t = self._tokenizer
        return VocabInfo(
            vocab_size=len(t), pad_id=t.pad_token_id, mask_id=t.mask_token_id, bos_id=t.bos_token_id,
            eos_id=t.eos_token_id,
        )  # fmt: skip

    @property
    def seq_len(self) -> int:
        return CAPTION_LEN

    def tokenizer(self) -> Any:
        return self._tokenizer

    def split(self, name: str) -> DigitsSplit:
        if name not in self._index:
            raise KeyError(f"digits have splits train and validation, not {name!r}")
        return DigitsSplit(self, self._index[name], name)


class DigitsSplit:
    def __init__(self, data: DigitsDataset, index: np.ndarray, name: str) -> None:
        self.data, self.index, self.name = data, index, name
        self.pad_id = data.vocab.pad_id

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.get_batch([i]).items()}

    def get_batch(self, indices: Any) -> dict[str, np.ndarray]:
        rows = self.index[np.asarray(indices, dtype=np.int64)]
        ids = self.data.caption_ids[rows]
        pixels = self.data.pixels[rows]
        image = (pixels.astype(np.float32) / (LEVELS - 1) * 2 - 1).reshape(-1, 1, 8, 8)
        return {
            "input_ids": ids,
            "attention_mask": ids != self.pad_id,
            "image": image,
            "pixels": pixels,
            "label": self.data.labels[rows],
        }


def prepare_images(*args: Any, **kwargs: Any) -> ImageManifest:
    """`mmdlm.data.image_prepare.prepare_images` (imported lazily: it pulls in scikit-learn and Pillow)."""
    from mmdlm.data.image_prepare import prepare_images as prepare

    return prepare(*args, **kwargs)


DIGITS_FOLDER = "digits-v1"


def digits_image_dataset(root: Path | None = None) -> Path:
    """The bundled digits as an image-dataset folder (8x8, 1 channel, caption_len 8, 10% validation by
    the same seeded hash as DigitsDataset), written once under the cache and reused."""
    import os
    import shutil

    from mmdlm.config.images import PrepareImagesConfig

    base = root or cache_dir() / "image-datasets"
    target = base / DIGITS_FOLDER
    if not (target / "manifest.json").is_file():
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".{DIGITS_FOLDER}.build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        config = PrepareImagesConfig(source={"type": "digits"}, caption_len=CAPTION_LEN, max_vocab=64)
        prepare_images(config, tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its folder
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def open_image_dataset(
    name_or_dir: str | Path, *, levels: int | None = None, verify: bool = True
) -> ImageDataset:
    """A prepared image-dataset folder, or `"sklearn:digits"` (the digits in the same format, from the
    cache); `levels` sets the grey levels of `pixels` (default: the manifest's, 17 for the digits)."""
    if str(name_or_dir) == SOURCE:
        return ImageDataset.open(digits_image_dataset(), levels=levels, verify=verify)
    path = Path(name_or_dir)
    if not (path / "manifest.json").is_file():
        raise ValueError(
            f"{name_or_dir!s} is neither {SOURCE!r} nor an image-dataset folder (a prepare-images artifact)"
        )
    return ImageDataset.open(path, levels=levels, verify=verify)
