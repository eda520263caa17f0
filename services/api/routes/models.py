"""/v1/models: your trained `model` artifacts with their latest evaluations (OpenAI's list shape plus
MM-DLM fields), one model with every evaluation, and a comparison table across models.

Evaluations are the `evaluation` artifacts of `kind: evaluate` jobs; their metadata carries the metric
summary and, per metric group, the protocol fields two results must share (`services.sampler.protocols`).
The table compares a group across models only when those protocols are equal, and otherwise names the
fields that differ instead of comparing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from mmdlm.config.base import INT64_MAX
from services.api.deps import CurrentUser, SessionDep
from services.common import crud
from services.common.http_errors import responses
from services.common.models import Artifact
from services.sampler.protocols import compare_groups, metric_group, order_metrics

router = APIRouter(prefix="/v1/models", tags=["models"])
MAX_COMPARE = 20
MAX_EVALUATIONS = 5000  # newest evaluation artifacts read to attach to a page of models


class EvaluationPublic(BaseModel):
    id: str = Field(description="the `evaluation` artifact")
    job_id: str | None
    created_at: datetime
    dataset: str | None
    summary: dict[str, float]
    protocols: dict[str, Any]

    @classmethod
    def of(cls, artifact: Artifact) -> EvaluationPublic:
        meta = artifact.meta or {}
        return cls(
            id=artifact.id, job_id=artifact.producer_job_id, created_at=artifact.created_at,
            dataset=meta.get("dataset"), summary=meta.get("summary") or {}, protocols=meta.get("protocols") or {},
        )  # fmt: skip


_MODEL_EXAMPLE: dict[str, Any] = {
    "id": "0f8e5c1d2b3a4e6f8a9b0c1d2e3f4a5b", "object": "model", "created": 1767261600, "owned_by": "alice",
    "family": "mdlm", "job_id": "3b8f0c2a9d1e4f5a8b7c6d5e4f3a2b1c", "trained": {"family": "mdlm", "step": 200},
    "evaluations": 1, "latest_evaluation": {
        "id": "7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f", "job_id": "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
        "created_at": "2026-01-01T11:00:00Z", "dataset": "5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f",
        "summary": {"val_ppl": 41.2, "gen_ppl": 88.0}, "protocols": {"nll": {"split": "validation"}}},
}  # fmt: skip


class ModelPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_MODEL_EXAMPLE]})

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    family: str | None
    job_id: str | None
    trained: dict[str, Any] = Field(
        description="step, tokens seen, dataset, ... as the trainer recorded them"
    )
    evaluations: int
    latest_evaluation: EvaluationPublic | None
    all_evaluations: list[EvaluationPublic] | None = None


class ModelsPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"object": "list", "data": [_MODEL_EXAMPLE], "count": 1}]}
    )

    object: Literal["list"] = "list"
    data: list[ModelPublic]
    count: int


class CompareRow(BaseModel):
    model: str
    family: str | None
    evaluation: str | None
    values: dict[str, float | None]
    not_comparable: dict[str, list[str]] = Field(
        default_factory=dict, description="metric -> protocol fields that differ from the other models"
    )


class CompareTable(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "columns": ["val_ppl"], "comparable": True,
        "rows": [{"model": _MODEL_EXAMPLE["id"], "family": "mdlm", "evaluation": "7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f",
                  "values": {"val_ppl": 41.2}, "not_comparable": {}}],
        "groups": {"nll": {"comparable": True, "protocol": {"split": "validation"}}},
    }]})  # fmt: skip

    columns: list[str]
    rows: list[CompareRow]
    groups: dict[str, dict[str, Any]] = Field(
        description="per metric group: comparable, the shared protocol or the mismatching fields per model"
    )
    comparable: bool = Field(description="every group present is measured under one protocol")


def _evaluations(
    session: Session, owner_id: int, model_ids: list[str] | None = None
) -> dict[str, list[Artifact]]:
    """model id -> its evaluation artifacts, newest first."""
    query = select(Artifact).where(Artifact.owner_id == owner_id, Artifact.kind == "evaluation")
    rows = session.execute(query.order_by(Artifact.created_at.desc()).limit(MAX_EVALUATIONS)).scalars()
    out: dict[str, list[Artifact]] = {}
    for row in rows:
        model = (row.meta or {}).get("model")
        if model and (model_ids is None or model in model_ids):
            out.setdefault(model, []).append(row)
    return out


def _public(model: Artifact, owner: str, evaluations: list[Artifact], every: bool = False) -> ModelPublic:
    meta = dict(model.meta or {})
    meta.pop("files", None)
    meta.pop("layout", None)
    meta.pop("checksum", None)
    return ModelPublic(
        id=model.id, created=int(model.created_at.timestamp()), owned_by=owner, family=meta.get("family"),
        job_id=model.producer_job_id, trained=meta, evaluations=len(evaluations),
        latest_evaluation=EvaluationPublic.of(evaluations[0]) if evaluations else None,
        all_evaluations=[EvaluationPublic.of(e) for e in evaluations] if every else None,
    )  # fmt: skip


@router.get("", response_model=ModelsPublic)
def list_models(
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
) -> ModelsPublic:
    """Your `model` artifacts, newest first, each with its latest evaluation's summary and protocols."""
    models, total = crud.list_artifacts(session, user.id, kind="model", limit=limit, offset=offset)
    evaluations = _evaluations(session, user.id, [m.id for m in models])
    return ModelsPublic(data=[_public(m, user.name, evaluations.get(m.id, [])) for m in models], count=total)


@router.get("/compare", response_model=CompareTable, responses=responses(404))
def compare_models(
    user: CurrentUser,
    session: SessionDep,
    ids: Annotated[
        list[str], Query(max_length=MAX_COMPARE, description="model ids, comma-separated or repeated")
    ],
) -> CompareTable:
    """One table of the models' latest evaluations. A metric group (nll, generative, sweep, t2l, l2t, sts)
    is comparable only if every model measured it under the same protocol; otherwise `groups[g]
    .mismatches` names each differing field with every model's value, and the rows flag those metrics."""
    wanted = list(dict.fromkeys(part.strip() for item in ids for part in item.split(",") if part.strip()))
    if not wanted or len(wanted) > MAX_COMPARE:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"ids: give 1 to {MAX_COMPARE} model ids, got {len(wanted)}",
        )
    models = {}
    for model_id in wanted:
        artifact = crud.get_artifact(session, model_id, user.id)
        if artifact is None or artifact.kind != "model":
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"ids: no model {model_id!r} (see GET /v1/models)")
        models[model_id] = artifact
    evaluations = _evaluations(session, user.id, wanted)
    latest = {m: (evaluations.get(m) or [None])[0] for m in wanted}
    protocols = {m: (e.meta or {}).get("protocols") if e is not None else None for m, e in latest.items()}
    groups = compare_groups(protocols)
    columns = order_metrics(
        {k for e in latest.values() if e is not None for k in (e.meta or {}).get("summary", {})}
    )
    rows = []
    for model_id in wanted:
        evaluation = latest[model_id]
        summary = (evaluation.meta or {}).get("summary", {}) if evaluation is not None else {}
        flags = {}
        for column in columns:
            mismatches = groups.get(metric_group(column), {}).get("mismatches")
            if column in summary and mismatches:
                flags[column] = sorted(mismatches)
        rows.append(
            CompareRow(
                model=model_id,
                family=(models[model_id].meta or {}).get("family"),
                evaluation=evaluation.id if evaluation is not None else None,
                values={c: summary.get(c) for c in columns},
                not_comparable=flags,
            )  # fmt: skip
        )
    comparable = all(g["comparable"] for g in groups.values()) if groups else False
    return CompareTable(columns=columns, rows=rows, groups=groups, comparable=comparable)


@router.get("/{model_id}", response_model=ModelPublic, responses=responses(404))
def get_model(model_id: str, user: CurrentUser, session: SessionDep) -> ModelPublic:
    """One model with every evaluation, newest first."""
    artifact = crud.get_artifact(session, model_id, user.id)
    if artifact is None or artifact.kind != "model":
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {model_id!r}")
    evaluations = _evaluations(session, user.id, [model_id]).get(model_id, [])
    return _public(artifact, user.name, evaluations, every=True)
