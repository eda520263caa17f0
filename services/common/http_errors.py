"""Error responses: every 4xx/5xx has ONE shape (`ErrorResponse`), and a 422 names the field.

Shape: {"detail": "<field>: <message>[; ...]", "errors": [{"field", "message", "type"}]} for validation
errors, HTTP errors (401, 404, 409, 413, ...), the database or store being down (503 + Retry-After) and
the unexpected (500). Tags of discriminated unions (`prepare-data`, `folder`) that pydantic puts in
error locations are removed, so the field reads as the user wrote it: `source.path`, not
`body.prepare-data.source.folder.path`. `responses(...)` declares these in the OpenAPI.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

import psycopg
import sqlalchemy.exc
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import FieldError
from services.common.store import StoreError, StoreUnavailableError

logger = logging.getLogger(__name__)

DB_RETRY_AFTER_S = 5
"""Retry-After of a 503 while the database refuses connections or the pool is exhausted."""
DB_ERRORS = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError, psycopg.OperationalError)
"""Outage or exhaustion, not a bad request: PostgreSQL down/refusing, a dropped database, pool timeout."""


class ErrorItem(BaseModel):
    field: str = Field(description="dotted field name as the caller wrote it, e.g. `optimizer.lr`")
    message: str
    type: str = Field(description="pydantic error type, or http / reference / request / unavailable")


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer of the gateway and the sampler."""

    detail: str = Field(description="one line: `<field>: <message>[; ...]` or what went wrong")
    errors: list[ErrorItem] = Field(default_factory=list, description="one item per field at fault")


_DESCRIPTIONS = {
    400: "Malformed request: a body that cannot be parsed, a malformed header",
    401: "Missing, invalid, expired or revoked bearer token",
    403: "Not allowed",
    404: "Not found (or not yours)",
    409: "Conflict with the resource's current state",
    413: "Request too large",
    422: "Invalid input; `errors` names each field",
    500: "Internal error (see the server log)",
    502: "An upstream service (object store, sampler) failed",
    503: "A dependency (database, object store, sampler) is unavailable; retry after `Retry-After` seconds",
    504: "An upstream service did not answer in time",
    507: "The model does not fit the sampler's memory",
}
_EXAMPLES = {
    401: {"detail": "invalid, expired or revoked token", "errors": []},
    404: {"detail": "job not found", "errors": []},
    409: {"detail": "job already succeeded; nothing to cancel", "errors": []},
    422: {
        "detail": "optimizer.lr: Input should be a finite number",
        "errors": [{"field": "optimizer.lr", "message": "Input should be a finite number", "type": "finite_number"}],
    },
    503: {"detail": "database unavailable: retry later", "errors": [{"field": "database", "message": "connection refused", "type": "unavailable"}]},
}  # fmt: skip
COMMON = (400, 401, 422, 500, 503)
"""Declared on every /v1 route: malformed request (a body that is not even JSON), auth, validation (any
field, query or path value), internal, outage."""


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error codes, all with `ErrorResponse` and an example."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _DESCRIPTIONS.get(code, "Error")}
        example = _EXAMPLES.get(code)
        if example is not None:
            entry["content"] = {"application/json": {"example": example}}
        out[code] = entry
    return out


def error_body(detail: str, errors: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"detail": detail, "errors": list(errors)}


_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]-]*): (.+)$", re.S)


def http_error_body(detail: Any) -> dict[str, Any]:
    """An HTTPException's detail in the one shape; `"<field>: <message>"` details name their field."""
    text = detail if isinstance(detail, str) else str(detail)
    match = _FIELD_PREFIX.match(text)
    errors = [{"field": match[1], "message": match[2], "type": "http"}] if match else []
    return error_body(text, errors)


def db_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 + Retry-After: the request was fine, the database was not (down, dropped, pool exhausted)."""
    reason = "connection pool exhausted" if isinstance(exc, sqlalchemy.exc.TimeoutError) else "unreachable"
    logger.warning(
        "database %s on %s %s: %s",
        reason,
        request.method,
        request.url.path,
        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
    )
    return JSONResponse(
        error_body(
            f"database {reason}: the service cannot serve this request now; retry in {DB_RETRY_AFTER_S} s",
            [{"field": "database", "message": reason, "type": "unavailable"}],
        ),
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(DB_RETRY_AFTER_S)},
    )


class _TooLarge(Exception):
    """A request body went past the limit while it was being read."""


class RejectNul:
    """Pure ASGI middleware at the edge: a NUL in the path or a query value is a 422 naming the
    parameter, before routing reaches a handler or the database (PostgreSQL refuses NUL in text); a
    request body past `max_body_bytes` (declared, or counted while read) is a 413 in the one error shape.
    A string check per request; the slow path (which parameter?) runs only on a hit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        field = None
        if "\x00" in scope["path"]:
            field = self._path_field(scope)
        elif b"%00" in scope.get("query_string", b""):
            query = scope["query_string"].decode("latin-1")
            names = [k for k, v in parse_qsl(query, keep_blank_values=True) if "\x00" in k + v]
            field = f"query.{names[0]}" if names else "query"
        if field is not None:
            message = "must not contain NUL characters (\\u0000)"
            body = error_body(
                f"{field}: {message}", [{"field": field, "message": message, "type": "string_nul"}]
            )
            await JSONResponse(body, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)(scope, receive, send)
            return
        limit = self.max_body_bytes
        if limit is None or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(scope, receive, send, limit)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge(f"request body larger than {limit} bytes (MMDLM_MAX_BODY_BYTES)")
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send, limit)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        message = f"request body larger than {limit} bytes (MMDLM_MAX_BODY_BYTES)"
        body = error_body(f"body: {message}", [{"field": "body", "message": message, "type": "too_large"}])
        await JSONResponse(body, status_code=status.HTTP_413_CONTENT_TOO_LARGE)(scope, receive, send)

    def _path_field(self, scope: Scope) -> str:
        """The path parameter holding the NUL, found by matching the path against the route templates."""
        app = scope.get("app")
        paths = app.openapi().get("paths", {}) if isinstance(app, FastAPI) else {}
        for template in paths:
            match = compile_path(template)[0].match(scope["path"])
            if match is not None:
                for name, value in match.groupdict().items():
                    if "\x00" in value:
                        return name
        return "path"


_LOCATIONS = ("body", "query", "path", "header", "cookie")


def field_path(loc: Sequence[Any], body: Any) -> str:
    """Dotted field name from a pydantic error location, walking the input to drop union tags."""
    parts: list[str] = []
    node = body
    items = list(loc)
    if items and items[0] in _LOCATIONS:
        source = items.pop(0)
        if source != "body":
            node = None
    for item in items:
        if isinstance(node, dict):
            if item in node:
                node = node[item]
                parts.append(str(item))
            elif item in (node.get("kind"), node.get("type"), node.get("family")):
                continue  # a discriminator tag, not a field
            else:
                parts.append(str(item))
                node = None
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            node = node[item]
            parts.append(f"[{item}]")
        else:
            parts.append(str(item) if not isinstance(item, int) else f"[{item}]")
            node = None
    return ".".join(parts).replace(".[", "[") or "body"


def _message(error: dict[str, Any], known_kinds: Sequence[str]) -> tuple[str, str]:
    kind = error.get("type", "")
    msg = str(error.get("msg", "invalid"))
    if kind == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        tag, discriminator = ctx.get("tag"), str(ctx.get("discriminator", "'kind'")).strip("'")
        if discriminator != "kind":  # a nested union, e.g. model.family: the field is loc + discriminator
            return (
                f"+{discriminator}",
                f"unknown {discriminator} {tag!r}; expected one of {ctx.get('expected_tags')}",
            )
        return "kind", f"unknown job kind {tag!r}; expected one of {', '.join(known_kinds)}"
    if kind == "union_tag_not_found":
        field = (error.get("ctx") or {}).get("discriminator", "kind").strip("'")
        return field, f"missing; expected one of {', '.join(known_kinds)}" if field == "kind" else "missing"
    if kind == "json_invalid":
        return "body", f"invalid JSON: {(error.get('ctx') or {}).get('error', msg)}"
    if kind == "extra_forbidden":  # job specs, generate, completions, embed: name the field itself
        return "", f"unknown field {str((error.get('loc') or ('',))[-1])!r}"
    return "", msg


def validation_response(
    errors: Sequence[dict[str, Any]], body: Any, known_kinds: Sequence[str]
) -> JSONResponse:
    items = []
    for error in errors:
        field, message = _message(error, known_kinds)
        if field.startswith("+"):  # relative to the error's location
            field = f"{field_path(error.get('loc', ()), body)}.{field[1:]}"
        field = field or field_path(error.get("loc", ()), body)
        items.append({"field": field, "message": message, "type": error.get("type", "")})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in items)
    return JSONResponse(error_body(detail, items), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def install(app: FastAPI) -> None:
    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        state = getattr(request.app.state, "mmdlm", None)
        kinds = sorted(state.kinds) if state is not None else []
        return validation_response(exc.errors(), exc.body, kinds)

    async def on_field_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FieldError)
        return JSONResponse(
            error_body(str(exc), [{"field": exc.field, "message": exc.message, "type": "reference"}]),
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(FieldError, on_field_error)
    install_common(app, "gateway", app.state.mmdlm.settings.max_body_bytes)


def install_common(app: FastAPI, service: str, max_body_bytes: int | None = None) -> None:
    """What the gateway and the sampler share: HTTP errors in the one shape, the store or database being
    down (503 + Retry-After), the unexpected (500, logged), NUL refused in paths and query values, and
    (when given) the request body limit. `service` names the log a 500 points to."""

    async def on_store_error(_: Request, exc: Exception) -> JSONResponse:
        code = 503 if isinstance(exc, StoreUnavailableError) else 502
        logger.warning("object store error: %s", exc)
        headers = {"Retry-After": str(DB_RETRY_AFTER_S)} if code == 503 else None
        body = error_body(str(exc), [{"field": "store", "message": str(exc), "type": "unavailable"}])
        return JSONResponse(body, status_code=code, headers=headers)

    async def on_db_error(request: Request, exc: Exception) -> JSONResponse:
        return db_unavailable(request, exc)  # async: a sync handler would cost a threadpool hop

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(f"internal error; see the {service} log"), status_code=500)

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__ or exc.__context__, _TooLarge):  # FastAPI's 400 around our limit
            message = str(exc.__cause__ or exc.__context__)
            body = error_body(
                f"body: {message}", [{"field": "body", "message": message, "type": "too_large"}]
            )
            return JSONResponse(body, status_code=status.HTTP_413_CONTENT_TOO_LARGE)
        if exc.status_code < 400:  # e.g. a 304 raised on purpose: no body
            return JSONResponse(None, status_code=exc.status_code, headers=exc.headers)
        return JSONResponse(http_error_body(exc.detail), status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(StoreError, on_store_error)
    for exc_type in DB_ERRORS:
        app.add_exception_handler(exc_type, on_db_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_middleware(RejectNul, max_body_bytes=max_body_bytes)
