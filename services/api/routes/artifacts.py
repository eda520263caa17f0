"""/v1/artifacts: list, read, download one file (presigned redirect on S3, streamed otherwise)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from mmdlm.config.base import INT64_MAX
from services.api.deps import CurrentUser, SessionDep, StateDep
from services.api.schemas import ArtifactPublic, ArtifactsPublic
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
