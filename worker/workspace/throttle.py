"""Sign-in throttling: after ``ui_signin_max_failures`` failed sign-ins for one user name, or
from one client address, within ``ui_signin_lockout_minutes``, sign-in is refused (even with
the right password) until the oldest of those failures is older than the window.

Counted from the audit trail's ``signin_failed`` rows, so every HTTP process and restart
sees the same count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.db.models import utcnow
from worker.db.workspace import AuditEvent
from worker.workspace.audit import AuditAction


@dataclass(frozen=True)
class ThrottlePolicy:
    max_failures: int
    window: timedelta


def signin_refused(session: Session, name: str, client: str | None, policy: ThrottlePolicy) -> bool:
    """True when this user name or this client has failed too often lately."""
    since = utcnow() - policy.window
    recent = (AuditEvent.action == AuditAction.SIGNIN_FAILED.value, AuditEvent.at >= since)
    by_name = session.scalar(select(func.count()).select_from(AuditEvent)
                             .where(*recent, AuditEvent.user_name == name[:64]))
    if by_name >= policy.max_failures:
        return True
    if client is None:
        return False
    # a client that tries many names: a wider allowance (several people share a ward's desktop)
    by_client = session.scalar(select(func.count()).select_from(AuditEvent)
                               .where(*recent, AuditEvent.client == client[:64]))
    return by_client >= 4 * policy.max_failures
