"""The audit trail: who signed in, whose job they opened, what they reviewed, recorded or
approved, and when. Rows name users and job ids, never patient identifiers or passwords.

``melanoma-triage audit list`` reads it; the sign-in throttle counts its failed sign-ins.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker.db.workspace import AuditEvent


class AuditAction(StrEnum):
    SIGNIN = "signin"
    SIGNIN_FAILED = "signin_failed"
    SIGNIN_THROTTLED = "signin_throttled"
    SIGNOUT = "signout"
    PASSWORD_CHANGED = "password_changed"
    VIEW_JOB = "view_job"
    VIEW_REPORT = "view_report"
    REVIEW = "review"
    DIAGNOSIS = "diagnosis"
    APPROVE_MODEL = "approve_model"
    USER_CREATED = "user_created"
    USER_DISABLED = "user_disabled"
    PASSWORD_RESET = "password_reset"
    FORBIDDEN = "forbidden"


def record(session: Session, action: AuditAction, user: str | None, job_id: str | None = None,
           client: str | None = None, **detail) -> None:
    """Add one event to ``session``'s transaction (it commits with what it records)."""
    session.add(AuditEvent(action=AuditAction(action).value, user_name=(user or None) and user[:64],
                           job_id=job_id, client=(client or None) and client[:64], detail=detail))


def _iso(ts: datetime) -> str:
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).isoformat()


def list_events(sessions: sessionmaker[Session], user: str | None = None, job: str | None = None,
                since: datetime | None = None, limit: int = 1000) -> list[dict]:
    """Events, oldest first within the newest ``limit``."""
    query = select(AuditEvent)
    if user:
        query = query.where(AuditEvent.user_name == user)
    if job:
        query = query.where(AuditEvent.job_id == job)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    with sessions() as s:
        rows = s.scalars(query.order_by(AuditEvent.at.desc(), AuditEvent.id).limit(limit)).all()
        return [{"at": _iso(e.at), "user": e.user_name, "action": e.action, "job_id": e.job_id,
                 "client": e.client, "detail": e.detail or {}} for e in reversed(rows)]
