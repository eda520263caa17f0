"""Error responses: every 4xx names what is wrong, and a 422 names the field.

Shape: {"detail": "<field>: <message>[; ...]", "errors": [{"field", "message", "type"}]}. Tags of
discriminated unions (`prepare-data`, `folder`) that pydantic puts in error locations are removed, so
the field reads as the user wrote it: `source.path`, not `body.prepare-data.source.folder.path`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.common.errors import FieldError
from services.common.store import StoreError, StoreUnavailableError

logger = logging.getLogger(__name__)

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
    if kind == "extra_forbidden":
        return "", "unknown field (not part of this job kind's spec)"
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
    return JSONResponse(
        {"detail": detail, "errors": items}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )


def install(app: FastAPI) -> None:
    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        state = getattr(request.app.state, "mmdlm", None)
        kinds = sorted(state.kinds) if state is not None else []
        return validation_response(exc.errors(), exc.body, kinds)

    async def on_field_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FieldError)
        return JSONResponse(
            {
                "detail": str(exc),
                "errors": [{"field": exc.field, "message": exc.message, "type": "reference"}],
            },
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    async def on_store_error(_: Request, exc: Exception) -> JSONResponse:
        code = 503 if isinstance(exc, StoreUnavailableError) else 502
        logger.warning("object store error: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=code)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(FieldError, on_field_error)
    app.add_exception_handler(StoreError, on_store_error)
    app.add_exception_handler(Exception, on_unexpected)
