"""Dependencies: the app state, a DB session per request, the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.api.state import AppState
from services.common.auth import Principal, hash_token, user_for_token

_bearer = HTTPBearer(auto_error=False, description="`mmdlm token create --user NAME` prints a token")


def get_state(request: Request) -> AppState:
    return request.app.state.mmdlm


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def current_user(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
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
        with state.db.session() as session:
            user = user_for_token(session, token)
            if user is None:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "invalid, expired or revoked token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            principal = Principal(id=user.id, name=user.name)
        state.tokens.put(key, principal)
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]
