"""/v1/kinds: the job kinds this deployment accepts, with the JSON schema of each spec and its limits
(operator quotas a submission is checked against; `sample` also carries the sampler's per-request limits)."""

from __future__ import annotations

from fastapi import APIRouter

from services.api.deps import CurrentUser, StateDep
from services.api.schemas import KindPublic

router = APIRouter(prefix="/v1/kinds", tags=["kinds"])


@router.get("", response_model=list[KindPublic])
def list_kinds(_: CurrentUser, state: StateDep) -> list[KindPublic]:
    return [
        KindPublic(
            name=k.name,
            queue=k.queue,
            description=k.description,
            spec_schema=k.spec.model_json_schema(),
            limits=dict(k.extra),
        )
        for k in sorted(state.kinds.values(), key=lambda k: k.name)
    ]
