"""Job kinds `encode` and `encode-shard` (queue `encode`). Imported by the API through
`services.encoder.kinds`: keep it free of torch.

    {"kind": "encode", "dataset": "<dataset artifact>", "encoder": {"name": "minilm"}, "shard_rows": 4096}
    {"kind": "encode", "texts": ["a sentence", "another one", ...], "seq_len": 64}

An `encode` job plans the source's shards (`mmdlm.data.latent.plan_shards`) and creates one `encode-shard`
job per `shards_per_task` shards. Any number of encode workers claim those (each claim is a lease on the
shard job's row, so exactly one worker runs a task at a time); the parent job works through them too, then
assembles, verifies and publishes the `latent-dataset` once. Users never submit `encode-shard` themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from mmdlm.config.base import StrictModel
from mmdlm.config.latent import EncodeConfig
from services.common.crud import require_artifact
from services.common.errors import FieldError
from services.common.kinds import JobKind, register
from services.common.paths import check_user_paths

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from services.common.auth import Principal

MAX_TEXT_CHARS = 100_000
MIN_TASK_ROWS = 2048


class EncodeSpec(EncodeConfig):
    """`kind: encode`: the fields of `EncodeConfig` (encoder recipe, role, shard_rows, max_rows; tokenizer and
    seq_len for texts) plus the source: a `dataset` artifact, or `texts` sent with the job (prepared into a
    `dataset` first, published as this job's `source` artifact, with one document per text)."""

    kind: Literal["encode"] = "encode"
    dataset: str | None = Field(None, min_length=1, max_length=64)
    """Id of a `dataset` artifact (see POST /v1/jobs kind prepare-data)."""
    texts: list[str] | None = Field(None, min_length=2)
    """Texts to encode (one document each); for large corpora prepare a dataset first."""
    shards_per_task: int | None = Field(None, ge=1, le=100_000)
    """Shards per `encode-shard` task: the unit a worker claims (a crash redoes at most its unfinished shards).
    None: enough shards for about MIN_TASK_ROWS rows, since every task pays a fixed set-up (claim, source
    checks, tokenizer load: a few hundred ms)."""

    @field_validator("texts")
    @classmethod
    def _texts(cls, texts: list[str] | None) -> list[str] | None:
        if texts is None:
            return None
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"texts[{i}] is empty")
            if len(text) > MAX_TEXT_CHARS:
                raise ValueError(f"texts[{i}] has {len(text)} characters; at most {MAX_TEXT_CHARS}")
        return texts

    @model_validator(mode="after")
    def _one_source(self) -> EncodeSpec:
        if (self.dataset is None) == (self.texts is None):
            raise ValueError("give exactly one source: dataset (an artifact id) or texts")
        return self

    def task_shards(self) -> int:
        return self.shards_per_task or max(1, -(-MIN_TASK_ROWS // self.shard_rows))

    def encode_config(self) -> EncodeConfig:
        return EncodeConfig.model_validate(self.model_dump(include=set(EncodeConfig.model_fields)))


class EncodeShardSpec(StrictModel):
    """`kind: encode-shard`: shards [shard_start, shard_stop) of an `encode` job (created by it)."""

    kind: Literal["encode-shard"] = "encode-shard"
    parent: str = Field(min_length=1, max_length=32)
    source: str = Field(min_length=1, max_length=64)
    shard_start: int = Field(ge=0)
    shard_stop: int = Field(ge=1)
    shards_total: int = Field(ge=1)
    config: EncodeConfig


def check_encode(spec: EncodeSpec, session: Session, user: Principal) -> None:
    check_user_paths(spec, user.name)  # a local encoder or tokenizer folder: in the user's data roots
    if spec.dataset is not None:
        require_artifact(session, user, spec.dataset, field="dataset", kind="dataset")


def check_shard(spec: EncodeShardSpec, session: Session, user: Principal) -> None:  # noqa: ARG001
    raise FieldError("kind", "encode-shard jobs are created by encode jobs; submit kind: encode")


ENCODE = register(
    JobKind(
        name="encode",
        spec=EncodeSpec,
        queue="encode",
        runner="services.encoder.encode:run",
        check=check_encode,  # type: ignore[arg-type]
        permanent_errors=(ValueError, FileNotFoundError, ModuleNotFoundError),
        description="Encode a `dataset` artifact (or texts) into a `latent-dataset` with a sentence-encoder "
        "recipe; shards run in parallel on every encode worker and are never redone once stored.",
    )
)

ENCODE_SHARD = register(
    JobKind(
        name="encode-shard",
        spec=EncodeShardSpec,
        queue="encode",
        runner="services.encoder.encode:run_shard",
        check=check_shard,  # type: ignore[arg-type]
        permanent_errors=(ValueError, FileNotFoundError, ModuleNotFoundError),
        description="Part of an `encode` job (created by it, not submitted).",
    )
)
