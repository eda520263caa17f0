"""Job kind `clusters` (queue `encode`): token clusters for HDLM as a `clusters` artifact, so an HDLM `train`
job (`model.clusters: <artifact id>`) needs nothing outside the platform. Imported by the API through
`services.encoder.kinds`: keep it free of torch.

    {"kind": "clusters", "dataset": "<dataset artifact>", "num_clusters": 64}
    {"kind": "clusters", "model": "<model artifact>", "num_clusters": 64, "metric": "cosine"}

`dataset`: cluster the dataset tokenizer's ids by the offline MiniLM encoder's input embeddings (the library
default, `mmdlm.clusters.embeddings_from_encoder`); `model`: by that checkpoint's own input embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from mmdlm.config.base import StrictModel
from services.common.crud import require_artifact
from services.common.errors import FieldError
from services.common.kinds import JobKind, register
from services.trainer.kinds import LATENT_FAMILIES

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from services.common.auth import Principal


class ClustersSpec(StrictModel):
    """`kind: clusters`: exactly one source (`dataset` or `model`) plus the k-means settings."""

    kind: Literal["clusters"] = "clusters"
    dataset: str | None = Field(None, min_length=1, max_length=64)
    """Id of a `dataset` artifact: its tokenizer's ids are clustered by MiniLM input embeddings."""
    model: str | None = Field(None, min_length=1, max_length=64)
    """Id of a token-family `model` artifact: its tokenizer's ids are clustered by its input embeddings."""
    num_clusters: int = Field(64, ge=2)
    """Clusters C; at most the vocabulary size minus [MASK] (checked at submit when the artifact records
    its vocabulary size, else when the job runs)."""
    metric: Literal["euclidean", "cosine"] = "euclidean"
    seed: int = Field(42, ge=0)
    """k-means++ seed: the same spec on the same artifact gives the same clusters."""

    @model_validator(mode="after")
    def _one_source(self) -> ClustersSpec:
        if (self.dataset is None) == (self.model is None):
            raise ValueError("give exactly one source: dataset or model (an artifact id)")
        return self

    @property
    def source(self) -> tuple[str, str]:
        """(field, artifact id) of the source; the field is also the artifact kind."""
        return ("dataset", self.dataset) if self.dataset is not None else ("model", str(self.model))


def max_clusters(vocab_size: int) -> int:
    """Every id but [MASK] gets a cluster and no cluster is empty."""
    return vocab_size - 1


def check_num_clusters(num_clusters: int, vocab_size: int) -> None:
    """FieldError("num_clusters") when the vocabulary cannot fill `num_clusters` clusters."""
    if num_clusters > max_clusters(vocab_size):
        raise FieldError(
            "num_clusters",
            f"{num_clusters} clusters for a vocabulary of {vocab_size} ids ({max_clusters(vocab_size)} "
            f"without [MASK]); choose at most {max_clusters(vocab_size)}",
        )


def check(spec: ClustersSpec, session: Session, user: Principal) -> None:
    """Refuse at submit a missing/foreign/wrong-kind source, a latent model, or too many clusters."""
    field, artifact_id = spec.source
    artifact = require_artifact(session, user, artifact_id, field=field, kind=field)
    metadata: dict[str, Any] = artifact.meta or {}
    if field == "model" and metadata.get("family") in LATENT_FAMILIES:
        raise FieldError(
            "model", f"artifact {artifact_id!r} is a {metadata['family']!r} model, which has no token "
            "embeddings; give a token-family model (mdlm, gidd, hdlm, ar) or a dataset"
        )  # fmt: skip
    vocab_size = (metadata.get("tokenizer") or {}).get("vocab_size")
    if isinstance(vocab_size, int):
        check_num_clusters(spec.num_clusters, vocab_size)


CLUSTERS = register(
    JobKind(
        name="clusters",
        spec=ClustersSpec,
        queue="encode",
        runner="services.encoder.clusters:run",
        check=check,  # type: ignore[arg-type]
        # bad input (too many clusters for the vocabulary, a model without token embeddings or tokenizer,
        # a missing encoder package): trying again cannot help
        permanent_errors=(ValueError, KeyError, FileNotFoundError, ModuleNotFoundError),
        description="Cluster a tokenizer's ids for HDLM (size-constrained k-means over the MiniLM input "
        "embeddings of a `dataset`'s tokenizer, or a `model`'s own input embeddings) into a `clusters` "
        "artifact for `train` jobs' `model.clusters`.",
    )
)
