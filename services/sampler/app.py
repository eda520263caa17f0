"""The sampler service: `mmdlm serve-sampler` runs `create_app` under uvicorn (one process: the model
cache and the micro-batcher live in it).

    GET  /healthz /readyz /metrics     liveness; database + object store; Prometheus
    GET  /v1/sampler/models            what is loaded (cache state)
    POST /v1/generate                  samples of one model, every family and mode
    POST /v1/generate/stream           the same, with intermediate denoising states as server-sent events
    POST /v1/completions               OpenAI-compatible completions (+ diffusion settings as extra fields)
    POST /v1/embed                     sentence embeddings of a small batch

The gateway proxies these routes under its own auth; the sampler checks the same bearer tokens itself,
so it is never an open door when reached directly. Handlers are `async` and do no blocking work: model
loads and request resolution run in the threadpool, sampling in the service's compute thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from anyio import to_thread
from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

import mmdlm
from services.common.auth import Principal, TokenCache, hash_token, user_for_token
from services.common.db import Database
from services.common.http_errors import (
    error_body,
    install_common,
    validation_response,
)
from services.common.paths import resolve_model_refs, user_roots
from services.common.settings import Settings, get_settings
from services.common.store import open_store
from services.sampler.completions import build_jobs, complete_response, stream_completion, stream_states
from services.sampler.schemas import (
    CompletionRequest,
    CompletionResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    RequestError,
    StreamRequest,
)
from services.sampler.service import SamplerService
from services.sampler.settings import SamplerSettings, get_sampler_settings

logger = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def get_service(request: Request) -> SamplerService:
    return request.app.state.sampler


ServiceDep = Annotated[SamplerService, Depends(get_service)]


def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The same bearer tokens as the gateway (the sampler reads the token table itself)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing bearer token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    tokens: TokenCache = request.app.state.tokens
    service: SamplerService = request.app.state.sampler
    key = hash_token(credentials.credentials)
    principal = tokens.get(key)
    if principal is None:
        with service.db.session() as session:
            user = user_for_token(session, credentials.credentials)
            if user is None:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED, "invalid, expired or revoked token",
                    headers={"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
            principal = Principal(id=user.id, name=user.name)
        tokens.put(key, principal)
    return principal


UserDep = Annotated[Principal, Depends(current_user)]


def create_app(settings: Settings | None = None, config: SamplerSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    config = config or get_sampler_settings()
    # As the gateway (services.common.db): no per-checkout ping (connections are recycled instead), and
    # the threadpool capped at the pool size so that no thread waits for (or churns) a connection.
    db = Database(settings.database_url, pool_size=settings.db_pool_size, pre_ping=False)
    service = SamplerService(settings, config, db, open_store(settings))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        to_thread.current_default_thread_limiter().total_tokens = db.pool_size
        logger.info("mmdlm sampler ready on %s: cache %d bytes, batching %s (window %.1f ms, %d rows)",
                    service.device, config.cache_bytes, config.batching, config.batch_window_ms,
                    config.max_batch_rows)  # fmt: skip
        yield
        await service.batcher.close()
        service.close()
        service.db.engine.dispose()

    app = FastAPI(
        title="MM-DLM sampler", version=mmdlm.__version__, lifespan=lifespan,
        description="Generation (every family and mode), OpenAI-compatible completions and embeddings.",
    )  # fmt: skip
    app.state.sampler = service
    app.state.tokens = TokenCache(settings.token_cache_s)
    _install_errors(app)
    _install_metrics(app, service)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        checks = {}
        ok = True
        for name, probe in (("database", lambda: _ping(service.db)), ("store", service.store.check)):
            try:
                probe()
                checks[name] = {"ok": True}
            except Exception as exc:
                ok = False
                checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        body = {"status": "ok" if ok else "unavailable", "checks": checks, "device": str(service.device)}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/sampler/models")
    async def loaded_models(user: UserDep, svc: ServiceDep) -> dict[str, object]:
        """Models in this sampler's memory (yours only) and the cache's state."""
        mine = [m.describe() for m in svc.models.values() if m.owner_id == user.id]
        return {"data": mine, "cache": svc.models.stats(), "batching": {
            "enabled": svc.config.batching, "window_ms": svc.config.batch_window_ms,
            "max_rows": svc.config.max_batch_rows, "batches": svc.batcher.batches, "requests": svc.batcher.requests}}  # fmt: skip

    @app.post("/v1/generate", response_model=GenerateResponse)
    async def generate(body: GenerateRequest, user: UserDep, svc: ServiceDep) -> GenerateResponse:
        """Samples of a model; returns texts (+ ids, latents), seed, steps, NFE and tokens/s."""
        return await svc.generate(user.id, body)

    @app.post("/v1/generate/stream", response_class=StreamingResponse)
    async def generate_stream(body: StreamRequest, user: UserDep, svc: ServiceDep) -> StreamingResponse:
        """Server-sent events: `state` (partly denoised samples, masked positions as `_`) every
        `stream_every` steps, then `result` (the /v1/generate response)."""
        model, job = await svc.prepare(user.id, body)
        total = job.params.steps if model.kind != "ar" else job.seq_len
        every = body.stream_every or max(1, -(-total // svc.config.stream_max_states))
        if -(-total // every) > svc.config.stream_max_states:
            raise RequestError(
                "stream_every", f"{every} sends {-(-total // every)} states; at most {svc.config.stream_max_states} "
                "(MMDLM_SAMPLER_STREAM_MAX_STATES)",
            )  # fmt: skip
        return StreamingResponse(
            stream_states(svc, model, job, body, every), media_type="text/event-stream", headers=SSE_HEADERS
        )

    @app.post("/v1/completions", response_model=None)
    async def completions(
        body: CompletionRequest, user: UserDep, svc: ServiceDep
    ) -> CompletionResponse | StreamingResponse:
        """OpenAI-compatible completions; `stream: true` answers with `data: {...}` events and `data: [DONE]`."""
        import asyncio

        model = await run_in_threadpool(svc.load, user.id, body.model)
        jobs = await run_in_threadpool(build_jobs, svc, model, body)
        if body.stream:
            return StreamingResponse(
                stream_completion(body, jobs, svc), media_type="text/event-stream", headers=SSE_HEADERS
            )
        results = await asyncio.gather(*(svc.submit(pj.model, pj.job) for pj in jobs))
        return complete_response(body, jobs, list(results), svc)

    @app.post("/v1/embed", response_model=EmbedResponse)
    async def embed(body: EmbedRequest, user: UserDep, svc: ServiceDep) -> EmbedResponse:
        """Sentence embeddings (413 past MMDLM_SAMPLER_EMBED_MAX_BATCH texts, 422 past
        MMDLM_SAMPLER_EMBED_MAX_CHARS characters in one text)."""
        # a local encoder.model folder must lie in the caller's data roots (FieldError -> 422)
        body = resolve_model_refs(body, user_roots(svc.settings, user.name))  # type: ignore[assignment]
        return await svc.embed(body)

    return app


def _ping(db: Database) -> None:
    with db.session() as s:
        s.execute(text("SELECT 1"))


def _install_errors(app: FastAPI) -> None:
    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_response(exc.errors(), exc.body, [])

    async def on_request_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestError)
        return JSONResponse(exc.body(), status_code=exc.status)

    async def on_value_error(request: Request, exc: Exception) -> JSONResponse:
        # the library refused something the resolver let through: still the caller's input, say what
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(error_body(str(exc)), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(RequestError, on_request_error)
    install_common(app, "sampler")
    app.add_exception_handler(ValueError, on_value_error)


def _install_metrics(app: FastAPI, service: SamplerService) -> None:
    known = {"/v1/generate", "/v1/generate/stream", "/v1/completions", "/v1/embed", "/v1/sampler/models"}

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        path = request.url.path
        if path in known:
            service.metrics.requests.labels(path, str(response.status_code)).inc()
            service.metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response
