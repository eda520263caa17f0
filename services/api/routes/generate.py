"""The sampler's routes under the gateway's auth: /v1/generate, /v1/generate/stream, /v1/completions,
/v1/embed, /v1/sampler/models, proxied to `MMDLM_SAMPLER_URL` with httpx.

The gateway authenticates the caller first (401 here, before anything is forwarded), validates the body
against the sampler's own schemas (422 naming the field, same shape as every gateway error), then forwards
the request with its bearer token (the sampler checks it again: it is never an open door). Server-sent
event answers are streamed through chunk by chunk; everything else is passed back with its status.
"""

from __future__ import annotations

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from services.api.deps import CurrentUser, StateDep
from services.common.http_errors import error_body, responses
from services.sampler.schemas import (
    CompletionRequest,
    CompletionResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    StreamRequest,
)

router = APIRouter(tags=["generation"], responses=responses(404, 413, 502, 504, 507))
"""Past the sampler: 404 unknown/foreign model, 413 too many texts, 502/504 sampler failed or timed out
(503 when it is unreachable), 507 a model larger than its cache."""
SSE_EXAMPLE = 'event: state\ndata: {"step": 8, "total": 64, "samples": ["The ___ was"]}\n\nevent: result\ndata: {...}\n\n'
COMPLETION_SSE_EXAMPLE = (
    'data: {"id": "cmpl-1", "object": "text_completion", "choices": [...]}\n\ndata: [DONE]\n\n'
)

FORWARDED_HEADERS = ("authorization", "content-type", "accept", "last-event-id")


def _client(request: Request) -> httpx.AsyncClient:
    """One connection pool per app, made on first use (the gateway's event loop owns it)."""
    app: FastAPI = request.app
    client = getattr(app.state, "sampler_client", None)
    if client is None:
        settings = app.state.mmdlm.settings
        client = httpx.AsyncClient(
            base_url=settings.sampler_url.rstrip("/"),
            timeout=httpx.Timeout(settings.sampler_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        app.state.sampler_client = client
    return client


async def close_client(app: FastAPI) -> None:
    client = getattr(app.state, "sampler_client", None)
    if client is not None:
        await client.aclose()


async def proxy(request: Request, state: StateDep, path: str) -> Response:
    url = state.settings.sampler_url
    client = _client(request)
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
    upstream = client.build_request(request.method, path, content=await request.body(), headers=headers)
    try:
        response = await client.send(upstream, stream=True)
    except httpx.TimeoutException as exc:
        return JSONResponse(error_body(f"the sampler service at {url} did not answer in time: {exc}"), 504)
    except httpx.TransportError as exc:
        return JSONResponse(
            error_body(f"the sampler service at {url} (MMDLM_SAMPLER_URL) is unreachable: {exc}; "
                       "is `mmdlm serve-sampler` running?"),
            503,
        )  # fmt: skip
    media_type = response.headers.get("content-type", "application/json")
    if media_type.startswith("text/event-stream"):
        return StreamingResponse(
            response.aiter_raw(), status_code=response.status_code, media_type=media_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}, background=BackgroundTask(response.aclose),
        )  # fmt: skip
    try:
        content = await response.aread()
    finally:
        await response.aclose()
    return Response(content, status_code=response.status_code, media_type=media_type)


@router.post("/v1/generate", response_model=GenerateResponse)
async def generate(body: GenerateRequest, request: Request, _: CurrentUser, state: StateDep) -> Response:
    """Samples of a `model` artifact, any family and mode (unconditional, prefix, infill, l2t, t2l, joint;
    image models: t2i, i2t, joint with base64 PNG images and captions), with the sampling protocol, seed,
    steps, NFE and tokens/s (served by the sampler service)."""
    del body  # validated here, forwarded as sent
    return await proxy(request, state, "/v1/generate")


@router.post(
    "/v1/generate/stream",
    response_class=StreamingResponse,
    responses={200: {"description": "server-sent events: `state` ... then `result`", "content": {
        "text/event-stream": {"example": SSE_EXAMPLE}}}},
)  # fmt: skip
async def generate_stream(body: StreamRequest, request: Request, _: CurrentUser, state: StateDep) -> Response:
    """Server-sent events: `state` (partly denoised samples) every `stream_every` steps, then `result`."""
    del body
    return await proxy(request, state, "/v1/generate/stream")


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={200: {"description": "a completion; `stream: true`: server-sent events ending with `data: [DONE]`",
                     "content": {"text/event-stream": {"example": COMPLETION_SSE_EXAMPLE}}}},
)  # fmt: skip
async def completions(body: CompletionRequest, request: Request, _: CurrentUser, state: StateDep) -> Response:
    """OpenAI-compatible completions (`stream: true`: `data: {...}` events ending with `data: [DONE]`);
    diffusion settings (steps, sampler, min_p, float64, precision, ...) are extra fields."""
    del body
    return await proxy(request, state, "/v1/completions")


@router.post("/v1/embed", response_model=EmbedResponse)
async def embed(body: EmbedRequest, request: Request, _: CurrentUser, state: StateDep) -> Response:
    """Sentence embeddings of a small batch (413 past the sampler's batch limit, 422 past its text length)."""
    del body
    return await proxy(request, state, "/v1/embed")


@router.get(
    "/v1/sampler/models",
    responses={200: {"content": {"application/json": {"example": {
        "data": [{"id": "0f8e5c1d2b3a4e6f8a9b0c1d2e3f4a5b", "family": "mdlm", "bytes": 1048576}],
        "cache": {"bytes": 1048576, "capacity": 4294967296, "models": 1},
        "batching": {"enabled": True, "window_ms": 5.0, "max_rows": 64, "batches": 10, "requests": 12}}}}}},
)  # fmt: skip
async def sampler_models(request: Request, _: CurrentUser, state: StateDep) -> Response:
    """Your models loaded in the sampler's memory, and its cache and batching state."""
    return await proxy(request, state, "/v1/sampler/models")
