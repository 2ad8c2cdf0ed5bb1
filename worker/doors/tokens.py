"""Bearer tokens of the HTTP API: created once, shown once, kept only as SHA-256.

A token is 256 random bits, so a plain SHA-256 (no salt, no slow hash) is enough: the
hash cannot be reversed, and it makes the lookup one indexed query.

Each token has a scope (:class:`Scope`): ``submit`` (the default: a camera or a modality
submits images and reads only the jobs it submitted), ``read`` (a viewer reads every job,
submits none) or ``admin`` (both). Tokens made before scopes existed are ``admin``: they
keep the rights they had (migration 0006).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from worker.db.integration import ApiToken, JobOwner
from worker.db.models import utcnow

TOKEN_PREFIX = "mt_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class TokenError(ValueError):
    """A token name that is invalid, taken or unknown."""


class Scope(str, Enum):
    SUBMIT = "submit"
    READ = "read"
    ADMIN = "admin"

    @property
    def may_submit(self) -> bool:
        return self in (Scope.SUBMIT, Scope.ADMIN)

    @property
    def reads_every_job(self) -> bool:
        return self in (Scope.READ, Scope.ADMIN)


@dataclass(frozen=True)
class Caller:
    """Who a valid token belongs to, and what it may do."""

    name: str
    scope: Scope


@dataclass(frozen=True)
class TokenInfo:
    name: str
    created_at: datetime
    revoked_at: datetime | None
    scope: Scope = Scope.ADMIN

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(sessions: sessionmaker[Session], name: str, scope: Scope | str = Scope.SUBMIT) -> str:
    """A new token for ``name`` (a revoked name may be reused); the only time it is seen."""
    scope = Scope(scope)
    if not _NAME.match(name):
        raise TokenError("a token name is 1-64 letters, digits, '.', '_', '@' or '-'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with sessions.begin() as s:
        row = s.get(ApiToken, name)
        if row is not None and row.revoked_at is None:
            raise TokenError(f"a token named {name!r} exists; revoke it first")
        if row is None:
            s.add(ApiToken(name=name, token_sha256=token_sha256(token), scope=scope.value))
        else:
            row.token_sha256, row.created_at, row.revoked_at = token_sha256(token), utcnow(), None
            row.scope = scope.value
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
        return [TokenInfo(r.name, r.created_at, r.revoked_at, Scope(r.scope)) for r in rows]


def verify_caller(sessions: sessionmaker[Session], token: str) -> Caller | None:
    """Who holds this active token, with its scope; None for anything else."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
        return None
    with sessions() as s:
        row = s.execute(
            select(ApiToken.name, ApiToken.scope).where(ApiToken.token_sha256 == token_sha256(token),
                                                        ApiToken.revoked_at.is_(None))
        ).one_or_none()
    return Caller(row.name, Scope(row.scope)) if row is not None else None


def verify_token(sessions: sessionmaker[Session], token: str) -> str | None:
    """The name of the active token, or None."""
    caller = verify_caller(sessions, token)
    return caller.name if caller is not None else None


def record_owner(sessions: sessionmaker[Session], job_id: str, token_name: str) -> None:
    """``token_name`` submitted ``job_id`` (also when it was a duplicate of an existing job)."""
    try:
        with sessions.begin() as s:
            if s.get(JobOwner, (job_id, token_name)) is None:
                s.add(JobOwner(job_id=job_id, token_name=token_name))
    except IntegrityError:  # the same token's concurrent request recorded it
        pass


def may_read(sessions: sessionmaker[Session], caller: Caller, job_id: str) -> bool:
    """``read`` and ``admin`` read every job; ``submit`` only the jobs it submitted."""
    if caller.scope.reads_every_job:
        return True
    with sessions() as s:
        return s.get(JobOwner, (job_id, caller.name)) is not None
