"""Bearer tokens of the HTTP API: created once, shown once, kept only as SHA-256.

A token is 256 random bits, so a plain SHA-256 (no salt, no slow hash) is enough: the
hash cannot be reversed, and it makes the lookup one indexed query.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker.db.integration import ApiToken
from worker.db.models import utcnow

TOKEN_PREFIX = "mt_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class TokenError(ValueError):
    """A token name that is invalid, taken or unknown."""


@dataclass(frozen=True)
class TokenInfo:
    name: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(sessions: sessionmaker[Session], name: str) -> str:
    """A new token for ``name`` (a revoked name may be reused); the only time it is seen."""
    if not _NAME.match(name):
        raise TokenError("a token name is 1-64 letters, digits, '.', '_', '@' or '-'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with sessions.begin() as s:
        row = s.get(ApiToken, name)
        if row is not None and row.revoked_at is None:
            raise TokenError(f"a token named {name!r} exists; revoke it first")
        if row is None:
            s.add(ApiToken(name=name, token_sha256=token_sha256(token)))
        else:
            row.token_sha256, row.created_at, row.revoked_at = token_sha256(token), utcnow(), None
    return token


def revoke_token(sessions: sessionmaker[Session], name: str) -> None:
    with sessions.begin() as s:
        row = s.get(ApiToken, name)
        if row is None or row.revoked_at is not None:
            raise TokenError(f"no active token named {name!r}")
        row.revoked_at = utcnow()


def list_tokens(sessions: sessionmaker[Session]) -> list[TokenInfo]:
    with sessions() as s:
        rows = s.execute(select(ApiToken).order_by(ApiToken.name)).scalars()
        return [TokenInfo(r.name, r.created_at, r.revoked_at) for r in rows]


def verify_token(sessions: sessionmaker[Session], token: str) -> str | None:
    """The name of the active token, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
        return None
    with sessions() as s:
        return s.execute(
            select(ApiToken.name).where(ApiToken.token_sha256 == token_sha256(token),
                                        ApiToken.revoked_at.is_(None))
        ).scalar_one_or_none()
