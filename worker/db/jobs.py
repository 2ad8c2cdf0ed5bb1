"""Job bookkeeping: every state change of a job goes through these functions.

State machine: received -> queued -> running -> done | rejected | failed. Transitions are
conditional updates, so a redelivered or duplicated task message cannot move a finished
job backwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from schemas import CLASS_NAMES, ImageMetadata, JobState, PredictionResult, RejectionReason
from worker.db.models import Job, Prediction, Report, Submission, utcnow

_ACTIVE = (JobState.RECEIVED.value, JobState.QUEUED.value, JobState.RUNNING.value)


@dataclass(frozen=True)
class WorkItem:
    """What a worker needs to process one job, read in the transaction that claimed it."""

    job_id: str
    attempt: int
    image_sha256: str
    archive_path: str
    caller_metadata: ImageMetadata
    received_at: datetime


def mark_queued(session: Session, job_id: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(_ACTIVE))
        .values(state=JobState.QUEUED.value, queued_at=utcnow(), updated_at=utcnow())
    )


def unmark_queued(session: Session, job_id: str) -> None:
    """The broker refused the message: leave the job for the reconciler."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
        .values(state=JobState.RECEIVED.value, updated_at=utcnow())
    )


def start_attempt(session: Session, job_id: str, max_attempts: int) -> WorkItem | None:
    """Claim a job for processing; None when it is finished or has used up its attempts."""
    job = session.execute(
        select(Job).where(Job.id == job_id).with_for_update()
    ).scalar_one_or_none()
    if job is None or job.state not in _ACTIVE:
        return None
    if job.attempts >= max_attempts:
        _finish(job, JobState.FAILED, RejectionReason.ATTEMPTS_EXHAUSTED,
                f"gave up after {job.attempts} attempts (worker crash or timeout each time)")
        return None
    job.attempts += 1
    job.state = JobState.RUNNING.value
    job.started_at = job.updated_at = utcnow()
    image = job.image
    return WorkItem(
        job_id=job.id,
        attempt=job.attempts,
        image_sha256=image.sha256 or "",
        archive_path=image.archive_path or "",
        caller_metadata=ImageMetadata.model_validate(image.caller_metadata or {}),
        received_at=image.received_at,
    )


def release(session: Session, job_id: str) -> None:
    """Give back an attempt that failed for reasons outside the image (it will be retried)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING.value, Job.attempts > 0)
        .values(state=JobState.QUEUED.value, attempts=Job.attempts - 1, updated_at=utcnow())
    )


def _finish(job: Job, state: JobState, code: RejectionReason | None = None,
            reason: str | None = None) -> None:
    job.state = state.value
    job.error_code = RejectionReason(code).value if code else None
    job.error = reason
    job.finished_at = job.updated_at = utcnow()


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
) -> bool:
    """Store prediction, report and identifiers, and finish the job, in the caller's transaction."""
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one()
    if job.state not in _ACTIVE:
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
    existing = session.execute(select(Report).where(Report.job_id == job.id)).scalar_one_or_none()
    if existing is None:
        session.add(Report(job_id=job.id, path=report_path, sha256=report_sha256))
    else:
        existing.path, existing.sha256 = report_path, report_sha256
    _finish(job, JobState.DONE)
    return True


def jobs_to_reconcile(
    session: Session, now: datetime, received_grace: timedelta, stale_after: timedelta
) -> list[str]:
    """Jobs a lost message or a dead worker left behind."""
    rows = session.execute(
        select(Job.id).where(
            ((Job.state == JobState.RECEIVED.value) & (Job.updated_at < now - received_grace))
            | (Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value])
               & (Job.updated_at < now - stale_after))
        )
    )
    return [r[0] for r in rows]


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
