"""What the HTTP API says about one job: state, times and, once done, the result.

No patient identifiers: the caller sent them and has them; the API answers with the job.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas import JobState, TriageLevel
from worker.db.models import Job, Prediction


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands back naive datetimes that were stored as UTC)."""
    if ts is None:
        return None
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).isoformat()


def job_links(job_id: str) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "report": f"{base}/report.pdf", "fhir": f"{base}/fhir"}


def reported_prediction(session: Session, job_id: str) -> Prediction | None:
    """The prediction the report shows (not a shadow model's)."""
    return session.execute(
        select(Prediction).where(Prediction.job_id == job_id, Prediction.shadow.is_(False))
        .order_by(Prediction.created_at.desc()).limit(1)
    ).scalar_one_or_none()


def job_view(session: Session, job_id: str) -> dict | None:
    """The JSON body of ``GET /v1/jobs/{job_id}``; None for an unknown job."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    view: dict = {
        "job_id": job.id,
        "state": job.state,
        "attempts": job.attempts,
        "created_at": iso(job.created_at),
        "queued_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "links": job_links(job.id),
    }
    if job.state in (JobState.REJECTED.value, JobState.FAILED.value):
        view["error_code"], view["error"] = job.error_code, job.error
    prediction = reported_prediction(session, job.id) if job.state == JobState.DONE.value else None
    if prediction is not None:
        triage = TriageLevel(prediction.triage_level)
        view.update({
            "triage": triage.value,
            "triage_wording": triage.wording,
            "predicted_class": prediction.predicted_class,
            "melanoma_probability": prediction.p_melanoma,
            "probabilities": prediction.probabilities(),
            "image_usable": prediction.image_usable,
            "model_version": prediction.model_version,
        })
    return view
