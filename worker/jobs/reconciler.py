"""The reconciler: the jobs table is the truth, the broker only a delivery mechanism.

Beat runs a pass every ``reconcile_interval_s`` (10 s) on the ``maintenance`` queue. It
sends again:

* a job left in ``received`` (the broker refused the message at intake);
* a ``running`` job whose lease expired: its worker died (kill -9, OOM, a lost host), on
  any broker. This is what brings a dead worker's job back within ~30 s (lease 20 s + one
  pass), where the broker itself would wait for an hour (Redis visibility timeout) or
  forever (the embedded filesystem broker deletes a message when it is fetched);
* a ``queued`` job with no message sent for ``stale_after`` (the broker lost it), and
  after each such resend only when twice as long has passed again: a long backlog gets a
  few duplicate messages per job, not one per pass. A duplicate costs one lookup: the
  worker finds the job finished, or held by a live lease, and does nothing.

Each resend is claimed first with one conditional UPDATE (``jobs.claim_resend``), so
reconcilers running at once (beat, ``melanoma-triage reconcile``) send a job once. The
attempts counter, not the reconciler, decides when to give up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schemas import JobState
from worker.db import jobs
from worker.db.models import Job

log = logging.getLogger(__name__)

#: Jobs looked at per pass; the rest wait for the next pass.
BATCH = 1000
#: The backoff of a queued job's resends stops doubling here (stale_after * 2**6).
MAX_DOUBLINGS = 6


def _aware(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=timezone.utc) if ts is not None and ts.tzinfo is None else ts


def _backed_off(sessions: sessionmaker[Session], job_ids: list[str], now: datetime,
                stale_after: timedelta) -> list[str]:
    """Drop queued jobs re-sent recently: wait ``stale_after * 2**(resends)`` after a resend."""
    with sessions() as s:
        rows = s.execute(select(Job.id, Job.state, Job.last_sent_at, Job.sent_count)
                         .where(Job.id.in_(job_ids))).all()
    keep = set()
    for job_id, state, last_sent, sent_count in rows:
        last_sent = _aware(last_sent)
        resends = max(0, (sent_count or 0) - 1)
        wait = stale_after * (2 ** min(resends, MAX_DOUBLINGS))
        if state != JobState.QUEUED.value or last_sent is None or now - last_sent >= wait:
            keep.add(job_id)
    return [j for j in job_ids if j in keep]


def reconcile(
    sessions: sessionmaker[Session],
    enqueue: Callable[[str], bool],
    received_grace: timedelta,
    stale_after: timedelta,
    now: datetime | None = None,
) -> int:
    """One pass; returns how many jobs were sent again."""
    now = now or datetime.now(timezone.utc)
    with sessions() as s:
        candidates = jobs.jobs_to_reconcile(s, now, received_grace, stale_after, limit=BATCH)
    if not candidates:
        return 0
    sent = 0
    for job_id in _backed_off(sessions, candidates, now, stale_after):
        with sessions.begin() as s:
            claimed = jobs.claim_resend(s, job_id, now, received_grace, stale_after)
        if claimed and enqueue(job_id) is not False:
            sent += 1
    if sent:
        log.warning("reconciler sent %d job(s) again (dead worker or lost message)", sent)
    return sent
