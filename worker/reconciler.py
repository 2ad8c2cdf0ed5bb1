"""The reconciler: the jobs table is the truth, the broker only a delivery mechanism.

A job left in ``received`` (the broker was down at intake) or stuck in ``queued`` or
``running`` past a timeout (the broker lost the message, a worker was killed) is sent
again. The attempts counter, not the reconciler, decides when to give up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy.orm import Session, sessionmaker

from worker.db import jobs

log = logging.getLogger(__name__)


def reconcile(
    sessions: sessionmaker[Session],
    enqueue: Callable[[str], bool],
    received_grace: timedelta,
    stale_after: timedelta,
    now: datetime | None = None,
) -> int:
    now = now or datetime.now(timezone.utc)
    with sessions() as s:
        job_ids = jobs.jobs_to_reconcile(s, now, received_grace, stale_after)
    sent = sum(1 for job_id in job_ids if enqueue(job_id))
    if job_ids:
        log.warning("reconciler re-enqueued %d of %d stale jobs", sent, len(job_ids))
    return sent
