"""API tokens: `mmdlm_<random>` shown once at creation; only its sha256 is stored.

A sha256 lookup (not a slow password hash) is right here: tokens are 256-bit random secrets, so there
is nothing to brute-force, and every request must authenticate in well under a millisecond.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.common.models import ApiToken, User, utcnow

PREFIX = "mmdlm_"


@dataclass(frozen=True)
class Principal:
    """An authenticated user as a plain value (cacheable, no live session): what handlers and the
    kinds' `check` functions receive as `user`."""

    id: int
    name: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def get_or_create_user(session: Session, name: str) -> User:
    name = name.strip()
    if not name or len(name) > 64:
        raise ValueError("user name must be 1-64 characters")
    user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
    if user is None:
        user = User(name=name, created_at=utcnow())
        session.add(user)
        session.flush()
    return user


def create_token(
    session: Session, user_name: str, *, token_name: str = "", ttl_days: float | None = None
) -> tuple[User, str]:
    """Create (or reuse) the user and a new token for them; returns the plain token (shown once)."""
    user = get_or_create_user(session, user_name)
    token = PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        ApiToken(
            user_id=user.id,
            name=token_name[:64],
            token_hash=hash_token(token),
            prefix=token[: len(PREFIX) + 4],
            created_at=now,
            expires_at=now + timedelta(days=ttl_days) if ttl_days else None,
        )
    )
    session.flush()
    return user, token


def user_for_token(session: Session, token: str, now: datetime | None = None) -> User | None:
    """The user a token belongs to, or None if it is unknown, revoked or expired."""
    if not token.startswith(PREFIX):
        return None
    now = now or utcnow()
    row = session.execute(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return row.user


def revoke_tokens(session: Session, user_name: str) -> int | None:
    """Revoke every live token of the user; the count, or None when there is no such user.

    Only the database changes: an API process that cached a token (`MMDLM_TOKEN_CACHE_S`) refuses it
    once that entry expires, so revocation holds everywhere within the cache time."""
    user = session.execute(select(User).where(User.name == user_name)).scalar_one_or_none()
    if user is None:
        return None
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class TokenCache:
    """token hash -> Principal for `ttl_s` seconds: most requests then authenticate without a query.
    A revoked token keeps working for at most `ttl_s` (MMDLM_TOKEN_CACHE_S; 0 disables the cache)."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        if self.ttl_s <= 0:
            return None
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl_s, principal)
