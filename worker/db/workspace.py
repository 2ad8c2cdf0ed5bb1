"""Tables of the clinician workspace (worker/workspace): its users, their sessions, the review
mark of a job and the audit trail.

On the same declarative ``Base`` as every other table (``worker.db`` imports this module).
Passwords are kept only as argon2 hashes, session tokens only as SHA-256; the audit trail
names users and job ids, never patient identifiers.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models import Base, new_id, utcnow


class WorkspaceUser(Base):
    """A person who signs in to the workspace, with one role (viewer, clinician, admin)."""

    __tablename__ = "ui_users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)
    #: A generated password (``users create``, ``users reset-password``) is changed at first sign-in.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]


class WorkspaceSession(Base):
    """A signed-in browser: the cookie holds the token, this row only its SHA-256."""

    __tablename__ = "ui_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(ForeignKey("ui_users.name"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class JobReview(Base):
    """A clinician looked at this job's result: who and when (the latest mark wins)."""

    __tablename__ = "job_reviews"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    reviewed_by: Mapped[str] = mapped_column(String(64))
    reviewed_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Who did what, when: sign-ins, views of a patient's job, reviews, diagnoses, approvals."""

    __tablename__ = "audit_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    user_name: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), index=True)
    client: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict] = mapped_column(default=dict)
