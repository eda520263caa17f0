"""Dependencies: the app state, a DB session per request, the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from services.api.state import AppState
from services.common.auth import Principal, hash_token, user_for_token

_bearer = HTTPBearer(auto_error=False, description="`mmdlm token create --user NAME` prints a token")


def get_state(request: Request) -> AppState:
    return request.app.state.mmdlm


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    """A read-only (autocommit) session; handlers that write open their own transaction."""
    with state.db.reader() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def current_user(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller of a /v1 route. A cached token costs no query and no thread hop; a miss is looked
    up in the threadpool (no blocking I/O in the event loop)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = credentials.credentials
    key = hash_token(token)
    principal = state.tokens.get(key)
    if principal is None:
        principal = await run_in_threadpool(_lookup, state, token)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid, expired or revoked token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        state.tokens.put(key, principal)
    return principal


def _lookup(state: AppState, token: str) -> Principal | None:
    with state.db.reader() as session:
        user = user_for_token(session, token)
        return None if user is None else Principal(id=user.id, name=user.name)


CurrentUser = Annotated[Principal, Depends(current_user)]
