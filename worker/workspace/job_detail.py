"""What the job page shows and the two things a clinician does there: mark the result
reviewed, and record the confirmed diagnosis (the same ground truth as ``melanoma-triage
label``: ``worker.retrain.truth.add_label``, counted by ``metrics``, used by ``calibrate``
and retraining)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas import CLASS_NAMES, MELANOMA, SOON_CLASSES, TriageLevel, TriageThresholds
from schemas.classes import DISPLAY_NAMES
from worker.classify.triage import explain, percent
from worker.db.deliveries import Delivery
from worker.db.models import GroundTruth, Job, Prediction, Submission, utcnow
from worker.db.workspace import JobReview
from worker.doors.job_view import reported_prediction
from worker.errors import ModelNotAvailable
from worker.retrain import truth
from worker.store.versions import ModelStore
from worker.workspace.charts import Bar, bar


def _aware(ts: datetime | None) -> datetime | None:
    return ts if ts is None or ts.tzinfo else ts.replace(tzinfo=timezone.utc)


@dataclass
class JobDetail:
    job: Job
    prediction: Prediction | None
    thresholds: TriageThresholds | None
    explanation: str | None
    class_bars: list[Bar] = field(default_factory=list)
    rule_bars: list[Bar] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    review: JobReview | None = None
    labels: list[GroundTruth] = field(default_factory=list)
    effective: tuple[str, str] | None = None
    shadow: list[Prediction] = field(default_factory=list)

    @property
    def image(self):
        return self.job.image

    @property
    def triage(self) -> TriageLevel | None:
        return TriageLevel(self.prediction.triage_level) if self.prediction is not None else None


def _thresholds(store: ModelStore, version: str) -> TriageThresholds | None:
    try:
        return store.metadata(version).thresholds
    except (ModelNotAvailable, OSError, ValueError):
        return None


def _explanation(pred: Prediction, thresholds: TriageThresholds | None) -> str:
    level = TriageLevel(pred.triage_level)
    if not pred.image_usable:
        return "The image is not usable for automated triage: the quality check refused it (see the report)."
    if thresholds is None:
        return f"{level.wording} (the thresholds of model {pred.model_version} are not in this store)."
    return explain(pred.probabilities(), thresholds, level)


def _bars(pred: Prediction, thresholds: TriageThresholds | None) -> tuple[list[Bar], list[Bar]]:
    probs = pred.probabilities()
    classes = [bar(DISPLAY_NAMES.get(c, c), probs[c]) for c in CLASS_NAMES]
    if thresholds is None:
        return classes, []
    rules = [
        bar("Melanoma", probs[MELANOMA], thresholds.urgent_melanoma,
            f"urgent threshold {percent(thresholds.urgent_melanoma)}"),
        bar("BCC + SCC + actinic keratosis", sum(probs[c] for c in SOON_CLASSES), thresholds.soon_keratinocyte,
            f"soon threshold {percent(thresholds.soon_keratinocyte)}"),
        bar("Most probable class", max(probs.values()), thresholds.min_confidence,
            f"confidence floor {percent(thresholds.min_confidence)}", alert_below=True),
    ]
    return classes, rules


def load_job(session: Session, store: ModelStore, job_id: str) -> JobDetail | None:
    """Everything the job page shows; None for an unknown job. Objects stay usable after the
    session closes (the caller renders them): relationships are loaded here."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    _ = job.image, job.report
    pred = reported_prediction(session, job_id)
    thresholds = _thresholds(store, pred.model_version) if pred is not None else None
    detail = JobDetail(job=job, prediction=pred, thresholds=thresholds,
                       explanation=_explanation(pred, thresholds) if pred is not None else None)
    if pred is not None:
        detail.class_bars, detail.rule_bars = _bars(pred, thresholds)
    detail.submissions = list(session.scalars(select(Submission).where(Submission.job_id == job_id)
                                              .order_by(Submission.received_at)))
    detail.deliveries = list(session.scalars(select(Delivery).where(Delivery.job_id == job_id)
                                             .order_by(Delivery.created_at)))
    detail.review = session.get(JobReview, job_id)
    detail.labels = list(session.scalars(select(GroundTruth).where(GroundTruth.image_id == job.image_id)
                                         .order_by(GroundTruth.recorded_at)))
    detail.effective = effective_label(detail.labels)
    detail.shadow = list(session.scalars(select(Prediction).where(Prediction.job_id == job_id,
                                                                  Prediction.shadow.is_(True))))
    session.expunge_all()
    return detail


def effective_label(labels: list[GroundTruth]) -> tuple[str, str] | None:
    """(diagnosis, source) that counts for one image: the rule of ``truth.effective_truth``
    (the strongest source, then the latest within it)."""
    if not labels:
        return None
    rank = {s.value: i for i, s in enumerate(truth.SOURCES)}
    best = min(labels, key=lambda g: (rank.get(g.source, len(rank)), -_aware(g.recorded_at).timestamp()))
    return best.diagnosis, best.source


def mark_reviewed(session: Session, job_id: str, user: str) -> None:
    """Who looked at the result, and when (a second mark replaces the first)."""
    review = session.get(JobReview, job_id)
    if review is None:
        session.add(JobReview(job_id=job_id, reviewed_by=user, reviewed_at=utcnow()))
    else:
        review.reviewed_by, review.reviewed_at = user, utcnow()


def record_diagnosis(session: Session, job_id: str, diagnosis: str, source: str, user: str) -> bool:
    """The confirmed diagnosis of this job's image, as ``label`` records it; False when the
    same (diagnosis, source) was already recorded. Raises ``truth.LabelError`` for a bad value."""
    _, added = truth.add_label(session, job_id, diagnosis, source, recorded_by=user, column="job_id")
    return added


def recorded_by(user: str) -> str:
    """``ground_truth.recorded_by`` of a diagnosis entered in the workspace."""
    return f"{user} (workspace)"[:128]
