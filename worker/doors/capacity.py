"""Back-pressure shared by the network doors: refuse new images before they can hurt.

A sender that is told "out of resources" keeps its copy and tries again later; an image
we accept with a full disk or an hours-long backlog helps nobody.
"""

from __future__ import annotations

import shutil

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from schemas import JobState
from worker.db.models import Job
from worker.settings import Settings

_WAITING = (JobState.RECEIVED.value, JobState.QUEUED.value)


def backlog(session: Session) -> int:
    """Jobs admitted but not yet taken by a worker."""
    return session.execute(select(func.count()).select_from(Job).where(Job.state.in_(_WAITING))).scalar_one()


def refusal(settings: Settings, sessions: sessionmaker[Session]) -> str | None:
    """Why a door must refuse a new image now, or None when it may take it."""
    free = shutil.disk_usage(settings.archive_dir).free
    if free < settings.min_free_disk_bytes:
        return f"free disk space {free} bytes is under the floor of {settings.min_free_disk_bytes}"
    with sessions() as s:
        waiting = backlog(s)
    if waiting >= settings.max_backlog:
        return f"backlog of {waiting} waiting jobs is at the limit of {settings.max_backlog}"
    return None
