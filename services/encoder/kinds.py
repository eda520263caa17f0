"""Job kinds of the `encode` queue. Imported by the API as well: keep it free of torch/tokenizers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mmdlm.config.data import PrepareDataConfig
from mmdlm.config.images import PrepareImagesConfig
from services.common.kinds import JobKind, register
from services.common.paths import check_user_paths

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from services.common.auth import Principal


class PrepareDataSpec(PrepareDataConfig):
    """`kind: prepare-data` + the fields of `PrepareDataConfig` (source, tokenizer, seq_len, ...)."""

    kind: Literal["prepare-data"] = "prepare-data"

    def to_config(self) -> PrepareDataConfig:
        return PrepareDataConfig.model_validate(self.model_dump(exclude={"kind"}))


def check(spec: PrepareDataSpec, session: Session | None, user: Principal) -> None:  # noqa: ARG001
    """A folder source (or a local tokenizer or dataset folder) must lie in the user's data roots (no
    database query: `check_on_loop`)."""
    check_user_paths(spec, user.name)


PREPARE_DATA = register(
    JobKind(
        name="prepare-data",
        spec=PrepareDataSpec,
        queue="encode",
        runner="services.encoder.prepare:run",
        check=check,  # type: ignore[arg-type]
        check_on_loop=True,
        # prepare_dataset raises these for bad input (empty source, bad JSONL, missing folder or corpus package):
        # trying again cannot help.
        permanent_errors=(ValueError, FileNotFoundError, NotADirectoryError, ModuleNotFoundError),
        description="Tokenize a corpus into a `dataset` artifact (token shards + tokenizer + manifest).",
    )
)


class PrepareImagesSpec(PrepareImagesConfig):
    """`kind: prepare-images` + the fields of `PrepareImagesConfig` (source, resolution, channels, ...)."""

    kind: Literal["prepare-images"] = "prepare-images"

    def to_config(self) -> PrepareImagesConfig:
        return PrepareImagesConfig.model_validate(self.model_dump(exclude={"kind"}))


PREPARE_IMAGES = register(
    JobKind(
        name="prepare-images",
        spec=PrepareImagesSpec,
        queue="encode",
        runner="services.encoder.prepare:run_images",
        check=check,  # type: ignore[arg-type]
        check_on_loop=True,
        # bad captions files, too few images, `on_bad_image: refuse`, a missing sklearn: retrying cannot help
        permanent_errors=(ValueError, FileNotFoundError, NotADirectoryError, ModuleNotFoundError),
        description=(
            "Turn a folder of captioned images (JSONL or COCO captions; any size or mode, resized and centre-"
            "cropped), a folder of MNIST-format IDX files, or the bundled digits into an `image-dataset` artifact (uint8 pixels, caption tokenizer, "
            "manifest with checksums and the bad images skipped by name)."
        ),
    )
)

# `encode` and `encode-shard` (services/encoder/encode_kinds.py) and `clusters`
# (services/encoder/clusters_kinds.py) register with the same import.
from services.encoder import clusters_kinds as _clusters_kinds  # noqa: E402, F401
from services.encoder import encode_kinds as _encode_kinds  # noqa: E402, F401
