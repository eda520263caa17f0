"""The gateway application. `create_app(settings)` builds everything from settings (tests make several
apps in one process); uvicorn runs it as a factory: `uvicorn --factory services.api.main:create_app`.

Handlers that touch the database or the store are plain `def` (FastAPI runs them in its threadpool);
the only `async def` handlers do no blocking I/O.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

import mmdlm
from services.api.fastpath import FastPath
from services.api.observability import MetricsMiddleware
from services.api.routes import artifacts, events, generate, health, job_priority, jobs, models
from services.api.routes import kinds as kinds_routes
from services.api.routes import metrics as metrics_routes
from services.api.routes import system as system_routes
from services.api.routes import ui as ui_routes
from services.api.schemas import job_create_type
from services.api.state import AppState
from services.common import http_errors as errors
from services.common.db import Database
from services.common.kinds import load_kinds
from services.common.migrate import upgrade
from services.common.queue import create_celery
from services.common.settings import Settings, get_settings
from services.common.store import StoreError, open_store

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.should_auto_migrate:
        upgrade(settings.database_url)
    kinds = load_kinds(settings.kind_modules)
    state = AppState(
        settings=settings,
        db=Database(
            settings.database_url, pool_size=settings.db_pool_size, echo=settings.db_echo, pre_ping=False
        ),  # no per-request ping: connections are recycled (services.common.db)
        store=open_store(settings),
        celery=create_celery(settings),
        kinds=kinds,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.size_threadpool()
        try:
            state.store.check()
        except StoreError as exc:
            logger.error("object store not usable yet: %s (/readyz reports it)", exc)
        logger.info("mmdlm API ready: kinds %s, store %s", ", ".join(sorted(kinds)), state.store.describe())
        yield
        await generate.close_client(app)
        await state.reads.close()
        await to_thread.run_sync(state.wakeups.close)
        state.celery.close()
        state.db.engine.dispose()

    app = FastAPI(
        title="MM-DLM",
        version=mmdlm.__version__,
        description="Submit and track diffusion-LM jobs (prepare-data, encode, clusters, train, sample, evaluate).",
        lifespan=lifespan,
    )
    app.state.mmdlm = state
    job_create = job_create_type(kinds)
    app.add_middleware(FastPath, job_create=job_create)  # first added: innermost, inside the edge checks
    errors.install(app)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    # every route declares the one error schema (services.common.http_errors.ErrorResponse) for its errors
    app.include_router(health.router, responses=errors.responses(422, 500))
    v1 = errors.responses(*errors.COMMON)
    app.include_router(jobs.build_router(job_create), responses=v1)
    app.include_router(job_priority.router, responses=v1)
    app.include_router(events.router, responses=v1)
    app.include_router(metrics_routes.router, responses=v1)
    app.include_router(artifacts.router, responses=v1)
    app.include_router(kinds_routes.router, responses=v1)
    app.include_router(generate.router, responses=v1)
    app.include_router(models.router, responses=v1)
    app.include_router(system_routes.router, responses=v1)
    app.include_router(ui_routes.router)  # the dashboard at /ui: static files, data from /v1
    return app
