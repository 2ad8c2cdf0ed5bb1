"""Ground truth that comes back (histopathology, clinical follow-up, consensus) and the
triage metrics it allows per model version.

Effective truth of an image: when several labels exist, histopathology wins over consensus,
which wins over clinical; within one source the latest recorded label wins. Recording the
same (image, diagnosis, source) again is a no-op, so re-importing a CSV is harmless.

Error messages name CSV line numbers, never patient identifiers.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schemas import CLASS_NAMES, MELANOMA, SOON_CLASSES, TriageLevel, TruthSource
from worker.db.models import GroundTruth, Image, Job, Prediction
from worker.errors import TriageError

#: Sources in order of authority (first wins): the order of the TruthSource enum.
SOURCES: tuple[TruthSource, ...] = tuple(TruthSource)
#: CSV columns that can name the image, tried in this order.
REFERENCE_COLUMNS: tuple[str, ...] = ("job_id", "image_id", "sha256", "accession_number", "ref")

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class LabelError(TriageError):
    """A label that cannot be recorded (unknown image, class or source)."""


def check_diagnosis(diagnosis: str) -> str:
    d = diagnosis.strip().lower().replace(" ", "_").replace("-", "_")
    if d not in CLASS_NAMES:
        raise LabelError(f"unknown diagnosis {diagnosis!r}; expected one of {', '.join(CLASS_NAMES)}")
    return d


def check_source(source: str | TruthSource) -> TruthSource:
    """The source named by ``source`` (any case), or a LabelError that lists the valid ones."""
    try:
        return TruthSource(str(getattr(source, "value", source)).strip().lower())
    except ValueError:
        raise LabelError(f"unknown source {source!r}; expected one of "
                         f"{', '.join(s.value for s in SOURCES)}") from None


def resolve_image(session: Session, ref: str, column: str | None = None) -> str:
    """The image id for a job id, image id, content sha256 or (unique) accession number."""
    ref = ref.strip()
    low = ref.lower()
    if column in (None, "ref", "job_id") and _HEX32.match(low):
        image_id = session.scalar(select(Job.image_id).where(Job.id == low))
        if image_id:
            return image_id
    if column in (None, "ref", "image_id") and _HEX32.match(low):
        if session.get(Image, low) is not None:
            return low
    if column in (None, "ref", "sha256") and _HEX64.match(low):
        image_id = session.scalar(select(Image.id).where(Image.sha256 == low))
        if image_id:
            return image_id
    if column in (None, "ref", "accession_number") and ref:
        ids = session.scalars(select(Image.id).where(Image.accession_number == ref)).all()
        if len(ids) == 1:
            return ids[0]
        if len(ids) > 1:
            raise LabelError("accession number matches several images; use the job id")
    raise LabelError("no job or image matches the given reference")


def add_label(session: Session, ref: str, diagnosis: str, source: str | TruthSource,
              recorded_by: str, column: str | None = None) -> tuple[str, bool]:
    """(image id, added?) — False when the same label was already recorded."""
    diagnosis, source = check_diagnosis(diagnosis), check_source(source).value
    image_id = resolve_image(session, ref, column)
    exists = session.scalar(select(GroundTruth.id).where(
        GroundTruth.image_id == image_id, GroundTruth.diagnosis == diagnosis,
        GroundTruth.source == source))
    if exists:
        return image_id, False
    session.add(GroundTruth(image_id=image_id, diagnosis=diagnosis, source=source,
                            recorded_by=recorded_by))
    return image_id, True


@dataclass
class ImportReport:
    added: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (CSV line, reason)

    def as_dict(self) -> dict:
        return {"added": self.added, "unchanged": self.unchanged,
                "errors": [{"line": n, "reason": r} for n, r in self.errors]}


def import_csv(sessions: sessionmaker[Session], path: Path, recorded_by: str,
               default_source: str | TruthSource | None = None) -> ImportReport:
    """A batch from the pathology system: one reference column (see REFERENCE_COLUMNS),
    ``diagnosis`` and ``source`` (or ``default_source``). Good rows are stored even when
    others fail; each row is its own transaction."""
    report = ImportReport()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        ref_col = next((c for c in REFERENCE_COLUMNS if c in header), None)
        if ref_col is None or "diagnosis" not in header:
            raise LabelError(f"CSV needs a diagnosis column and one of {', '.join(REFERENCE_COLUMNS)}")
        if "source" not in header and default_source is None:
            raise LabelError("CSV has no source column: give --source")
        for row in reader:
            line = reader.line_num
            try:
                with sessions.begin() as s:
                    _, added = add_label(s, row.get(ref_col) or "", row.get("diagnosis") or "",
                                         row.get("source") or default_source or "",
                                         (row.get("recorded_by") or "").strip() or recorded_by,
                                         column=ref_col)
                if added:
                    report.added += 1
                else:
                    report.unchanged += 1
            except LabelError as exc:
                report.errors.append((line, str(exc)))
    return report


def effective_truth(session: Session) -> dict[str, tuple[str, str]]:
    """image id -> (diagnosis, source) under the precedence rule of this module."""
    rank = {s.value: i for i, s in enumerate(SOURCES)}
    best: dict[str, tuple[int, object, str, str]] = {}
    for gt in session.scalars(select(GroundTruth)):
        key = (rank.get(gt.source, len(SOURCES)), -gt.recorded_at.timestamp())
        cur = best.get(gt.image_id)
        if cur is None or key < cur[:2]:
            best[gt.image_id] = (*key, gt.diagnosis, gt.source)
    return {img: (v[2], v[3]) for img, v in best.items()}


@dataclass(frozen=True)
class ConfirmedCase:
    image_id: str
    sha256: str
    archive_path: str
    diagnosis: str
    source: str


def confirmed_cases(session: Session) -> list[ConfirmedCase]:
    """Images with an effective truth and an archived file, in a stable order."""
    truth = effective_truth(session)
    if not truth:
        return []
    rows = session.execute(select(Image.id, Image.sha256, Image.archive_path)
                           .where(Image.id.in_(list(truth))))
    cases = [ConfirmedCase(i, sha, path, *truth[i]) for i, sha, path in rows if sha and path]
    return sorted(cases, key=lambda c: c.sha256)


def _rates(tp: int, fp: int, fn: int, tn: int) -> dict:
    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp)}


def triage_metrics(session: Session) -> dict[str, dict]:
    """Per model version, on the cases whose truth came back; shadow runs as "<version> (shadow)":

    * ``urgent``: triaged urgent vs truth melanoma;
    * ``soon``: triaged soon vs truth in SOON_CLASSES (BCC, SCC, actinic keratosis);
    * ``referral``: triaged urgent or soon vs truth melanoma or SOON_CLASSES.

    Indeterminate predictions count as not referred (a clinician sees them anyway; their
    number is reported separately). The latest prediction of each job per version counts.
    """
    truth = effective_truth(session)
    if not truth:
        return {}
    rows = session.execute(
        select(Prediction.model_version, Prediction.shadow, Prediction.job_id,
               Prediction.triage_level, Prediction.created_at, Job.image_id)
        .join(Job, Job.id == Prediction.job_id)
        .where(Job.image_id.in_(list(truth)))
        .order_by(Prediction.created_at)
    )
    latest: dict[tuple[str, str], tuple[str, str]] = {}
    for version, shadow, job_id, level, _, image_id in rows:
        latest[(f"{version} (shadow)" if shadow else version, job_id)] = (level, image_id)
    per_version: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (version, _), (level, image_id) in latest.items():
        per_version[version].append((level, truth[image_id][0]))
    out = {}
    for version, cases in sorted(per_version.items()):
        def confusion(pred_pos, true_pos):
            c = [0, 0, 0, 0]  # tp fp fn tn
            for level, dx in cases:
                p, t = pred_pos(level), true_pos(dx)
                c[0 if p and t else 1 if p else 2 if t else 3] += 1
            return _rates(*c)

        urgent = TriageLevel.URGENT.value
        soon = TriageLevel.SOON.value
        out[version] = {
            "n": len(cases),
            "n_melanoma": sum(dx == MELANOMA for _, dx in cases),
            "n_indeterminate": sum(lv == TriageLevel.INDETERMINATE.value for lv, _ in cases),
            "urgent": confusion(lambda lv: lv == urgent, lambda dx: dx == MELANOMA),
            "soon": confusion(lambda lv: lv == soon, lambda dx: dx in SOON_CLASSES),
            "referral": confusion(lambda lv: lv in (urgent, soon),
                                  lambda dx: dx == MELANOMA or dx in SOON_CLASSES),
        }
    return out
