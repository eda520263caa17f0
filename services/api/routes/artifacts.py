"""/v1/artifacts: list, read, download one file (presigned redirect on S3, streamed otherwise), and the
summary of a dataset's manifest.json that the dashboard's datasets page shows."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from mmdlm.config.base import INT64_MAX
from services.api.deps import CurrentUser, SessionDep, StateDep
from services.api.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    LatentStatsPublic,
    LatentView,
    ManifestPublic,
    SplitView,
)
from services.common import crud
from services.common.http_errors import responses

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get("", response_model=ArtifactsPublic)
def list_artifacts(
    user: CurrentUser,
    session: SessionDep,
    job_id: Annotated[str | None, Query(max_length=32)] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
) -> ArtifactsPublic:
    rows, total = crud.list_artifacts(session, user.id, job_id=job_id, kind=kind, limit=limit, offset=offset)
    return ArtifactsPublic(data=[ArtifactPublic.of(a) for a in rows], count=total, limit=limit, offset=offset)


@router.get("/{artifact_id}", response_model=ArtifactPublic, responses=responses(404))
def get_artifact(artifact_id: str, user: CurrentUser, session: SessionDep) -> ArtifactPublic:
    artifact = crud.get_artifact(session, artifact_id, user.id)
    if artifact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "artifact not found")
    return ArtifactPublic.of(artifact)


@router.get(
    "/{artifact_id}/download",
    response_model=None,
    responses={
        200: {"description": "the file's bytes", "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}, "example": "<bytes>"}}},
        307: {"description": "S3: redirect to a presigned URL of the file"},
        **responses(404, 502),
    },
)  # fmt: skip
def download_artifact(
    artifact_id: str,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    path: Annotated[
        str | None, Query(max_length=4096, description="file inside a directory artifact, e.g. manifest.json")
    ] = None,
    redirect: Annotated[
        bool, Query(description="S3: answer 307 to a presigned URL instead of proxying")
    ] = True,
) -> StreamingResponse | RedirectResponse:
    """One file of an artifact. Directory artifacts need `path` (see the artifact's `files`)."""
    artifact = crud.get_artifact(session, artifact_id, user.id)
    if artifact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "artifact not found")
    files = {f["path"]: f for f in artifact.meta.get("files", [])}
    layout = artifact.meta.get("layout", "directory")
    if path is None:
        if layout != "file":
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"path: required for a directory artifact; one of {', '.join(sorted(files)[:20])}",
            )
        path = next(iter(files))
    record = files.get(path)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"path: artifact {artifact_id} has no file {path!r}")
    base = artifact.uri if layout == "directory" else artifact.uri.rsplit("/", 1)[0] + "/"
    key = base + path
    filename = path.rsplit("/", 1)[-1]
    if redirect:
        url = state.store.presigned_url(key, state.settings.presign_expiry_s, filename=filename)
        if url is not None:
            return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    chunks = state.store.iter_chunks(key)
    first = next(chunks, b"")  # surface a missing object / dead store as an error before streaming starts

    def body():  # noqa: ANN202
        yield first
        yield from chunks

    return StreamingResponse(
        iterate_in_threadpool(body()),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(record["bytes"]),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Checksum-Sha256": record["sha256"],
        },
    )


MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
"""A manifest lists every shard; past this the view refuses instead of holding it all in memory."""


@router.get("/{artifact_id}/manifest", response_model=ManifestPublic, responses=responses(404, 502))
def get_manifest(artifact_id: str, user: CurrentUser, session: SessionDep, state: StateDep) -> ManifestPublic:
    """A dataset's manifest.json summed up: documents, tokens and rows per split, tokenizer; for a latent
    dataset also its dim, encoder and train-split statistics. Any artifact with a manifest.json works."""
    artifact = crud.get_artifact(session, artifact_id, user.id)
    if artifact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "artifact not found")
    meta = artifact.meta or {}
    record = next((f for f in meta.get("files", []) if f["path"] == MANIFEST), None)
    if meta.get("layout", "directory") != "directory" or record is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"artifact_id: artifact {artifact_id} has no {MANIFEST}"
        )
    if record["bytes"] > MAX_MANIFEST_BYTES:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"artifact_id: its {MANIFEST} is {record['bytes']} bytes, over the {MAX_MANIFEST_BYTES} this view reads",
        )
    try:
        manifest = json.loads(state.store.get_bytes(artifact.uri + MANIFEST))
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, f"artifact {artifact_id}: {MANIFEST} is not a JSON object"
        )
    return summarize_manifest(artifact.id, artifact.kind, manifest)


def summarize_manifest(artifact_id: str, kind: str, manifest: dict[str, Any]) -> ManifestPublic:
    """The fields a datasets page shows; the rest of the manifest without its file and shard lists."""
    splits = {
        name: SplitView(
            documents=split.get("documents"),
            tokens=split.get("tokens"),
            rows=split.get("rows"),
            shards=len(split["shards"]) if isinstance(split.get("shards"), list) else None,
        )  # fmt: skip
        for name, split in (manifest.get("splits") or {}).items()
        if isinstance(split, dict)
    }
    tokenizer = manifest.get("tokenizer")
    if isinstance(tokenizer, dict):
        tokenizer = {k: tokenizer.get(k) for k in ("kind", "name", "vocab_size")}
    latent = None
    if "dim" in manifest:
        normalization = manifest.get("normalization") or {}
        stats = normalization.get("stats")
        latent = LatentView(
            dim=int(manifest["dim"]), role=manifest.get("role"), encoder=manifest.get("encoder") or {},
            unit_norm=normalization.get("unit_norm"),
            stats=None if not isinstance(stats, dict) else LatentStatsPublic(
                split=str(stats.get("split", "train")), count=int(stats.get("count", 0)),
                mean_norm=_finite(stats.get("mean_norm")), mean=[_finite(v) for v in stats.get("mean", [])],
                std=[_finite(v) for v in stats.get("std", [])],
            ),
        )  # fmt: skip
    return ManifestPublic(
        artifact_id=artifact_id, kind=kind, format=manifest.get("format"), seq_len=manifest.get("seq_len"),
        tokenizer=tokenizer if isinstance(tokenizer, dict) else None, splits=splits, latent=latent,
        source=manifest.get("source") if isinstance(manifest.get("source"), dict) else None,
        manifest=_without_lists(manifest),
    )  # fmt: skip


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _without_lists(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest minus `files`/`shards` lists (they can hold thousands of entries) and the latent
    statistics vectors (already in `latent.stats`)."""
    out: dict[str, Any] = {}
    for key, value in manifest.items():
        if key in ("files", "shards", "extra_files", "mean", "std"):
            continue
        out[key] = _without_lists(value) if isinstance(value, dict) else value
    return out
