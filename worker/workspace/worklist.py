"""The worklist: one row per job, the most urgent unreviewed work first.

Order: triage level (urgent, soon, indeterminate, routine, then jobs with no result yet),
unreviewed before reviewed, newest first. Rejected files are a list of their own, with
their reasons. Search matches patient id, accession number or a submission's original file
name (case-insensitive, part of the text).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session

from schemas import JobState, TriageLevel
from worker.db.models import Image, Job, Prediction, Submission
from worker.db.workspace import JobReview

#: Worklist order of the levels; jobs without a reported result come after them.
LEVEL_ORDER: tuple[TriageLevel, ...] = (TriageLevel.URGENT, TriageLevel.SOON, TriageLevel.INDETERMINATE,
                                       TriageLevel.ROUTINE)
PAGE_SIZE = 100
MAX_QUERY = 100


@dataclass(frozen=True)
class Filters:
    """What the worklist's filter form asks for (empty: no filter)."""

    level: TriageLevel | None = None
    state: JobState | None = None
    received_from: date | None = None
    received_to: date | None = None
    reviewed: bool | None = None
    query: str = ""
    page: int = 1

    @classmethod
    def parse(cls, params) -> Filters:
        """From query parameters; a value that does not parse is ignored (no filter)."""
        def pick(enum, key):
            try:
                return enum(params.get(key)) if params.get(key) else None
            except ValueError:
                return None

        def day(key):
            try:
                return date.fromisoformat(params.get(key)) if params.get(key) else None
            except ValueError:
                return None

        reviewed = {"yes": True, "no": False}.get(params.get("reviewed") or "")
        try:
            page = max(1, int(params.get("page") or 1))
        except ValueError:
            page = 1
        return cls(level=pick(TriageLevel, "level"), state=pick(JobState, "state"),
                   received_from=day("from"), received_to=day("to"), reviewed=reviewed,
                   query=(params.get("q") or "").strip()[:MAX_QUERY], page=page)


@dataclass(frozen=True)
class WorklistRow:
    job_id: str
    state: str
    triage: str | None
    melanoma_probability: float | None
    model_version: str | None
    received_at: datetime
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    body_site: str | None
    original_name: str | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    error_code: str | None
    error: str | None


def _aware(ts: datetime | None) -> datetime | None:
    return ts if ts is None or ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _reported():
    """The latest non-shadow prediction per job."""
    latest = (select(Prediction.job_id, func.max(Prediction.created_at).label("at"))
              .where(Prediction.shadow.is_(False)).group_by(Prediction.job_id).subquery())
    return (select(Prediction).join(latest, and_(Prediction.job_id == latest.c.job_id,
                                                 Prediction.created_at == latest.c.at))
            .where(Prediction.shadow.is_(False)).subquery())


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _search(query: str):
    pattern = _like(query)
    named = exists().where(Submission.job_id == Job.id,
                           func.lower(Submission.original_name).like(pattern, escape="\\"))
    return or_(func.lower(Image.patient_id).like(pattern, escape="\\"),
               func.lower(Image.accession_number).like(pattern, escape="\\"), named)


def _base(filters: Filters, rejected: bool):
    pred = _reported()
    level_rank = case({level.value: i for i, level in enumerate(LEVEL_ORDER)},
                      value=pred.c.triage_level, else_=len(LEVEL_ORDER))
    first_name = (select(Submission.original_name).where(Submission.job_id == Job.id)
                  .order_by(Submission.received_at).limit(1).scalar_subquery())
    query = (select(Job, Image, pred.c.triage_level, pred.c.p_melanoma, pred.c.model_version,
                    JobReview.reviewed_by, JobReview.reviewed_at, first_name.label("original_name"))
             .join(Image, Image.id == Job.image_id)
             .outerjoin(pred, pred.c.job_id == Job.id)
             .outerjoin(JobReview, JobReview.job_id == Job.id))
    if rejected:
        query = query.where(Job.state == JobState.REJECTED.value)
    else:
        query = query.where(Job.state != JobState.REJECTED.value)
        if filters.level is not None:
            query = query.where(pred.c.triage_level == filters.level.value)
        if filters.state is not None:
            query = query.where(Job.state == filters.state.value)
        if filters.reviewed is not None:
            query = query.where(JobReview.job_id.is_not(None) if filters.reviewed else JobReview.job_id.is_(None))
    if filters.received_from is not None:
        query = query.where(Job.created_at >= datetime.combine(filters.received_from, time(), timezone.utc))
    if filters.received_to is not None:
        end = datetime.combine(filters.received_to + timedelta(days=1), time(), timezone.utc)
        query = query.where(Job.created_at < end)
    if filters.query:
        query = query.where(_search(filters.query))
    reviewed_rank = case((JobReview.job_id.is_(None), 0), else_=1)
    return query.order_by(level_rank, reviewed_rank, Job.created_at.desc(), Job.id)


def _row(job: Job, image: Image, level, p_mel, version, by, at, name) -> WorklistRow:
    return WorklistRow(job_id=job.id, state=job.state, triage=level, melanoma_probability=p_mel,
                       model_version=version, received_at=_aware(job.created_at), patient_id=image.patient_id,
                       patient_name=image.patient_name, accession_number=image.accession_number,
                       body_site=image.body_site, original_name=name, reviewed_by=by,
                       reviewed_at=_aware(at), error_code=job.error_code, error=job.error)


def worklist_rows(session: Session, filters: Filters, page_size: int = PAGE_SIZE) -> tuple[list[WorklistRow], bool]:
    """One page of rows and whether another page follows."""
    offset = (filters.page - 1) * page_size
    rows = session.execute(_base(filters, rejected=False).offset(offset).limit(page_size + 1)).all()
    return [_row(*r) for r in rows[:page_size]], len(rows) > page_size


def rejected_rows(session: Session, filters: Filters, limit: int = PAGE_SIZE) -> list[WorklistRow]:
    """Rejected files, newest first, with their reasons (date and search filters apply)."""
    return [_row(*r) for r in session.execute(_base(filters, rejected=True).limit(limit)).all()]
