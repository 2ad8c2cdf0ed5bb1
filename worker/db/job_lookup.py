"""Finding jobs the way staff ask for them: by state, triage level, time, and the name the
file came with (``submissions.original_name``, any arrival of the image), and one job in
full. Plain reads, no Celery: ``melanoma-triage jobs`` and any worklist use these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from schemas import CLASS_NAMES
from worker.db.deliveries import Delivery
from worker.db.models import Image, Job, Prediction, Report, Submission

#: Shortest job id prefix ``jobs show`` accepts (a whole id is 32 hex characters).
MIN_ID_PREFIX = 6


@dataclass(frozen=True)
class JobFilter:
    state: str | None = None
    triage: str | None = None
    since: datetime | None = None
    name: str | None = None  # part of the original file name, any case
    limit: int = 50


def _aware(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=timezone.utc) if ts is not None and ts.tzinfo is None else ts


def _name_matches(part: str):
    """A submission of the job whose original name contains ``part`` (any case)."""
    return exists().where(Submission.job_id == Job.id,
                          func.lower(Submission.original_name).contains(part.lower(),
                                                                        autoescape=True))


def _first_names(session: Session, job_ids: list[str]) -> dict[str, str | None]:
    """Each job's first arrival's name."""
    rows = session.execute(select(Submission.job_id, Submission.original_name, Submission.received_at)
                           .where(Submission.job_id.in_(job_ids))
                           .order_by(Submission.received_at.desc()))
    return {job_id: name for job_id, name, _at in rows}  # the oldest one is written last


def find_jobs(session: Session, f: JobFilter) -> list[dict]:
    """Newest first: one summary per job (id, state, triage, class call, P(melanoma),
    received, original name, patient id, accession, report path)."""
    query = (select(Job, Image, Prediction, Report)
             .join(Image, Image.id == Job.image_id)
             .outerjoin(Prediction, (Prediction.job_id == Job.id) & Prediction.shadow.is_(False))
             .outerjoin(Report, Report.job_id == Job.id)
             .order_by(Image.received_at.desc(), Job.id).limit(f.limit))
    if f.state:
        query = query.where(Job.state == f.state)
    if f.triage:
        query = query.where(Prediction.triage_level == f.triage)
    if f.since:
        query = query.where(Image.received_at >= f.since)
    if f.name:
        query = query.where(_name_matches(f.name))
    rows = session.execute(query).all()
    names = _first_names(session, [job.id for job, *_ in rows]) if rows else {}
    return [_summary(job, image, pred, report, names.get(job.id)) for job, image, pred, report in rows]


def _summary(job: Job, image: Image, pred: Prediction | None, report: Report | None,
             name: str | None) -> dict:
    return {
        "job_id": job.id,
        "state": job.state,
        "triage": pred.triage_level if pred else None,
        "class_call": pred.predicted_class if pred else None,
        "p_melanoma": round(pred.p_melanoma, 4) if pred else None,
        "received_at": _aware(image.received_at).isoformat() if image.received_at else None,
        "original_name": name,
        "patient_id": image.patient_id or (image.caller_metadata or {}).get("patient_id"),
        "accession_number": (image.accession_number
                             or (image.caller_metadata or {}).get("accession_number")),
        "report_path": report.path if report else None,
        "error_code": job.error_code,
    }


def resolve(session: Session, key: str) -> list[str]:
    """Job ids that ``key`` names: the id itself, a unique id prefix, or an original file
    name (exactly, then in part); several when a name is shared."""
    key = key.strip()
    if session.get(Job, key) is not None:
        return [key]
    if len(key) >= MIN_ID_PREFIX:
        by_prefix = session.scalars(select(Job.id).where(Job.id.startswith(key, autoescape=True))
                                    .limit(2)).all()
        if len(by_prefix) == 1:
            return list(by_prefix)
    by_name = session.scalars(select(Submission.job_id).where(Submission.original_name == key)
                              .distinct()).all()
    if by_name:
        return sorted(by_name)
    return sorted(session.scalars(select(Job.id).where(_name_matches(key)).limit(20)).all())


def job_detail(session: Session, job_id: str) -> dict:
    """Everything ``jobs show`` prints of one job."""
    job = session.get(Job, job_id)
    image, report = job.image, job.report
    pred = session.scalars(select(Prediction).where(Prediction.job_id == job_id,
                                                    Prediction.shadow.is_(False))
                           .order_by(Prediction.created_at.desc()).limit(1)).first()
    subs = session.scalars(select(Submission).where(Submission.job_id == job_id)
                           .order_by(Submission.received_at)).all()
    sends = session.scalars(select(Delivery).where(Delivery.job_id == job_id)
                            .order_by(Delivery.kind, Delivery.destination)).all()
    detail = _summary(job, image, pred, report, subs[0].original_name if subs else None)
    detail.update({
        "error": job.error,
        "attempts": job.attempts,
        "finished_at": _aware(job.finished_at).isoformat() if job.finished_at else None,
        "model_version": pred.model_version if pred else None,
        "probabilities": ({c: round(getattr(pred, f"p_{c}"), 4) for c in CLASS_NAMES}
                          if pred else None),
        "image_sha256": image.sha256,
        "submissions": [{"door": s.door, "original_name": s.original_name,
                         "received_at": _aware(s.received_at).isoformat(),
                         "duplicate": s.duplicate} for s in subs],
        "deliveries": [{"kind": d.kind, "destination": d.destination, "state": d.state,
                        "attempts": d.attempts, "last_error": d.last_error} for d in sends],
    })
    return detail
