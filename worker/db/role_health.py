"""The health of each role of a running service, as ``melanoma-triage run`` last saw it.

One row per role: the worker roles (triage, deliver, maintenance) with the liveness probe
last sent to them and the last one they answered (a no-op task round trip through the
broker and the pool: a worker that only looks alive never answers); beat with the last
tick the maintenance worker recorded; and every supervised process with its state
(running, restarting, crash-looping, stopped) and restarts.

Health is judged from these timestamps at read time (:func:`evaluate`), the same way by
``/healthz``, ``melanoma-triage status``, ``/metrics`` and the supervisor, so a role whose
prober stopped looking cannot stay "ok" by default. Nothing here imports Celery.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from worker.db.models import Base, utcnow

#: Worker roles that answer probe tasks, each on its own queue ``probe.<role>``.
PROBED_ROLES = ("triage", "deliver", "maintenance")
BEAT = "beat"
#: ``answered_id`` of beat's row when run (re)started it: its ticks are due from then on.
BEAT_STARTED = "started"
#: The supervising process itself (run's main process: intake watcher and supervisor).
SUPERVISOR = "supervisor"
RUNNING, RESTARTING, CRASH_LOOPING, STOPPED = "running", "restarting", "crash-looping", "stopped"


class RoleHealth(Base):
    __tablename__ = "role_health"

    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    probe_id: Mapped[str | None] = mapped_column(String(36))
    probe_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    answered_id: Mapped[str | None] = mapped_column(String(36))
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    process_state: Mapped[str | None] = mapped_column(String(16))
    restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    detail: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class Verdict:
    """``ok``: up. ``stuck``: down *and* overdue (a probe or beat's tick past its deadline
    while the process runs): the supervisor restarts it. A role that is starting is down
    (it has not yet shown it works) but not stuck."""

    role: str
    ok: bool
    detail: str
    restarts: int = 0
    stuck: bool = False

    def as_dict(self) -> dict:
        return {"ok": self.ok, "detail": self.detail, "restarts": self.restarts}


def aware(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=timezone.utc) if ts is not None and ts.tzinfo is None else ts


def _row(s: Session, role: str) -> RoleHealth:
    row = s.get(RoleHealth, role)
    if row is None:
        row = RoleHealth(role=role, restarts=0)
        s.add(row)
    return row


def record_probe_sent(sessions: sessionmaker[Session], role: str, probe_id: str,
                      now: datetime | None = None) -> None:
    with sessions.begin() as s:
        row = _row(s, role)
        row.probe_id, row.probe_sent_at = probe_id, now or utcnow()
        row.updated_at = now or utcnow()


def record_answer(sessions: sessionmaker[Session], role: str, probe_id: str,
                  now: datetime | None = None) -> None:
    """A role answered (a probe task ran; for beat: its tick arrived)."""
    with sessions.begin() as s:
        row = _row(s, role)
        row.answered_id, row.answered_at = probe_id, now or utcnow()


def record_process(sessions: sessionmaker[Session], role: str, state: str, restarts: int,
                   detail: str | None, now: datetime | None = None) -> None:
    """What the supervisor sees of a role's process."""
    with sessions.begin() as s:
        row = _row(s, role)
        row.process_state, row.restarts, row.detail = state, restarts, (detail or None)
        row.updated_at = now or utcnow()
        if state == STOPPED:  # a stopped service has no outstanding probe
            row.probe_id = row.answered_id


def clear_probe(sessions: sessionmaker[Session], role: str) -> None:
    """Forget an outstanding probe (its worker was restarted): the role is starting until it
    answers the next one, which is sent at once and has its full deadline."""
    with sessions.begin() as s:
        row = _row(s, role)
        row.probe_id, row.probe_sent_at = None, None  # the next check sends one at once
        row.answered_id = None


def load(sessions: sessionmaker[Session]) -> dict[str, RoleHealth]:
    with sessions() as s:
        rows = s.execute(select(RoleHealth)).scalars().all()
        s.expunge_all()
    return {r.role: r for r in rows}


def evaluate(row: RoleHealth, now: datetime, probe_timeout: timedelta,
             beat_max_age: timedelta) -> Verdict:
    """Is this role up? Down when its process is not running, when its probe has waited
    longer than ``probe_timeout`` for an answer, or (beat) when no tick came recently."""
    restarts = row.restarts or 0
    if row.process_state == STOPPED:
        return Verdict(row.role, False, "stopped", restarts)
    if row.process_state in (RESTARTING, CRASH_LOOPING):
        return Verdict(row.role, False, row.detail or row.process_state, restarts)
    if row.role == BEAT:  # answered_at: its last tick, or its (re)start ("restarted")
        last = aware(row.answered_at)
        if last is None:
            return Verdict(row.role, False, "starting: no tick yet", restarts)
        if now - last > beat_max_age:
            return Verdict(row.role, False, f"no tick for {(now - last).total_seconds():.0f} s",
                           restarts, stuck=True)
        if row.answered_id == BEAT_STARTED:
            return Verdict(row.role, False, "starting: no tick yet since its start", restarts)
        return Verdict(row.role, True, "ticking", restarts)
    if row.role == SUPERVISOR:
        last = aware(row.updated_at)
        if last is not None and now - last > probe_timeout:
            return Verdict(row.role, False, f"not reporting for {(now - last).total_seconds():.0f} s",
                           restarts)
        return Verdict(row.role, True, "supervising", restarts)
    if row.role not in PROBED_ROLES:  # a door, the retrain worker: its process runs
        return Verdict(row.role, True, row.process_state or "running", restarts)
    sent = aware(row.probe_sent_at)
    if row.probe_id and row.answered_id != row.probe_id and sent is not None:
        waited = now - sent
        if waited > probe_timeout:
            return Verdict(row.role, False, f"liveness probe unanswered for {waited.total_seconds():.0f} s",
                           restarts, stuck=True)
    answered = aware(row.answered_at)
    if row.answered_id is None or answered is None:  # (re)started, no work shown yet
        return Verdict(row.role, False, "starting: no probe answered yet", restarts)
    return Verdict(row.role, True, f"probe answered {(now - answered).total_seconds():.0f} s ago",
                   restarts)


def verdicts(sessions: sessionmaker[Session], probe_timeout_s: float, beat_max_age_s: float,
             now: datetime | None = None) -> dict[str, Verdict]:
    """Every recorded role's verdict (empty when no supervisor has ever recorded one)."""
    now = now or datetime.now(timezone.utc)
    return {role: evaluate(row, now, timedelta(seconds=probe_timeout_s), timedelta(seconds=beat_max_age_s))
            for role, row in sorted(load(sessions).items())}
