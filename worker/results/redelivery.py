"""Deliveries whose message was lost: the database says which, and they are sent again.

The ``deliver`` message for a finished job can be lost like any other (a broker restarted
without persistence, a worker killed mid-send). Beat runs :func:`redeliver` once per
period; it sends a ``deliver`` message again for

* a job with a ``pending`` delivery untouched for longer than a deliver task may run
  (:func:`delivery_time_limit_s`): the task that owned it is dead, so sending again cannot
  race it;
* a job finished that same limit ago that has no delivery rows and no FHIR outbox file:
  ``deliver_results`` never ran for it (it writes the outbox first, also when no
  destination is configured).

Both look only at a window of ``WINDOW_PERIODS`` sweep periods that ends that limit ago,
so a job is re-sent by a few sweeps at most, never by every sweep: with the deliver worker
down during a large backfill, a sweep sending every done job each period put 820,000
messages into Redis in 15 minutes (soak run). A job whose window passed while beat was
down is sent with ``melanoma-triage deliveries resend``. ``deliver_results`` is
idempotent. No Celery here: the caller hands in ``send``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from schemas import DeliveryState, JobState
from worker.db.deliveries import Delivery
from worker.db.models import Job
from worker.results.delivery import backoff_s
from worker.results.dicom_sender import parse_destinations
from worker.results.fhir import outbox_location
from worker.storage.blobs import location_exists
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Sweep periods a job stays eligible: more than one, so a late beat tick misses nothing.
WINDOW_PERIODS = 3
#: Worst case of one attempt, in delivery timeouts: connect, associate, then a DIMSE
#: response for each object (PDF, SR, image).
TIMEOUTS_PER_ATTEMPT = 5
#: Floor of the deliver task's time limit (building the DICOM objects and the FHIR bundle).
MIN_TIME_LIMIT_S = 300


def delivery_time_limit_s(settings: Settings) -> int:
    """How long one deliver task may run: every destination it may have, each tried
    ``delivery_attempts`` times with the backoff between attempts, plus building time."""
    destinations = len(parse_destinations(settings.dicom_destinations))
    destinations += int(settings.dicom_return_to_caller) + bool(settings.fhir_endpoint)
    destinations += bool(settings.webhook_url)
    attempts = settings.delivery_attempts
    per_destination = (attempts * TIMEOUTS_PER_ATTEMPT * settings.delivery_timeout_s
                       + sum(backoff_s(settings, a) for a in range(1, attempts)))
    return int(max(MIN_TIME_LIMIT_S, 60 + destinations * per_destination))


def jobs_to_redeliver(session: Session, settings: Settings, now: datetime) -> list[str]:
    """Job ids whose deliver message is lost (see the module docstring)."""
    stale = now - timedelta(seconds=delivery_time_limit_s(settings))
    since = stale - timedelta(seconds=WINDOW_PERIODS * settings.reconcile_interval_s)
    stuck = session.execute(
        select(Delivery.job_id).where(Delivery.state == DeliveryState.PENDING.value,
                                      Delivery.updated_at >= since, Delivery.updated_at < stale)
        .distinct()
    ).scalars()
    never = session.execute(
        select(Job.id).where(Job.state == JobState.DONE.value, Job.finished_at >= since,
                             Job.finished_at < stale, ~exists().where(Delivery.job_id == Job.id))
    ).scalars()
    never_run = [job_id for job_id in never
                 if not location_exists(outbox_location(settings, job_id), session)]
    return sorted(set(stuck) | set(never_run))


def redeliver(sessions: sessionmaker[Session], settings: Settings, send: Callable[[str], None],
              now: datetime | None = None) -> int:
    """Send a deliver message again for every job that lost one; returns how many."""
    with sessions() as s:
        job_ids = jobs_to_redeliver(s, settings, now or datetime.now(timezone.utc))
    for job_id in job_ids:
        send(job_id)
    if job_ids:
        log.warning("re-sent the deliver message of %d job(s)", len(job_ids))
    return len(job_ids)
