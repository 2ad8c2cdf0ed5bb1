"""Claims on task messages by their Celery task id: run a message once, however often the
broker delivers it (a Redis visibility timeout, a message sent twice)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from worker.db.models import TaskClaim


def claim_once(sessions: sessionmaker[Session], task_id: str, task_name: str) -> bool:
    """True for the first delivery of ``task_id``; False for every later one.

    One INSERT on the primary key: of two deliveries racing, exactly one wins, on SQLite
    and PostgreSQL alike."""
    try:
        with sessions.begin() as s:
            s.add(TaskClaim(task_id=task_id[:64], task_name=task_name[:64]))
        return True
    except IntegrityError:
        return False
