"""The worklist: one row per job, the most urgent unreviewed work first.

Order: triage level (urgent, soon, indeterminate, routine, then jobs with no result yet),
unreviewed before reviewed, newest first. Rejected files are a list of their own, with
their reasons. Search matches patient id, accession number or a submission's original file
name (case-insensitive, part of the text).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import case, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

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
    """The latest non-shadow prediction per job (there is one, unless a job was re-scored)."""
    newer = aliased(Prediction)
    later = exists().where(newer.job_id == Prediction.job_id, newer.shadow.is_(False),
                           newer.created_at > Prediction.created_at)
    return (select(Prediction.job_id, Prediction.triage_level, Prediction.p_melanoma, Prediction.model_version)
            .where(Prediction.shadow.is_(False), ~later).subquery())


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _search(query: str):
    pattern = _like(query)
    named = exists().where(Submission.job_id == Job.id,
                           func.lower(Submission.original_name).like(pattern, escape="\\"))
    return or_(func.lower(Image.patient_id).like(pattern, escape="\\"),
               func.lower(Image.accession_number).like(pattern, escape="\\"), named)


def _ordered_ids(filters: Filters, rejected: bool, pred):
    """Job ids in worklist order under ``filters`` (a narrow sort: ids only)."""
    level_rank = case({level.value: i for i, level in enumerate(LEVEL_ORDER)},
                      value=pred.c.triage_level, else_=len(LEVEL_ORDER))
    query = (select(Job.id).join(Image, Image.id == Job.image_id)
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


def _load(session: Session, job_ids: list[str], pred) -> list[WorklistRow]:
    """The rows of ``job_ids``, in that order."""
    if not job_ids:
        return []
    found = session.execute(
        select(Job, Image, pred.c.triage_level, pred.c.p_melanoma, pred.c.model_version,
               JobReview.reviewed_by, JobReview.reviewed_at)
        .join(Image, Image.id == Job.image_id)
        .outerjoin(pred, pred.c.job_id == Job.id)
        .outerjoin(JobReview, JobReview.job_id == Job.id)
        .where(Job.id.in_(job_ids))).all()
    names = _first_names(session, job_ids)
    by_id = {r[0].id: _row(*r, names.get(r[0].id)) for r in found}
    return [by_id[j] for j in job_ids if j in by_id]


def _first_names(session: Session, job_ids: list[str]) -> dict[str, str]:
    """The original file name of each job's first submission (for one page of rows only)."""
    names: dict[str, str] = {}
    if job_ids:
        for job_id, name in session.execute(
                select(Submission.job_id, Submission.original_name).where(Submission.job_id.in_(job_ids))
                .order_by(Submission.received_at)):
            if name:
                names.setdefault(job_id, name)
    return names


def _row(job: Job, image: Image, level, p_mel, version, by, at, name) -> WorklistRow:
    return WorklistRow(job_id=job.id, state=job.state, triage=level, melanoma_probability=p_mel,
                       model_version=version, received_at=_aware(job.created_at), patient_id=image.patient_id,
                       patient_name=image.patient_name, accession_number=image.accession_number,
                       body_site=image.body_site, original_name=name, reviewed_by=by,
                       reviewed_at=_aware(at), error_code=job.error_code, error=job.error)


def worklist_rows(session: Session, filters: Filters, page_size: int = PAGE_SIZE) -> tuple[list[WorklistRow], bool]:
    """One page of rows and whether another page follows."""
    pred = _reported()
    offset = (filters.page - 1) * page_size
    ids = session.scalars(_ordered_ids(filters, False, pred).offset(offset).limit(page_size + 1)).all()
    return _load(session, ids[:page_size], pred), len(ids) > page_size


def rejected_rows(session: Session, filters: Filters, limit: int = PAGE_SIZE) -> list[WorklistRow]:
    """Rejected files, newest first, with their reasons (date and search filters apply)."""
    pred = _reported()
    return _load(session, session.scalars(_ordered_ids(filters, True, pred).limit(limit)).all(), pred)
