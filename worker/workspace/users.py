"""Workspace users: a name, one role, an argon2 password hash.

A generated password (``users create`` without ``--password-stdin``, ``users reset-password``)
must be changed at the first sign-in: it was seen by whoever ran the command.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from worker.db.models import utcnow
from worker.db.workspace import WorkspaceSession, WorkspaceUser
from worker.errors import TriageError

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 256
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class Role(StrEnum):
    """What a person may do: a viewer reads; a clinician also reviews and records diagnoses;
    an admin also manages users and approves model versions."""

    VIEWER = "viewer"
    CLINICIAN = "clinician"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


class UserError(TriageError):
    """A user that cannot be created or changed (bad name, taken, unknown, weak password)."""


@dataclass(frozen=True)
class UserInfo:
    name: str
    role: Role
    must_change_password: bool
    created_at: datetime
    disabled_at: datetime | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the library's current recommended parameters


@cache
def _dummy_hash() -> str:
    """Verified against when the user is unknown, so that the answer takes as long."""
    return _hasher().hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def generate_password() -> str:
    """About 120 random bits in URL-safe characters (20 of them)."""
    return secrets.token_urlsafe(15)


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")


def _info(row: WorkspaceUser) -> UserInfo:
    return UserInfo(row.name, Role(row.role), bool(row.must_change_password), row.created_at, row.disabled_at)


def create_user(sessions: sessionmaker[Session], name: str, role: Role | str,
                password: str | None = None) -> str | None:
    """Add ``name``; returns the generated initial password, or None when ``password`` was given."""
    if not _NAME.match(name):
        raise UserError("a user name is 1-64 letters, digits, '.', '_', '@' or '-'")
    role = Role(role)
    generated = password is None
    password = generate_password() if generated else password
    check_password_rules(password)
    with sessions.begin() as s:
        if s.get(WorkspaceUser, name) is not None:
            raise UserError(f"a user named {name!r} exists")
        s.add(WorkspaceUser(name=name, role=role.value, password_hash=hash_password(password),
                            must_change_password=generated))
    return password if generated else None


def list_users(sessions: sessionmaker[Session]) -> list[UserInfo]:
    with sessions() as s:
        return [_info(r) for r in s.scalars(select(WorkspaceUser).order_by(WorkspaceUser.name))]


def get_user(session: Session, name: str) -> UserInfo | None:
    row = session.get(WorkspaceUser, name)
    return _info(row) if row is not None else None


def _existing(s: Session, name: str) -> WorkspaceUser:
    row = s.get(WorkspaceUser, name)
    if row is None:
        raise UserError(f"no user named {name!r}")
    return row


def disable_user(sessions: sessionmaker[Session], name: str) -> None:
    """The user can no longer sign in; their open sessions end now."""
    with sessions.begin() as s:
        row = _existing(s, name)
        if row.disabled_at is None:
            row.disabled_at = utcnow()
        s.execute(delete(WorkspaceSession).where(WorkspaceSession.user_name == name))


def reset_password(sessions: sessionmaker[Session], name: str) -> str:
    """A new generated password (changed at the next sign-in); open sessions end now."""
    password = generate_password()
    with sessions.begin() as s:
        row = _existing(s, name)
        row.password_hash, row.must_change_password = hash_password(password), True
        row.password_changed_at = utcnow()
        s.execute(delete(WorkspaceSession).where(WorkspaceSession.user_name == name))
    return password


def change_password(sessions: sessionmaker[Session], name: str, current: str, new: str) -> None:
    """The user's own change: the current password is checked, the new one must differ."""
    check_password_rules(new)
    if new == current:
        raise UserError("the new password must differ from the current one")
    if authenticate(sessions, name, current) is None:
        raise UserError("the current password is wrong")
    with sessions.begin() as s:
        row = _existing(s, name)
        row.password_hash, row.must_change_password = hash_password(new), False
        row.password_changed_at = utcnow()


def authenticate(sessions: sessionmaker[Session], name: str, password: str) -> UserInfo | None:
    """The active user whose password this is, or None (as slow for an unknown name)."""
    with sessions() as s:
        row = s.get(WorkspaceUser, name) if _NAME.match(name or "") else None
        stored = row.password_hash if row is not None else _dummy_hash()
    try:
        _hasher().verify(stored, password[:MAX_PASSWORD_LENGTH])
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled_at is not None:
        return None
    if _hasher().check_needs_rehash(stored):
        with sessions.begin() as s:
            _existing(s, name).password_hash = hash_password(password)
    return _info(row)
