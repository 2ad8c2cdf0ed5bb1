"""Job bookkeeping: every state change of a job goes through these functions.

State machine: received -> queued -> running -> done | rejected | failed. Transitions are
conditional updates, so a redelivered or duplicated task message cannot move a finished
job backwards.

Leases: an attempt holds the job until ``lease_expires_at``; its heartbeat renews the lease
(:func:`renew_lease`). A delivery that finds a live lease does nothing (the holder is
working); one that finds it expired starts the next attempt. Only the attempt that still
holds the job's attempt number may complete it (:func:`complete`), so a late finisher of a
superseded attempt cannot write a second result. The reconciler re-sends a job whose lease
expired, or that waits in the broker too long, at most once per period
(:func:`claim_resend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, update
from sqlalchemy.orm import Session, joinedload

from schemas import CLASS_NAMES, ImageMetadata, JobState, PredictionResult, RejectionReason
from worker.db.models import Job, Prediction, Report, Submission, utcnow

_ACTIVE = (JobState.RECEIVED.value, JobState.QUEUED.value, JobState.RUNNING.value)
#: Lease of an attempt when the caller names none (seconds; settings.job_lease_s).
DEFAULT_LEASE = timedelta(seconds=20)


@dataclass(frozen=True)
class WorkItem:
    """What a worker needs to process one job, read in the transaction that claimed it."""

    job_id: str
    attempt: int
    image_sha256: str
    archive_path: str
    caller_metadata: ImageMetadata
    received_at: datetime
    #: The file name of the image's first arrival (printed; names a report without ids).
    original_name: str | None = None


def mark_queued(session: Session, job_id: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(_ACTIVE))
        .values(state=JobState.QUEUED.value, queued_at=utcnow(), updated_at=utcnow(),
                last_sent_at=utcnow(), sent_count=Job.sent_count + 1)
    )


def unmark_queued(session: Session, job_id: str) -> None:
    """The broker refused the message: leave the job for the reconciler."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
        .values(state=JobState.RECEIVED.value, updated_at=utcnow())
    )


def _aware(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored in UTC)."""
    return ts.replace(tzinfo=timezone.utc) if ts is not None and ts.tzinfo is None else ts


def lease_is_live(job: Job, now: datetime | None = None) -> bool:
    """A running attempt whose heartbeat is still renewing its lease."""
    expires = _aware(job.lease_expires_at)
    return (job.state == JobState.RUNNING.value and expires is not None
            and expires > (now or utcnow()))


def start_attempt(session: Session, job_id: str, max_attempts: int,
                  lease: timedelta = DEFAULT_LEASE) -> WorkItem | None:
    """Claim a job for processing under a lease; None when it is finished, held by a live
    attempt (a duplicate or early redelivery), or has used up its attempts.

    Every attempt that starts counts against ``max_attempts`` until it ends: one whose
    worker dies (kill -9, OOM) cannot be told from one whose image kills the worker, so a
    job that dies with its worker each time ends ``failed`` (attempts_exhausted). A
    delivery that finds a live lease does not count, and :func:`release` gives back an
    attempt stopped by trouble outside the image.
    """
    job = session.execute(_locked_job(job_id, Job.image)).scalar_one_or_none()
    if job is None or job.state not in _ACTIVE:
        return None
    now = utcnow()
    if lease_is_live(job, now):
        return None
    if job.attempts >= max_attempts:
        _finish(job, JobState.FAILED, RejectionReason.ATTEMPTS_EXHAUSTED,
                f"gave up after {job.attempts} attempts (worker crash or timeout each time)")
        return None
    job.attempts += 1
    job.state = JobState.RUNNING.value
    job.started_at = job.updated_at = now
    job.lease_expires_at = now + lease
    image = job.image
    return WorkItem(
        job_id=job.id,
        attempt=job.attempts,
        image_sha256=image.sha256 or "",
        archive_path=image.archive_path or "",
        caller_metadata=ImageMetadata.model_validate(image.caller_metadata or {}),
        received_at=image.received_at,
        original_name=original_name(session, job.id),  # same transaction, no second session
    )


def _locked_job(job_id: str, *related) -> Select:
    """The job's row, locked (PostgreSQL: ``FOR UPDATE OF jobs``), with ``related`` rows
    joined in: one round trip where lazy loads took one more each."""
    return (select(Job).where(Job.id == job_id)
            .options(*(joinedload(r) for r in related)).with_for_update(of=Job))


def renew_lease(session: Session, job_id: str, attempt: int,
                lease: timedelta = DEFAULT_LEASE) -> bool:
    """Extend the lease of ``attempt``; False when the job is finished or another attempt
    has taken it. A job the reconciler re-queued while this attempt was cut off (database
    away longer than the lease) is taken back: the holder is alive after all."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempt,
               Job.state.in_([JobState.RUNNING.value, JobState.QUEUED.value]))
        .values(state=JobState.RUNNING.value, lease_expires_at=now + lease, updated_at=now)
    )
    return res.rowcount == 1


def release(session: Session, job_id: str) -> None:
    """Give back an attempt that failed for reasons outside the image (it will be retried)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING.value, Job.attempts > 0)
        .values(state=JobState.QUEUED.value, attempts=Job.attempts - 1, updated_at=utcnow(),
                lease_expires_at=None)
    )


def _finish(job: Job, state: JobState, code: RejectionReason | None = None,
            reason: str | None = None) -> None:
    job.state = state.value
    job.error_code = RejectionReason(code).value if code else None
    job.error = reason
    job.finished_at = job.updated_at = utcnow()
    job.lease_expires_at = None


def reject(session: Session, job_id: str, code: RejectionReason, reason: str) -> None:
    job = session.get(Job, job_id)
    if job is not None and job.state in _ACTIVE:
        _finish(job, JobState.REJECTED, code, reason)


def fail(session: Session, job_id: str, code: RejectionReason, reason: str) -> None:
    job = session.get(Job, job_id)
    if job is not None and job.state in _ACTIVE:
        _finish(job, JobState.FAILED, code, reason)


def complete(
    session: Session,
    job_id: str,
    metadata: ImageMetadata,
    image_facts: dict,
    result: PredictionResult,
    image_usable: bool,
    report_path: str,
    report_sha256: str,
    shadow_results: tuple[PredictionResult, ...] = (),
    attempt: int | None = None,
) -> bool:
    """Store prediction, report and identifiers, and finish the job, in the caller's transaction.

    False (nothing written) when the job is already finished, or when ``attempt`` is given
    and another attempt has started since: a superseded attempt never writes a result."""
    job = session.execute(_locked_job(job_id, Job.image, Job.report)).scalar_one()
    if job.state not in _ACTIVE or (attempt is not None and job.attempts != attempt):
        return False
    image = job.image
    for field, value in metadata.model_dump().items():
        setattr(image, field, value)
    for field, value in image_facts.items():
        setattr(image, field, value)
    for res, shadow in [(result, False)] + [(r, True) for r in shadow_results]:
        session.add(
            Prediction(
                job_id=job.id,
                model_version=res.model_version,
                shadow=shadow,
                predicted_class=res.predicted_class,
                triage_level=res.triage.value,
                image_usable=image_usable,
                **{f"p_{name}": float(res.probabilities[name]) for name in CLASS_NAMES},
            )
        )
    existing = job.report
    if existing is None:
        session.add(Report(job_id=job.id, path=report_path, sha256=report_sha256))
    else:
        existing.path, existing.sha256 = report_path, report_sha256
    _finish(job, JobState.DONE)
    return True


def _needs_resend(now: datetime, received_grace: timedelta, stale_after: timedelta) -> ColumnElement:
    """Jobs a lost message or a dead worker left behind, each at most once per period:

    * received (the broker refused the message) for longer than ``received_grace``;
    * queued, with no message sent for ``stale_after`` (the broker lost it; a long backlog
      gets one duplicate per job per period, not one per reconciler pass);
    * running with an expired lease (its worker died), not re-sent since the lease expired.
      A row from before leases (no lease) counts as expired ``stale_after`` after its last change.
    """
    stale = now - stale_after
    last_sent = func.coalesce(Job.last_sent_at, Job.updated_at)
    lease_expired = or_(Job.lease_expires_at < now,
                        and_(Job.lease_expires_at.is_(None), Job.updated_at < stale))
    not_sent_since = or_(Job.last_sent_at.is_(None), Job.last_sent_at < stale,
                         Job.last_sent_at < Job.lease_expires_at)
    return or_(
        and_(Job.state == JobState.RECEIVED.value, Job.updated_at < now - received_grace,
             or_(Job.last_sent_at.is_(None), Job.last_sent_at < now - received_grace)),
        and_(Job.state == JobState.QUEUED.value, last_sent < stale),
        and_(Job.state == JobState.RUNNING.value, lease_expired, not_sent_since),
    )


def jobs_to_reconcile(
    session: Session, now: datetime, received_grace: timedelta, stale_after: timedelta,
    limit: int | None = None,
) -> list[str]:
    """Candidates for a resend, oldest first; :func:`claim_resend` decides for each."""
    query = (select(Job.id).where(_needs_resend(now, received_grace, stale_after))
             .order_by(Job.updated_at).limit(limit))
    return [r[0] for r in session.execute(query)]


def claim_resend(session: Session, job_id: str, now: datetime, received_grace: timedelta,
                 stale_after: timedelta) -> bool:
    """Atomically take the right to re-send ``job_id`` (one conditional UPDATE): of several
    reconcilers passing at once, one sends. Records the send time."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, _needs_resend(now, received_grace, stale_after))
        .values(last_sent_at=now)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def counts_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
    counts = {s.value: 0 for s in JobState}
    counts.update({state: n for state, n in rows})
    return counts


def counts_by_triage(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Prediction.triage_level, func.count())
        .where(Prediction.shadow.is_(False))
        .group_by(Prediction.triage_level)
    )
    return {level: n for level, n in rows}


def original_name(session: Session, job_id: str) -> str | None:
    """The file name of the first arrival of this job's image."""
    return session.execute(
        select(Submission.original_name).where(Submission.job_id == job_id)
        .order_by(Submission.received_at).limit(1)
    ).scalar_one_or_none()
