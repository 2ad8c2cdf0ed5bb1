"""What a finished job holds, read once from the database: the one input of every result
builder (DICOM, FHIR, webhook), so none of them queries tables itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas import MELANOMA, ImageMetadata, JobState, TriageLevel
from worker.db.models import Image, Job, Prediction, Report
from worker.storage.blobs import StoredFile


@dataclass(frozen=True)
class FinishedJob:
    """A done job's result and the identifiers of its image (caller metadata over file tags)."""

    job_id: str
    metadata: ImageMetadata
    model_version: str
    probabilities: dict[str, float]
    predicted_class: str
    triage: TriageLevel
    image_usable: bool
    report_path: StoredFile | Path  # read with read_bytes(): a file, or a blob (worker.storage)
    report_sha256: str
    archive_path: StoredFile | Path | None
    image_sha256: str | None
    source_format: str | None  # "dicom" | "jpeg" | "png"
    received_at: datetime
    finished_at: datetime
    calling_ae_title: str | None = None  # the AE that sent it over DICOM, if any

    @property
    def melanoma_probability(self) -> float:
        return float(self.probabilities[MELANOMA])

    @property
    def is_dicom_input(self) -> bool:
        return self.source_format == "dicom"


def _aware(ts: datetime | None) -> datetime:
    ts = ts or datetime.now(timezone.utc)
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def load_finished_job(session: Session, job_id: str) -> FinishedJob | None:
    """None unless the job is done and has its reported (non-shadow) prediction and report.

    One SELECT (job, image, report, the latest non-shadow prediction and the calling AE as a
    correlated subquery) instead of five: this runs once per delivered job.
    """
    from worker.db.integration import DicomInstance

    calling_ae = (
        select(DicomInstance.calling_ae_title)
        .where(DicomInstance.job_id == Job.id, DicomInstance.calling_ae_title.is_not(None))
        .order_by(DicomInstance.received_at)
        .limit(1)
        .scalar_subquery()
    )
    row = session.execute(
        select(Job, Image, Report, Prediction, calling_ae)
        .join(Image, Image.id == Job.image_id)
        .join(Report, Report.job_id == Job.id)
        .join(Prediction, (Prediction.job_id == Job.id) & Prediction.shadow.is_(False))
        .where(Job.id == job_id, Job.state == JobState.DONE.value)
        .order_by(Prediction.created_at.desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        return None
    job, image, report, prediction, calling_ae_title = row
    bind = session.get_bind()
    metadata = ImageMetadata(**{field: getattr(image, field) for field in ImageMetadata.model_fields})
    return FinishedJob(
        job_id=job.id,
        metadata=metadata,
        model_version=prediction.model_version,
        probabilities=prediction.probabilities(),
        predicted_class=prediction.predicted_class,
        triage=TriageLevel(prediction.triage_level),
        image_usable=prediction.image_usable,
        report_path=StoredFile(report.path, bind),
        report_sha256=report.sha256,
        archive_path=StoredFile(image.archive_path, bind) if image.archive_path else None,
        image_sha256=image.sha256,
        source_format=image.source_format,
        received_at=_aware(image.received_at),
        finished_at=_aware(job.finished_at),
        calling_ae_title=calling_ae_title,
    )
