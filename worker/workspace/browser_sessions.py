"""Signed-in browsers: a random token in an HttpOnly cookie, its SHA-256 in ``ui_sessions``.

A session ends ``ui_session_idle_minutes`` after its last use or ``ui_session_max_hours``
after sign-in, whichever comes first, and at sign-out, when its user is disabled or their
password is reset. Each session has its own CSRF token, put in every form it is shown.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete
from sqlalchemy.orm import Session

from worker.db.models import utcnow
from worker.db.workspace import WorkspaceSession, WorkspaceUser
from worker.workspace.users import Role

SESSION_COOKIE = "mt_session"
#: The CSRF token of the sign-in form (no session yet): a double-submit cookie.
SIGNIN_CSRF_COOKIE = "mt_signin_csrf"
#: ``last_seen_at`` is written at most this often (not on every page view).
_TOUCH_EVERY = timedelta(seconds=60)


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta
    lifetime: timedelta


@dataclass(frozen=True)
class SignedIn:
    """The person behind a request."""

    user: str
    role: Role
    csrf_token: str
    must_change_password: bool

    def may(self, needed: Role) -> bool:
        return self.role.allows(needed)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def open_session(session: Session, user: str, policy: SessionPolicy) -> str:
    """A new session for ``user``; returns the cookie's token (seen only here)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(WorkspaceSession(token_sha256=token_sha256(token), user_name=user,
                                 csrf_token=secrets.token_urlsafe(32), created_at=now,
                                 last_seen_at=now, expires_at=now + policy.lifetime))
    return token


def find_session(session: Session, token: str | None, policy: SessionPolicy) -> SignedIn | None:
    """The live session of this cookie, or None (an expired one is deleted)."""
    if not token or len(token) > 128:
        return None
    row = session.get(WorkspaceSession, token_sha256(token))
    if row is None:
        return None
    now = utcnow()
    user = session.get(WorkspaceUser, row.user_name)
    if (_aware(row.expires_at) <= now or _aware(row.last_seen_at) + policy.idle <= now
            or user is None or user.disabled_at is not None):
        session.delete(row)
        return None
    if now - _aware(row.last_seen_at) >= _TOUCH_EVERY:
        row.last_seen_at = now
    return SignedIn(user.name, Role(user.role), row.csrf_token, bool(user.must_change_password))


def close_session(session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(WorkspaceSession).where(WorkspaceSession.token_sha256 == token_sha256(token)))


def close_other_sessions(session: Session, user: str, keep_token: str | None) -> None:
    """After a password change: every other browser of this user signs in again."""
    query = delete(WorkspaceSession).where(WorkspaceSession.user_name == user)
    if keep_token:
        query = query.where(WorkspaceSession.token_sha256 != token_sha256(keep_token))
    session.execute(query)
