"""Has this site drifted away from what the model was validated on? No labels needed.

The window is the latest ``window`` (200) predictions reported by the current model version
(shadow runs left out). They are compared with the version's reference
(``worker.monitor.reference``):

* **urgent rate** among usable images against the rate the validation images give under the
  version's own thresholds: a warning when the gap exceeds both ``RATE_GAP`` (0.10) and three
  binomial standard errors, e.g. "urgent rate 0.86 over the last 200 images, 0.45 expected";
* **unusable share** (quality gate, "not a dermoscopy image") the same way;
* **melanoma probability distribution** and, when asked (it reads the archived images),
  **brightness, contrast, saturation, red-blue balance**: population stability index (PSI)
  over the reference's ten quantile bins; >= ``PSI_WARN`` (0.25) is a shift, >= ``PSI_NOTE``
  (0.10) a moderate change (the usual reading of PSI in credit-risk monitoring).

A site that drifts needs calibration (``melanoma-triage calibrate``) before any label
arrives. No Celery, no TensorFlow: ``status``, ``metrics`` and a periodic check call this.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schemas import SOON_CLASSES, TriageLevel
from worker.db.models import Image, Job, Prediction
from worker.monitor.reference import IMAGE_STATISTICS, Reference, bin_counts, load_reference
from worker.store.versions import ModelStore

log = logging.getLogger(__name__)

#: Latest predictions compared (the rolling window).
WINDOW = 200
#: Images of a site's own traffic that a site-calibrated version's reference is made of.
TRAFFIC_REFERENCE_IMAGES = 1000
#: Fewer usable images than this in the window: too early to judge.
MIN_IMAGES = 50
#: PSI from which a distribution has shifted (warning) / changed moderately (note).
PSI_WARN, PSI_NOTE = 0.25, 0.10
#: A rate differs when the gap exceeds this and RATE_SIGMAS binomial standard errors.
RATE_GAP, RATE_SIGMAS = 0.10, 3.0


def psi(expected: np.ndarray, actual_counts: np.ndarray) -> float:
    """Population stability index sum((a - e) ln(a / e)); live counts get half a count per
    bin so that an empty bin costs a finite amount."""
    e = np.clip(np.asarray(expected, dtype=np.float64), 1e-4, None)
    e = e / e.sum()
    c = np.asarray(actual_counts, dtype=np.float64) + 0.5
    a = c / c.sum()
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Finding:
    """One compared quantity."""

    name: str
    live: float | None
    expected: float | None
    psi: float | None
    level: str  # "ok" | "note" | "warn"
    message: str


@dataclass
class ShiftReport:
    version: str | None
    window: int
    n: int
    n_usable: int
    reference: str | None
    findings: list[Finding] = field(default_factory=list)
    problem: str | None = None  # why nothing was compared

    @property
    def warnings(self) -> list[str]:
        return [f.message for f in self.findings if f.level == "warn"]

    def as_dict(self) -> dict:
        return {"version": self.version, "window": self.window, "n": self.n, "n_usable": self.n_usable,
                "reference": self.reference, "problem": self.problem, "warnings": self.warnings,
                "findings": [asdict(f) for f in self.findings]}


@dataclass(frozen=True)
class LiveRow:
    melanoma: float
    keratinocyte: float
    top: float
    level: str
    usable: bool
    archive_path: str | None


def live_window(session: Session, version: str | list[str], window: int = WINDOW) -> list[LiveRow]:
    """The latest ``window`` reported predictions of ``version`` (or of any of a list of
    versions), newest first."""
    versions = [version] if isinstance(version, str) else list(version)
    rows = session.execute(
        select(Prediction, Image.archive_path)
        .join(Job, Job.id == Prediction.job_id).join(Image, Image.id == Job.image_id)
        .where(Prediction.model_version.in_(versions), Prediction.shadow.is_(False))
        .order_by(Prediction.created_at.desc()).limit(window)
    ).all()
    out = []
    for pred, archive_path in rows:
        probs = pred.probabilities()
        out.append(LiveRow(melanoma=pred.p_melanoma, keratinocyte=sum(probs[c] for c in SOON_CLASSES),
                           top=max(probs.values()), level=pred.triage_level, usable=bool(pred.image_usable),
                           archive_path=archive_path))
    return out


def _rate_finding(name: str, label: str, hits: int, n: int, expected: float) -> Finding:
    live = hits / n if n else 0.0
    se = math.sqrt(max(expected * (1 - expected), 1e-6) / max(1, n))
    gap = abs(live - expected)
    differs = gap > RATE_GAP and gap > RATE_SIGMAS * se
    message = f"{label} {live:.2f} over the last {n} images, {expected:.2f} expected"
    return Finding(name, round(live, 4), round(expected, 4), None, "warn" if differs else "ok", message)


def _psi_finding(name: str, label: str, values: np.ndarray, dist: dict, unit: str = "") -> Finding:
    value = psi(dist["fractions"], bin_counts(values, dist["edges"]))
    level = "warn" if value >= PSI_WARN else "note" if value >= PSI_NOTE else "ok"
    live_mean = float(np.mean(values)) if len(values) else None
    fmt = (lambda x: f"{x:.3f}") if unit == "p" else (lambda x: f"{x:.0f}" if abs(x) >= 10 else f"{x:.2f}")
    message = (f"{label} distribution {'shifted' if level == 'warn' else 'changed' if level == 'note' else 'stable'}"
               f": PSI {value:.2f} over the last {len(values)} images (mean {fmt(live_mean)}, "
               f"{fmt(dist['mean'])} expected)")
    return Finding(name, live_mean, dist["mean"], round(value, 4), level, message)


def _archived_statistics(path: str | None, bind=None) -> dict[str, float] | None:
    """Colour statistics of one archived image; None when it is gone or unreadable."""
    from worker.imaging.colour_statistics import colour_statistics
    from worker.imaging.decode import decode_bytes
    from worker.intake import archive

    if not path:
        return None
    try:
        return colour_statistics(decode_bytes(archive.load(path, bind)).rgb)
    except Exception:  # a moved archive or a corrupt file: this monitor never fails a command
        return None


def _image_statistics(paths: list[str], bind=None) -> dict[str, np.ndarray]:
    """Colour statistics of archived images (unreadable or missing files skipped); ``bind``:
    the database that holds ``db:`` locations (``TRIAGE_STORAGE=database``)."""
    values: dict[str, list[float]] = {k: [] for k in IMAGE_STATISTICS}
    for stats in filter(None, (_archived_statistics(p, bind) for p in paths)):
        for k in IMAGE_STATISTICS:
            values[k].append(stats[k])
    return {k: np.asarray(v) for k, v in values.items()}


def traffic_reference(sessions: sessionmaker[Session], versions: list[str], new_version: str, thresholds,
                      n: int = TRAFFIC_REFERENCE_IMAGES, min_images: int = WINDOW) -> dict | None:
    """A reference made of this site's own recent traffic (the latest ``n`` reported
    predictions of ``versions``, with their archived images' statistics), for a version
    calibrated on this site: from then on the monitor watches for drift *from the site*, not
    from the validation data. ``new_version``: the version it is for (``calibration.site.
    write_version`` writes the final name in). None with fewer than ``min_images`` images."""
    from worker.monitor.reference import ImageRecord, build_reference

    with sessions() as s:
        rows = live_window(s, versions, n)
    records = []
    for r in rows:
        stats = _archived_statistics(r.archive_path, sessions.kw.get("bind"))
        if stats is not None:
            records.append(ImageRecord(r.melanoma, r.keratinocyte, r.top, r.usable,
                                       {k: stats[k] for k in IMAGE_STATISTICS}))
    if len(records) < min_images:
        return None
    return build_reference(new_version, records, thresholds,
                           f"site traffic: the latest {len(records)} images reported by {', '.join(versions)}")


def compare(reference: Reference, thresholds, rows: list[LiveRow], window: int = WINDOW,
            images: bool = False, version: str | None = None, bind=None) -> ShiftReport:
    """Findings for ``rows`` (``live_window``) against ``reference`` under ``thresholds``."""
    usable = [r for r in rows if r.usable]
    report = ShiftReport(version=version, window=window, n=len(rows), n_usable=len(usable),
                         reference=reference.version)
    if len(usable) < MIN_IMAGES:
        report.problem = f"too little traffic to judge: {len(usable)} usable images, {MIN_IMAGES} needed"
        return report
    expected = reference.expected_rates(thresholds)
    n_urgent = sum(r.level == TriageLevel.URGENT.value for r in usable)
    report.findings.append(_rate_finding("urgent_rate", "urgent rate", n_urgent, len(usable), expected["urgent"]))
    report.findings.append(_rate_finding("unusable_rate", "share of unusable images",
                                         len(rows) - len(usable), len(rows), expected["unusable"]))
    report.findings.append(_psi_finding("melanoma_probability", "melanoma probability",
                                        np.array([r.melanoma for r in usable]),
                                        reference.distribution("melanoma_probability"), unit="p"))
    if images:
        stats = _image_statistics([r.archive_path for r in rows if r.archive_path], bind)
        for name in IMAGE_STATISTICS:
            if len(stats[name]) >= MIN_IMAGES:
                report.findings.append(_psi_finding(name, f"image {name.replace('_', '-')}", stats[name],
                                                    reference.distribution(name)))
    return report


def check(sessions: sessionmaker[Session], store: ModelStore, window: int = WINDOW,
          images: bool = False) -> ShiftReport:
    """The current version's window against its reference (the one call callers need)."""
    version = store.current_version()
    if version is None:
        return ShiftReport(None, window, 0, 0, None, problem="no current model version")
    reference = load_reference(store, version)
    if reference is None:
        return ShiftReport(version, window, 0, 0, None,
                           problem=f"model {version} has no reference.json: run `melanoma-triage monitor "
                                   f"reference {version} --data DIR`")
    with sessions() as s:
        rows = live_window(s, version, window)
    return compare(reference, store.metadata(version).thresholds, rows, window, images, version,
                   sessions.kw.get("bind"))


def warn_if_shifted(sessions: sessionmaker[Session], store: ModelStore, window: int = WINDOW,
                    logger: logging.Logger = log) -> ShiftReport:
    """``check`` and one WARNING log line per shifted quantity (for a periodic task)."""
    report = check(sessions, store, window)
    for message in report.warnings:
        logger.warning("site shift (model %s): %s; consider `melanoma-triage calibrate`",
                       report.version, message)
    return report


def status_summary(database_url: str, store_root, window: int = WINDOW) -> dict:
    """``check`` for a command that holds no engine (``status``): JSON-able, never raises for
    a missing reference or too little traffic (it says so in ``problem``)."""
    from worker.db.engine import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        return check(make_session_factory(engine), ModelStore(store_root), window).as_dict()
    finally:
        engine.dispose()


def format_lines(report: ShiftReport | dict) -> list[str]:
    """Lines for ``status`` and ``metrics``: a heading, then one line per finding."""
    d = report.as_dict() if isinstance(report, ShiftReport) else report
    head = f"Site shift (model {d['version'] or 'none'}, last {d['window']} images):"
    if d["problem"]:
        return [head, f"  {d['problem']}"]
    marks = {"warn": "WARNING", "note": "note", "ok": "ok"}
    return [head] + [f"  {marks[f['level']]:<7} {f['message']}" for f in d["findings"]]
