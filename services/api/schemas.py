"""Pydantic models at the edge of the API: `JobCreate` (built from the kind registry), and the
`*Public` families the handlers return. ORM rows never leave the API directly."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from services.common.kinds import JobKind
from services.common.models import Artifact, Job, JobEvent


class JobOptions(BaseModel):
    """Options of a submission that are not part of the spec; they sit next to the spec fields."""

    priority: int = Field(default=0, ge=-100, le=100, description="higher runs first within a queue")
    max_attempts: int | None = Field(
        default=None, ge=1, le=100, description="default: MMDLM_DEFAULT_MAX_ATTEMPTS"
    )


def job_create_type(kinds: dict[str, JobKind]) -> Any:
    """The request body of POST /v1/jobs: a union discriminated by `kind` over the registered specs,
    each extended with the job options (`priority`, `max_attempts`)."""
    models = []
    for kind in kinds.values():
        models.append(
            create_model(
                f"{kind.spec.__name__}Request",
                __base__=kind.spec,
                __doc__=kind.description or kind.spec.__doc__,
                priority=(int, JobOptions.model_fields["priority"]),
                max_attempts=(int | None, JobOptions.model_fields["max_attempts"]),
            )
        )
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="kind")]  # noqa: UP007


_OPTIONS = frozenset(JobOptions.model_fields)


def split_options(body: BaseModel) -> tuple[BaseModel, dict[str, Any], JobOptions]:
    """The validated request (an instance of its kind's spec class: `job_create_type` subclasses it),
    the spec as stored (JSON, without the options) and the options."""
    data = body.model_dump(mode="json", exclude=_OPTIONS)
    options = JobOptions.model_construct(priority=body.priority, max_attempts=body.max_attempts)  # type: ignore[attr-defined]
    return body, data, options


class Progress(BaseModel):
    step: int | None = None
    total: int | None = None
    message: str | None = None


JOB_EXAMPLE: dict[str, Any] = {
    "id": "3b8f0c2a9d1e4f5a8b7c6d5e4f3a2b1c", "kind": "train", "queue": "train", "status": "running",
    "priority": 5, "attempt": 1, "max_attempts": 3, "cancel_requested": False,
    "progress": {"step": 120, "total": 200, "message": "step 120/200"}, "error": None, "worker": "train@host-1",
    "spec": {"kind": "train", "dataset": "0f8e5c1d2b3a4e6f8a9b0c1d2e3f4a5b", "steps": 200},
    "artifacts": [], "created_at": "2026-01-01T10:00:00Z", "started_at": "2026-01-01T10:00:01Z",
    "finished_at": None, "updated_at": "2026-01-01T10:02:00Z", "heartbeat_at": "2026-01-01T10:02:00Z",
}  # fmt: skip
ARTIFACT_EXAMPLE: dict[str, Any] = {
    "id": "0f8e5c1d2b3a4e6f8a9b0c1d2e3f4a5b", "kind": "dataset", "name": "dataset",
    "producer_job_id": "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d", "uri": "artifacts/9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d/dataset/",
    "sha256": "5" * 64, "bytes": 1048576, "metadata": {"layout": "directory", "seq_len": 128},
    "files": [{"path": "manifest.json", "sha256": "5" * 64, "bytes": 2048}], "created_at": "2026-01-01T10:00:00Z",
}  # fmt: skip


class JobPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: str
    kind: str
    queue: str
    status: str
    priority: int
    attempt: int
    max_attempts: int
    cancel_requested: bool
    progress: Progress
    error: str | None
    worker: str | None = Field(description="lease owner of the current/last attempt")
    spec: dict[str, Any]
    artifacts: list[str] = Field(default_factory=list, description="ids of the artifacts this job produced")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    heartbeat_at: datetime | None

    @classmethod
    def of(cls, job: Job, artifacts: list[str] | None = None) -> JobPublic:
        return cls(
            id=job.id, kind=job.kind, queue=job.queue, status=job.status, priority=job.priority,
            attempt=job.attempt, max_attempts=job.max_attempts, cancel_requested=job.cancel_requested,
            progress=Progress(step=job.progress_step, total=job.progress_total, message=job.progress_message),
            error=job.error, worker=job.lease_owner, spec=job.spec, artifacts=artifacts or [],
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            updated_at=job.updated_at, heartbeat_at=job.heartbeat_at,
        )  # fmt: skip


class JobsPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [JOB_EXAMPLE], "count": 1, "limit": 50, "offset": 0}]}
    )

    data: list[JobPublic]
    count: int = Field(description="total matching jobs (all pages)")
    limit: int
    offset: int


class ArtifactFile(BaseModel):
    path: str
    sha256: str
    bytes: int


class ArtifactPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ARTIFACT_EXAMPLE]})

    id: str
    kind: str
    name: str
    producer_job_id: str | None
    uri: str
    sha256: str
    bytes: int
    metadata: dict[str, Any]
    files: list[ArtifactFile]
    created_at: datetime

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactPublic:
        meta = dict(artifact.meta or {})
        files = [ArtifactFile(**f) for f in meta.pop("files", [])]
        return cls(
            id=artifact.id, kind=artifact.kind, name=artifact.name, producer_job_id=artifact.producer_job_id,
            uri=artifact.uri, sha256=artifact.sha256, bytes=artifact.bytes, metadata=meta, files=files,
            created_at=artifact.created_at,
        )  # fmt: skip


class ArtifactsPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [ARTIFACT_EXAMPLE], "count": 1, "limit": 50, "offset": 0}]}
    )

    data: list[ArtifactPublic]
    count: int
    limit: int
    offset: int


class MetricSeries(BaseModel):
    steps: list[int]
    values: list[float | None]
    count: int = Field(default=0, description="points stored for this name (from `since_step`)")
    downsampled: bool = Field(default=False, description="`steps` is a subset that keeps the extremes")


class MetricsPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": JOB_EXAMPLE["id"], "max_points": None,
        "series": {"loss": {"steps": [10, 20], "values": [5.1, 4.7], "count": 2, "downsampled": False}}}]})  # fmt: skip

    job_id: str
    series: dict[str, MetricSeries] = Field(description="metric name -> columns, ordered by step")
    max_points: int | None = Field(default=None, description="the points asked for per series, if any")


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    type: str
    data: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, event: JobEvent) -> EventPublic:
        return cls(id=event.id, type=event.type, data=event.data, created_at=event.created_at)


class KindPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "train", "queue": "train", "description": "Train a model ...", "spec_schema": {"type": "object"},
        "limits": {"max_procs": 8, "max_nodes": 1, "max_tokens": 10**12}}]})  # fmt: skip

    name: str
    queue: str
    description: str
    spec_schema: dict[str, Any]
    limits: dict[str, Any] = Field(
        default_factory=dict, description="this deployment's quotas for the kind (a job past one is refused)"
    )


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --- dashboard views: system, dataset manifest ------------------------------------------------------------

SYSTEM_EXAMPLE: dict[str, Any] = {
    "versions": {"mmdlm": "0.1.0", "python": "3.12.3", "torch": "2.5.1", "fastapi": "0.120.0"},
    "backends": {"database": "postgresql", "broker": "redis", "store": "s3"},
    "queues": [{"name": "train", "queued": 2, "retrying": 0, "running": 1}],
    "running_jobs": 1, "you": {"queued": 1, "retrying": 0, "running": 1}, "window_s": 3600,
    "workers": [{"name": "host-1:4242", "last_seen": "2026-01-01T10:02:00Z", "running": 1, "jobs": 3}],
}  # fmt: skip


class QueueState(BaseModel):
    name: str
    queued: int
    retrying: int
    running: int


class WorkerSeen(BaseModel):
    name: str = Field(description="host:pid of the worker process (from its job leases)")
    last_seen: datetime = Field(description="its newest job heartbeat")
    running: int = Field(description="jobs it holds now")
    jobs: int = Field(description="jobs it heartbeated within the window")


class SystemPublic(BaseModel):
    """Aggregates over every user's jobs (counts and worker names only: no job of another user)."""

    model_config = ConfigDict(json_schema_extra={"examples": [SYSTEM_EXAMPLE]})

    versions: dict[str, str | None]
    backends: dict[str, str]
    queues: list[QueueState]
    running_jobs: int
    you: dict[str, int] = Field(description="the caller's own waiting and running jobs")
    window_s: int = Field(description="workers seen = a job heartbeat within this many seconds")
    workers: list[WorkerSeen]


MANIFEST_EXAMPLE: dict[str, Any] = {
    "artifact_id": ARTIFACT_EXAMPLE["id"], "kind": "dataset", "format": "mmdlm.tokens/v1", "seq_len": 128,
    "tokenizer": {"kind": "bpe", "name": "bpe-2048", "vocab_size": 2048},
    "splits": {"train": {"documents": 900, "tokens": 250000, "rows": 1950, "shards": 1}},
    "latent": None, "source": {"type": "bundled"}, "manifest": {"format": "mmdlm.tokens/v1"},
}  # fmt: skip


class LatentStatsPublic(BaseModel):
    split: str
    count: int
    mean_norm: float | None
    mean: list[float | None]
    std: list[float | None]


class LatentView(BaseModel):
    dim: int
    role: str | None
    encoder: dict[str, Any]
    unit_norm: bool | None
    stats: LatentStatsPublic | None


class SplitView(BaseModel):
    documents: int | None = None
    tokens: int | None = None
    rows: int | None = None
    shards: int | None = None


class ManifestPublic(BaseModel):
    """What a datasets page shows of an artifact's manifest.json."""

    model_config = ConfigDict(json_schema_extra={"examples": [MANIFEST_EXAMPLE]})

    artifact_id: str
    kind: str
    format: str | None
    seq_len: int | None
    tokenizer: dict[str, Any] | None
    splits: dict[str, SplitView]
    latent: LatentView | None
    source: dict[str, Any] | None
    manifest: dict[str, Any] = Field(description="manifest.json without its per-file and per-shard lists")
