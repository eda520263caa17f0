"""`PrepareImagesConfig`: what the `prepare-images` job turns into an `image-dataset` artifact.

The REST spec of `kind: prepare-images` subclasses this model, so it stays importable without torch,
Pillow or transformers. Every size is bounded: a spec cannot ask a worker for more memory or disk than
`MAX_DATASET_BYTES` of pixels. A bare string source (`source: digits`) is shorthand for `{type: ...}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from mmdlm.config.base import StrictModel

MAX_RESOLUTION = 512
MAX_CAPTION_LEN = 256
MAX_IMAGES = 2_000_000
MAX_DATASET_BYTES = 8 * 2**30
"""Upper bound of the uint8 pixels one dataset may hold (rows x channels x resolution^2)."""
DEFAULT_FOLDER_RESOLUTION = 32


class ImageFolderSource(StrictModel):
    """A local folder of images with a captions file inside it.

    captions: path of the captions file relative to `path` (default: `captions.jsonl`, else
    `captions.json`). `.jsonl`: one `{"file": ..., "caption": ..., "label"?: ...}` per line (`label` a
    string or an integer class). `.json`: COCO-style `{"images": [{"id", "file_name"}], "annotations":
    [{"image_id", "caption"}]}`. Image files are named relative to `path` and must stay inside it.
    """

    type: Literal["folder"] = "folder"
    path: str = Field(min_length=1, max_length=4096)
    captions: str | None = Field(default=None, min_length=1, max_length=1024)
    format: Literal["auto", "jsonl", "coco"] = "auto"
    """`auto`: by the captions file's suffix (`.jsonl` or `.json`)."""


class DigitsImageSource(StrictModel):
    """scikit-learn's bundled 8x8 digits (1,797 images, 17 grey levels), captioned from their labels
    ("a handwritten seven"), offline."""

    type: Literal["digits"] = "digits"


class IdxImageSource(StrictModel):
    """A local folder of MNIST-format IDX files (`<prefix>-images-idx3-ubyte` + `<prefix>-labels-idx1-ubyte`,
    optionally `.gz`), as MNIST, Fashion-MNIST or KMNIST are distributed; every pair in the folder is read
    and captioned from its labels. The pair named `test_prefix` (the official `t10k` test set) is kept as
    the `test` split as published, so results compare with the literature's; the other pairs are split
    into train and validation by hash like any source."""

    type: Literal["idx"] = "idx"
    path: str = Field(min_length=1, max_length=4096)
    test_prefix: str | None = Field(default="t10k", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """Prefix of the files that form the `test` split as they are; null: pool them with the rest."""
    label_names: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, min_length=1, max_length=1000
    )
    """Caption word(s) of each class id; default: the digit names for ten classes ("zero" ... "nine")."""
    templates: list[Annotated[str, Field(min_length=2, max_length=200)]] | None = Field(
        default=None, min_length=1, max_length=16
    )
    """Caption templates, each with one `{}` for the label name, used in turn by image index; default the
    digits' ("a handwritten {}", "the digit {}", ...)."""

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, templates: list[str] | None) -> list[str] | None:
        for template in templates or []:
            rest = template.replace("{}", "")
            if template.count("{}") != 1 or "{" in rest or "}" in rest:
                raise ValueError(f"template {template!r} must hold exactly one '{{}}' and no other braces")
        return templates


ImageSourceConfig = Annotated[
    ImageFolderSource | DigitsImageSource | IdxImageSource, Field(discriminator="type")
]


class PrepareImagesConfig(StrictModel):
    """Source, pixel layout, caption tokenizer and split of an `image-dataset`.

    resolution: side S of the square images; each image is resized so its shorter side is S (bicubic),
      then centre-cropped to S x S. None: the source's own size (digits 8, idx 28; a folder 32).
    channels: 1 (Pillow mode L) or 3 (RGB); every image is converted, whatever its mode.
    caption_len: token positions per caption, [BOS] and [EOS] included (longer captions are cut).
    validation_fraction / test_fraction: share of IMAGES held out, chosen by a seeded hash of the image's
      name, so every caption of an image lands in the same split and the choice ignores file order.
    on_bad_image: `skip` reports an unreadable, truncated, empty, oversized or unconvertible image by
      name in the manifest's `skipped`; `refuse` fails the job naming them.
    max_captions_per_image: rows per image when the captions file gives several (COCO gives five).
    """

    source: ImageSourceConfig = Field(default_factory=DigitsImageSource)
    resolution: int | None = Field(default=None, ge=4, le=MAX_RESOLUTION)
    channels: Literal[1, 3] = 1
    caption_len: int = Field(default=16, ge=4, le=MAX_CAPTION_LEN)
    validation_fraction: float = Field(default=0.1, gt=0.0, le=0.5)
    test_fraction: float = Field(default=0.0, ge=0.0, le=0.5)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    on_bad_image: Literal["skip", "refuse"] = "skip"
    max_images: int = Field(default=100_000, ge=2, le=MAX_IMAGES)
    """Images read from the source at most (in captions-file order)."""
    max_captions_per_image: int = Field(default=1, ge=1, le=10)
    max_image_pixels: int = Field(default=50_000_000, ge=1, le=500_000_000)
    """An image with more pixels (width x height) than this is skipped as oversized (decompression bombs)."""
    lowercase: bool = True
    """Caption tokenizer: lowercase the captions before splitting them into words."""
    min_word_frequency: int = Field(default=1, ge=1, le=1_000_000)
    max_vocab: int = Field(default=16_384, ge=16, le=262_144)
    """Caption words kept (the most frequent in the train split); the rest become [UNK]."""

    @field_validator("source", mode="before")
    @classmethod
    def _accept_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _bounded(self) -> PrepareImagesConfig:
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"validation_fraction + test_fraction = {self.validation_fraction + self.test_fraction:g} "
                "leaves too little for train; keep the sum below 0.9"
            )
        size = self.resolved_resolution()
        total = self.max_images * self.max_captions_per_image * self.channels * size * size
        if total > MAX_DATASET_BYTES:
            raise ValueError(
                f"max_images ({self.max_images}) x max_captions_per_image ({self.max_captions_per_image}) x "
                f"channels ({self.channels}) x resolution^2 ({size}^2) = {total:.3g} bytes of pixels, over the "
                f"{MAX_DATASET_BYTES:.3g} bound; lower max_images or resolution"
            )
        return self

    def resolved_resolution(self) -> int:
        """`resolution`, or the source's own size when unset."""
        if self.resolution is not None:
            return self.resolution
        if isinstance(self.source, DigitsImageSource):
            return 8
        return 28 if isinstance(self.source, IdxImageSource) else DEFAULT_FOLDER_RESOLUTION
