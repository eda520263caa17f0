"""`prepare_images`: a folder of captioned images (or the bundled digits) -> an `image-dataset` folder.

Steps: read the captions file (JSONL or COCO-style), decode + convert + resize + centre-crop every image
(a bad one is recorded in `skipped` or, with `on_bad_image: refuse`, fails the preparation naming it),
choose each readable image's split by a seeded hash of its name (an idx folder's official test set keeps
its own), train the word-level caption tokenizer on the
train captions, write arrays + manifest. The folder is built under a temporary sibling and renamed into
place, so a crash never leaves something that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmdlm.config.images import DigitsImageSource, IdxImageSource, ImageFolderSource, PrepareImagesConfig
from mmdlm.confine import PathNotAllowed, PathRoots, open_confined
from mmdlm.data.image_dataset import ImageDatasetWriter, ImageManifest, SkippedImage, build_word_tokenizer

Progress = Callable[[int, int, str], None]
"""progress(done, total, phase); an exception raised from it (a job's cancellation) stops the work."""

MAX_CAPTIONS_FILE = 1 << 30
MAX_CAPTION_CHARS = 10_000
MAX_REFUSED_NAMES = 20
_CAPTION_NAMES = ("captions.jsonl", "captions.json")
# 32-bit integer and float images have no agreed grey scale: refused rather than guessed
_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
          "I;16", "I;16L", "I;16B", "I;16N"}  # fmt: skip


class BadImage(Exception):
    """An image that cannot become a row; `reason` is what the manifest's `skipped` records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Entry:
    name: str
    captions: list[str] = field(default_factory=list)
    label: Any = None
    split: str | None = None
    """A split the source fixes (an official test set); None: chosen by hash."""


def prepare_images(
    config: PrepareImagesConfig,
    out_dir: Path | str,
    progress: Progress | None = None,
    *,
    roots: PathRoots | None = None,
) -> ImageManifest:
    """Build the image-dataset folder `out_dir` (absent or empty) and return its manifest.

    Raises ValueError naming the problem for bad input (no captions file, a bad line, too few images,
    `on_bad_image: refuse` with bad images); `mmdlm.confine.PathNotAllowed` for a folder outside `roots`.
    roots=None reads any folder (a person's own files); the services always pass them.
    """
    out_dir = Path(out_dir)
    report = progress or (lambda done, total, phase: None)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"output folder {out_dir} already exists and is not empty")
    size = config.resolved_resolution()
    if isinstance(config.source, DigitsImageSource):
        reader: _Source = _DigitsSource(config, size)
    elif isinstance(config.source, IdxImageSource):
        reader = _IdxSource(config.source, config, size, roots)
    else:
        reader = _FolderSource(config.source, config, size, roots)
    entries = reader.entries()
    report(0, len(entries), "reading images")
    label_names, label_of = _labels(entries)
    label_names = reader.label_names() or label_names
    if len({e.name for e in entries}) != len(entries):
        raise ValueError("the source lists an image twice; each image must be listed once")

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = ImageDatasetWriter(tmp, size, config.channels, config.caption_len)
    staging = tmp / ".decoded.raw"  # every readable image once, in source order, until the split is known
    try:
        skipped: list[SkippedImage] = []
        good: list[_Entry] = []
        with open(staging, "wb") as stage:
            for i, entry in enumerate(entries):
                try:
                    stage.write(np.ascontiguousarray(reader.read(i, entry)).tobytes())
                    good.append(entry)
                except BadImage as bad:
                    skipped.append(SkippedImage(name=entry.name, reason=bad.reason))
                if (i + 1) % 256 == 0:
                    report(i + 1, len(entries), "reading images")
        report(len(entries), len(entries), "reading images")
        if skipped and config.on_bad_image == "refuse":
            names = ", ".join(f"{s.name} ({s.reason})" for s in skipped[:MAX_REFUSED_NAMES])
            more = f" and {len(skipped) - MAX_REFUSED_NAMES} more" if len(skipped) > MAX_REFUSED_NAMES else ""
            raise ValueError(
                f"{len(skipped)} bad image(s) and on_bad_image is 'refuse': {names}{more}; fix or remove them, "
                "or set on_bad_image: skip"
            )
        free = [e for e in good if e.split is None]  # the source's own test set keeps its split
        if len(free) < 2:
            fixed = f", {len(good) - len(free)} in the source's own test set" if len(free) < len(good) else ""
            raise ValueError(
                f"{len(free)} readable image(s) for train and validation ({len(entries)} listed, {len(skipped)} "
                f"bad{fixed}); at least 2 are needed for a train/validation split"
            )
        # the split is chosen among the readable images: a bad file never empties or shifts a split
        chosen = iter(_choose_splits([e.name for e in free], config))
        splits = [e.split if e.split is not None else next(chosen) for e in good]
        decoded = np.memmap(staging, dtype=np.uint8, mode="r", shape=(len(good), config.channels, size, size))
        for i, (entry, split) in enumerate(zip(good, splits, strict=True)):
            writer.add(split, decoded[i], entry.captions[: config.max_captions_per_image], label_of(entry))
        del decoded
        staging.unlink()
        report(0, 1, "tokenizing captions")

        def tokenizer_fn(captions: list[str], directory: Path) -> Any:
            return build_word_tokenizer(
                captions, directory, lowercase=config.lowercase, min_frequency=config.min_word_frequency,
                max_vocab=config.max_vocab,
            )  # fmt: skip

        manifest = writer.finish(
            tokenizer_fn, labels=label_names, source=reader.describe(), skipped=skipped,
            levels=reader.levels(), lowercase=config.lowercase, seed=config.seed,
            validation_fraction=config.validation_fraction, test_fraction=config.test_fraction,
            config=config.model_dump(mode="json"),
        )  # fmt: skip
        if out_dir.exists():
            out_dir.rmdir()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    except BaseException:
        writer.abort()
        raise
    report(1, 1, "done")
    return manifest


# ------------------------------------------------------------------------------------------------ splits


def split_key(name: str, seed: int) -> int:
    """A seeded 64-bit hash of an image's name (the digits use their index as name)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "big")


def _choose_splits(names: list[str], config: PrepareImagesConfig) -> list[str]:
    """Of n readable images, the floor(n * fraction) (at least 1) with the smallest keys are validation, the
    next test."""
    n = len(names)
    n_val = min(max(1, int(n * config.validation_fraction)), n - 1)
    n_test = int(n * config.test_fraction) if config.test_fraction > 0 else 0
    n_test = min(max(1, n_test) if config.test_fraction > 0 else 0, n - 1 - n_val)
    order = np.argsort(
        np.array([split_key(name, config.seed) for name in names], dtype=np.uint64), kind="stable"
    )
    splits = ["train"] * n
    for rank, i in enumerate(order[: n_val + n_test]):
        splits[i] = "validation" if rank < n_val else "test"
    return splits


def _labels(entries: list[_Entry]) -> tuple[list[str] | None, Callable[[_Entry], int]]:
    """Label names and an entry -> class id map: integers are their own ids, strings are sorted names."""
    given = [e.label for e in entries if e.label is not None]
    if not given:
        return None, lambda e: -1
    if all(isinstance(v, int) and not isinstance(v, bool) for v in given):
        if min(given) < 0 or max(given) > 100_000:
            raise ValueError("integer labels must be in 0..100000")
        return [str(i) for i in range(max(given) + 1)], lambda e: -1 if e.label is None else int(e.label)
    if all(isinstance(v, str) for v in given):
        names = sorted(set(given))
        index = {name: i for i, name in enumerate(names)}
        return names, lambda e: -1 if e.label is None else index[e.label]
    raise ValueError("labels must be all integers or all strings")


# ------------------------------------------------------------------------------------------------ images


def to_pixels(image: Any, size: int, channels: int) -> np.ndarray:
    """A Pillow image (any mode) -> uint8 (C, S, S): transparency over white, shorter side resized to S
    (bicubic), centre-cropped."""
    from PIL import Image

    if image.mode not in _MODES:
        raise BadImage(
            f"unsupported mode {image.mode} (32-bit integer or float pixels); save it as 8 or 16 bit"
        )
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) // 257).astype(np.uint8))
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_image(handle: Any, size: int, channels: int, max_pixels: int) -> np.ndarray:
    """Decode an image file object to uint8 (C, S, S), or raise BadImage saying why."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                w, h = image.size
                if w <= 0 or h <= 0:
                    raise BadImage("zero-size image")
                if w * h > max_pixels:
                    raise BadImage(f"oversized: {w}x{h} pixels, over max_image_pixels ({max_pixels})")
                if image.format == "JPEG":  # decode at a reduced scale that still covers the target size
                    scale = size / min(w, h)
                    image.draft(image.mode, (max(1, int(w * scale + 1)), max(1, int(h * scale + 1))))
                image.load()
                image = ImageOps.exif_transpose(image) or image
                return to_pixels(image, size, channels)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"oversized (over max_image_pixels {max_pixels})") from None
    except UnidentifiedImageError:
        raise BadImage("not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        reason = "truncated" if "truncated" in text.lower() else "corrupt"
        raise BadImage(f"{reason}: {text[:200]}") from None


class _Source(ABC):
    """Where images come from: the entries to read, one image per entry, and a record for the manifest."""

    @abstractmethod
    def entries(self) -> list[_Entry]: ...

    @abstractmethod
    def read(self, index: int, entry: _Entry) -> np.ndarray: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    def levels(self) -> int:
        return 256

    def label_names(self) -> list[str] | None:
        """Names of the integer labels, when the source knows them."""
        return None


class _DigitsSource(_Source):
    """scikit-learn's 8x8 digits; captions and names (the index) as `mmdlm.data.images.DigitsDataset`."""

    def __init__(self, config: PrepareImagesConfig, size: int) -> None:
        from sklearn.datasets import load_digits

        from mmdlm.data.images import caption

        digits = load_digits()
        self.size, self.channels = size, config.channels
        # 0..16 -> 0..255; levels=17 quantises back to the exact sklearn values
        self.u8 = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        self.labels = digits.target.astype(np.int64)
        self.caption = caption

    def entries(self) -> list[_Entry]:
        return [_Entry(str(i), [self.caption(int(y), i)], int(y)) for i, y in enumerate(self.labels)]

    def read(self, index: int, entry: _Entry) -> np.ndarray:  # noqa: ARG002
        pixels = self.u8[index]
        if self.size == 8 and self.channels == 1:
            return pixels[None].copy()
        from PIL import Image

        return to_pixels(Image.fromarray(pixels), self.size, self.channels)

    def describe(self) -> dict[str, Any]:
        return {"type": "digits", "name": "sklearn:digits", "images": len(self.labels), "native_resolution": 8,
                "native_levels": 17}  # fmt: skip

    def levels(self) -> int:
        return 17 if self.size == 8 else 256

    def label_names(self) -> list[str] | None:
        from mmdlm.data.images import DIGITS

        return list(DIGITS)


class _FolderSource(_Source):
    """A folder with a captions file; with `roots` the folder, the captions file and every image must
    resolve inside them (checked when opened), and messages name files relative to the folder only."""

    def __init__(
        self, source: ImageFolderSource, config: PrepareImagesConfig, size: int, roots: PathRoots | None
    ) -> None:
        self.source, self.config, self.size, self.roots = source, config, size, roots
        if roots is not None:
            self.root = roots.folder(source.path, "source.path")
        else:
            self.root = Path(source.path).expanduser().resolve()
            if not self.root.is_dir():
                raise ValueError(f"source.path: {self.root} is not a folder")
        self.captions_name = source.captions or next(
            (name for name in _CAPTION_NAMES if (self.root / name).is_file()), None
        )
        if self.captions_name is None:
            raise ValueError(
                "source.captions: the folder holds neither captions.jsonl nor captions.json; name the captions file"
            )
        fmt = source.format
        if fmt == "auto":
            suffix = Path(self.captions_name).suffix.lower()
            if suffix not in (".jsonl", ".json"):
                raise ValueError(
                    f"source.format: cannot tell the format of {self.captions_name!r}; set jsonl or coco"
                )
            fmt = "jsonl" if suffix == ".jsonl" else "coco"
        self.format = fmt

    def _inside(self, name: str, field: str) -> Path:
        """The real path of `name` inside the source folder (PathNotAllowed otherwise, one message)."""
        raw = Path(name)
        if not name or raw.is_absolute() or ".." in raw.parts or "\x00" in name or "\\" in name:
            raise PathNotAllowed(field)
        real = Path(os.path.realpath(self.root / raw))
        if not real.is_relative_to(self.root) or (self.roots is not None and not self.roots.contains(real)):
            raise PathNotAllowed(field)
        return real

    def _read_captions(self) -> str:
        path = self._inside(self.captions_name, "source.captions")
        try:
            fd = open_confined(path, self.roots, "source.captions")
        except (PathNotAllowed, OSError):
            raise ValueError(f"source.captions: {self.captions_name} cannot be read") from None
        with os.fdopen(fd, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_CAPTIONS_FILE:
                raise ValueError(f"source.captions: {self.captions_name} is over {MAX_CAPTIONS_FILE} bytes")
            data = handle.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.captions_name}: not UTF-8 text ({exc.reason})") from None

    def entries(self) -> list[_Entry]:
        text = self._read_captions()
        records = self._jsonl(text) if self.format == "jsonl" else self._coco(text)
        by_name: dict[str, _Entry] = {}
        for where, name, caption, label in records:
            entry = by_name.get(name)
            if entry is None:
                if len(by_name) >= self.config.max_images:
                    continue
                entry = by_name[name] = _Entry(name)
            elif label is not None and entry.label is not None and label != entry.label:
                raise ValueError(f"{where}: {name} was given label {entry.label!r} before, now {label!r}")
            entry.captions.append(caption)
            entry.label = entry.label if label is None else label
        if not by_name:
            raise ValueError(f"{self.captions_name}: lists no captioned image")
        return list(by_name.values())

    def _check(self, where: str, name: Any, caption: Any, label: Any = None) -> tuple[str, str, str, Any]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: the image file name must be a non-empty string")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where}: the caption must be a non-empty string")
        if len(caption) > MAX_CAPTION_CHARS:
            raise ValueError(f"{where}: caption longer than {MAX_CAPTION_CHARS} characters")
        if label is not None and (isinstance(label, bool) or not isinstance(label, (int, str))):
            raise ValueError(f"{where}: label must be a string or an integer")
        return where, name, " ".join(caption.split()), label

    def _jsonl(self, text: str) -> Iterator[tuple[str, str, str, Any]]:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{self.captions_name}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object with file and caption")
            for key in ("file", "caption"):
                if key not in record:
                    raise ValueError(f"{where}: no field {key!r}; keys: {sorted(record)[:10]}")
            yield self._check(where, record["file"], record["caption"], record.get("label"))

    def _coco(self, text: str) -> Iterator[tuple[str, str, str, Any]]:
        where = self.captions_name
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("images"), list)
            or not isinstance(data.get("annotations"), list)
        ):
            raise ValueError(
                f"{where}: expected a COCO captions object with lists 'images' and 'annotations'"
            )
        files: dict[Any, str] = {}
        for i, image in enumerate(data["images"]):
            if (
                not isinstance(image, dict)
                or "id" not in image
                or not isinstance(image.get("file_name"), str)
            ):
                raise ValueError(f"{where}: images[{i}] needs an id and a file_name")
            files[image["id"]] = image["file_name"]
        for i, note in enumerate(data["annotations"]):
            if not isinstance(note, dict) or "image_id" not in note or "caption" not in note:
                raise ValueError(f"{where}: annotations[{i}] needs an image_id and a caption")
            if note["image_id"] not in files:
                raise ValueError(f"{where}: annotations[{i}]: image_id {note['image_id']!r} is not in images")
            yield self._check(f"{where}: annotations[{i}]", files[note["image_id"]], note["caption"])

    def read(self, index: int, entry: _Entry) -> np.ndarray:  # noqa: ARG002
        try:
            path = self._inside(entry.name, "source.path")
        except PathNotAllowed:
            raise BadImage("not a file inside source.path") from None
        try:
            fd = open_confined(path, self.roots, "source.path")
        except (PathNotAllowed, OSError):
            raise BadImage("missing or unreadable file") from None
        with os.fdopen(fd, "rb") as handle:
            stat = os.fstat(handle.fileno())
            if not (stat.st_mode & 0o170000 == 0o100000):
                raise BadImage("not a regular file")
            if stat.st_size == 0:
                raise BadImage("empty file (0 bytes)")
            return decode_image(handle, self.size, self.config.channels, self.config.max_image_pixels)

    def describe(self) -> dict[str, Any]:
        shown = self.source.path if self.roots is not None else str(self.root)
        return {"type": "folder", "path": shown, "captions": self.captions_name, "format": self.format}


# ------------------------------------------------------------------------------------------------ idx

MAX_IDX_BYTES = 2 << 30
_IDX_IMAGES = "-images-idx3-ubyte"


def read_idx(handle: Any, name: str, ndim: int, limit: int = MAX_IDX_BYTES) -> np.ndarray:
    """An IDX array of unsigned bytes (magic 0x00 0x00 0x08 ndim, big-endian int32 dims, then the data)."""
    header = handle.read(4)
    if len(header) != 4 or header[:3] != b"\x00\x00\x08" or header[3] != ndim:
        raise ValueError(f"{name}: not an IDX file of {ndim}-d unsigned bytes (bad magic number)")
    dims = np.frombuffer(handle.read(4 * ndim), dtype=">i4")
    if len(dims) != ndim or (dims <= 0).any():
        raise ValueError(f"{name}: bad IDX dimensions {dims.tolist()}")
    count = int(np.prod(dims.astype(np.int64)))
    if count > limit:
        raise ValueError(f"{name}: {count} bytes of data, over the {limit} bound")
    data = handle.read(count)
    if len(data) != count:
        raise ValueError(f"{name}: truncated ({len(data)} of {count} bytes)")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims.tolist())


class _IdxSource(_Source):
    """Every `<prefix>-images-idx3-ubyte[.gz]` + `<prefix>-labels-idx1-ubyte[.gz]` pair of a folder; image
    names are `<prefix>:<index>`, captions `DigitsDataset`'s templates over the label names."""

    def __init__(
        self, source: IdxImageSource, config: PrepareImagesConfig, size: int, roots: PathRoots | None
    ) -> None:
        import gzip

        from mmdlm.data.images import DIGITS, TEMPLATES

        self.source, self.size, self.channels = source, size, config.channels
        if roots is not None:
            root = roots.folder(source.path, "source.path")
        else:
            root = Path(source.path).expanduser().resolve()
            if not root.is_dir():
                raise ValueError(f"source.path: {root} is not a folder")
        self.names = list(source.label_names or DIGITS)
        self.templates = list(source.templates or TEMPLATES)
        files = sorted(p.name for p in root.iterdir() if p.is_file())
        pairs = []
        for name in files:
            stem = name[: -len(".gz")] if name.endswith(".gz") else name
            if stem.endswith(_IDX_IMAGES):
                prefix = stem[: -len(_IDX_IMAGES)]
                labels = next((f for f in (f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels-idx1-ubyte.gz")
                               if f in files), None)  # fmt: skip
                if labels is None:
                    raise ValueError(f"source.path: {name} has no {prefix}-labels-idx1-ubyte[.gz] beside it")
                pairs.append((prefix, name, labels))
        if not pairs:
            raise ValueError("source.path: the folder holds no <prefix>-images-idx3-ubyte[.gz] file")

        def load(name: str, ndim: int, budget: int) -> np.ndarray:
            try:
                fd = open_confined(root / name, roots, "source.path")
            except (PathNotAllowed, OSError):
                raise ValueError(f"source.path: {name} cannot be read") from None
            with os.fdopen(fd, "rb") as raw:
                handle = gzip.GzipFile(fileobj=raw) if name.endswith(".gz") else raw
                try:
                    return read_idx(handle, name, ndim, budget)
                except (OSError, EOFError) as exc:
                    raise ValueError(f"{name}: cannot be decompressed ({exc})") from None

        self.prefixes: list[str] = []
        images, labels = [], []
        budget = MAX_IDX_BYTES
        for prefix, image_file, label_file in pairs:
            pixels, classes = load(image_file, 3, budget), load(label_file, 1, budget)
            budget -= pixels.nbytes
            if len(pixels) != len(classes):
                raise ValueError(
                    f"{image_file}: {len(pixels)} images but {label_file} has {len(classes)} labels"
                )
            if classes.size and int(classes.max()) >= len(self.names):
                raise ValueError(
                    f"{label_file}: label {int(classes.max())} has no name; give source.label_names "
                    f"({len(self.names)} given)"
                )
            self.prefixes.append(prefix)
            images.append(pixels)
            labels.append(classes)
        self.images, self.labels = images, labels
        self.files = [f for _, a, b in pairs for f in (a, b)]

    def entries(self) -> list[_Entry]:
        out = []
        for prefix, classes in zip(self.prefixes, self.labels, strict=True):
            split = "test" if prefix == self.source.test_prefix else None
            for i, y in enumerate(classes.tolist()):
                text = self.templates[i % len(self.templates)].format(self.names[y])
                out.append(_Entry(f"{prefix}:{i}", [text], int(y), split))
        return out

    def read(self, index: int, entry: _Entry) -> np.ndarray:
        prefix, _, i = entry.name.rpartition(":")
        pixels = self.images[self.prefixes.index(prefix)][int(i)]
        if pixels.shape == (self.size, self.size) and self.channels == 1:
            return pixels[None].copy()
        from PIL import Image

        return to_pixels(Image.fromarray(np.ascontiguousarray(pixels)), self.size, self.channels)

    def describe(self) -> dict[str, Any]:
        test = self.source.test_prefix if self.source.test_prefix in self.prefixes else None
        return {"type": "idx", "path": self.source.path, "files": self.files,
                "images": int(sum(len(c) for c in self.labels)), "test_split": test}  # fmt: skip

    def label_names(self) -> list[str] | None:
        return self.names
