"""The two hottest requests in pure ASGI: a status read (`GET /v1/jobs/{id}`) and a submit (`POST /v1/jobs`).

Why: profiled under 50 clients (py-spy, GIL samples), FastAPI's routing, `Request` building, dependency
solving and exception wrapping were ~60% of a status read's CPU, and the read itself ~20%. This layer sits
inside the edge middleware (metrics, NUL refusal, body limit: services.common.http_errors.RejectNul) and in
front of the router, and answers only the ordinary case: a token found in the token cache, a job that
exists, a JSON body that validates and passes its kind's check. It calls the same functions as the FastAPI
handlers (`routes.jobs.read_job`, `prepare_submission`, `store_submission`), so the answer is the same.

Anything else is handed to the FastAPI app as it came (the body replayed): an unknown or uncached token, a
missing job, a body that is not JSON or does not validate, a failed check, a database error before the
insert. The app then answers it, so every error, its shape and the OpenAPI stay defined in one place (the
routes in `routes/jobs.py`, still declared there). The one answer given here besides success: a database
error during the insert is the same 503 + Retry-After the app gives (handing it on could store the job
twice).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.routes.jobs import prepare_submission, read_job, store_submission
from services.api.schemas import JobPublic
from services.api.state import AppState
from services.common.auth import Principal, hash_token
from services.common.http_errors import DB_ERRORS, db_unavailable

JOBS = "/v1/jobs"
STATUS = JOBS + "/{job_id}"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastPath:
    def __init__(self, app: ASGIApp, job_create: Any) -> None:
        self.app = app
        self.body = TypeAdapter(job_create)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = _route_path(scope)
            method = scope["method"]
            if method == "GET" and path.startswith(JOBS + "/"):
                job_id = path[len(JOBS) + 1 :]
                if job_id and "/" not in job_id and await self._status(scope, send, job_id):
                    return
            elif method == "POST" and path == JOBS:
                replay = await self._submit(scope, receive, send)
                if replay is None:
                    return
                receive = replay
        await self.app(scope, receive, send)

    async def _status(self, scope: Scope, send: Send, job_id: str) -> bool:
        state, user = _caller(scope)
        found = None
        if user is not None:
            try:
                found = await read_job(state, job_id, user.id)
            except Exception:  # the app reads again and answers (503 + Retry-After for a database error)
                found = None
        if found is None:
            state.metrics.fast_path.labels(STATUS, "handed_on").inc()
            return False
        scope["route"] = _STATUS_ROUTE
        await _send_json(send, 200, JobPublic.of(*found).model_dump_json().encode())
        state.metrics.fast_path.labels(STATUS, "answered").inc()
        return True

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """None when answered here; otherwise the `receive` that replays the body for the app."""
        state, user = _caller(scope)
        if user is None or not _is_json(scope):
            state.metrics.fast_path.labels(JOBS, "handed_on").inc()
            return receive
        chunks: list[bytes] = []
        while True:
            message = await receive()  # RejectNul's counted receive: a body past the limit raises -> 413
            if message["type"] != "http.request":  # the client left
                return _replay(None, receive, message)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            request = self.body.validate_python(json.loads(body), from_attributes=True)
            prepared = await prepare_submission(state, request, user)
        except Exception:  # invalid JSON or spec, a refused check: the app answers with its 4xx
            state.metrics.fast_path.labels(JOBS, "handed_on").inc()
            return _replay(body, receive)
        try:
            job = await store_submission(state, prepared)
        except DB_ERRORS as exc:
            response = db_unavailable(Request(scope), exc)
            await response(scope, receive, send)
            return None
        scope["route"] = _JOBS_ROUTE
        await _send_json(send, 201, JobPublic.of(job).model_dump_json().encode())
        state.metrics.fast_path.labels(JOBS, "answered").inc()
        return None


@dataclass(frozen=True)
class _Answered:
    """`scope["route"]` of a request answered here: its route template as `path`, all the metrics
    middleware reads (services.api.observability)."""

    path: str


_STATUS_ROUTE, _JOBS_ROUTE = _Answered(STATUS), _Answered(JOBS)


def _route_path(scope: Scope) -> str:
    """The path the router matches (Starlette's rule: without the root path it is mounted under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _caller(scope: Scope) -> tuple[AppState, Principal | None]:
    """The app state and the caller when its bearer token is in the token cache (as deps.BearerAuth)."""
    state: AppState = scope["app"].state.mmdlm
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                return state, state.tokens.get(hash_token(token))
            break
    return state, None


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def _replay(body: bytes | None, receive: Receive, last: Message | None = None) -> Receive:
    """A `receive` that hands the app the body already read (or `last`, e.g. a disconnect), then goes
    on with the connection's own `receive`."""
    pending: list[Message] = []
    if body is not None:
        pending.append({"type": "http.request", "body": body, "more_body": False})
    if last is not None:
        pending.append(last)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _send_json(send: Send, status_code: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
    await send({"type": "http.response.start", "status": status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
