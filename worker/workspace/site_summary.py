"""What the site page shows: the urgent rate over time against the model's reference, the
shift monitor's findings, sensitivity/specificity/PPV per version on confirmed cases, and
how far the site is from the evidence ``melanoma-triage calibrate`` needs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schemas import MELANOMA, TriageLevel
from worker.calibration.site import SitePolicy
from worker.db.models import Prediction, utcnow
from worker.monitor import shift
from worker.monitor.reference import load_reference
from worker.retrain import truth
from worker.store.versions import ModelStore
from worker.workspace.charts import SeriesChart, rate_chart

#: Days of traffic the urgent-rate chart covers.
CHART_DAYS = 84
CALIBRATE_COMMAND = "melanoma-triage calibrate --dry-run   # then without --dry-run to add the version"


@dataclass(frozen=True)
class Readiness:
    melanomas: int
    others: int
    needed_melanomas: int
    needed_others: int

    @property
    def ready(self) -> bool:
        return self.melanomas >= self.needed_melanomas and self.others >= self.needed_others

    @property
    def sentence(self) -> str:
        return (f"{self.melanomas} of {self.needed_melanomas} confirmed melanomas, "
                f"{self.others} of {self.needed_others} other lesions")


@dataclass
class SiteSummary:
    version: str | None
    chart: SeriesChart | None
    series: list[tuple[str, float, int]]
    reference_rate: float | None
    reference_note: str
    shift: dict
    metrics: dict
    readiness: Readiness
    command: str = CALIBRATE_COMMAND


def _day(ts: datetime) -> date:
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).date()


def urgent_series(session: Session, days: int = CHART_DAYS) -> list[tuple[str, float, int]]:
    """(period, urgent share of usable reported images, images) oldest first: per day when the
    traffic spans up to four weeks, else per ISO week."""
    since = utcnow() - timedelta(days=days)
    rows = session.execute(select(Prediction.created_at, Prediction.triage_level)
                           .where(Prediction.shadow.is_(False), Prediction.image_usable.is_(True),
                                  Prediction.created_at >= since)).all()
    if not rows:
        return []
    span = (max(_day(t) for t, _ in rows) - min(_day(t) for t, _ in rows)).days
    weekly = span > 28

    def period(ts: datetime) -> str:
        d = _day(ts)
        if weekly:
            year, week, _ = d.isocalendar()
            return f"{year}-W{week:02d}"
        return d.isoformat()

    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ts, level in rows:
        c = counts[period(ts)]
        c[0] += level == TriageLevel.URGENT.value
        c[1] += 1
    return [(p, urgent / n, n) for p, (urgent, n) in sorted(counts.items())]


def readiness(session: Session, policy: SitePolicy = SitePolicy()) -> Readiness:
    """Confirmed cases with an archived image (``calibrate`` scores those no model has)."""
    cases = truth.confirmed_cases(session)
    melanomas = sum(c.diagnosis == MELANOMA for c in cases)
    return Readiness(melanomas, len(cases) - melanomas, policy.min_melanoma, policy.min_benign)


def _reference(store: ModelStore, version: str | None) -> tuple[float | None, str]:
    if version is None:
        return None, "no current model version"
    reference = load_reference(store, version)
    if reference is None:
        return None, f"model {version} has no reference.json (melanoma-triage monitor reference)"
    rate = reference.expected_rates(store.metadata(version).thresholds)["urgent"]
    return rate, f"{100 * rate:.1f} % of usable images are urgent on the reference of {version} ({reference.version})"


def site_summary(sessions: sessionmaker[Session], store: ModelStore) -> SiteSummary:
    version = store.current_version()
    reference_rate, note = _reference(store, version)
    with sessions() as s:
        series = urgent_series(s)
        metrics = truth.triage_metrics(s)
        ready = readiness(s)
    report = shift.check(sessions, store, shift.WINDOW, images=False).as_dict()
    return SiteSummary(version=version, chart=rate_chart(series, reference_rate) if series else None,
                       series=series, reference_rate=reference_rate, reference_note=note, shift=report,
                       metrics=metrics, readiness=ready)
