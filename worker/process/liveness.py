"""Liveness that proves progress: a probe task round trip per worker role, with a deadline.

A process that exists is not a worker that works: a Celery worker whose pool is stuck
(billiard issue 104) answers pings and takes one message, and nothing runs. So ``run``
sends each worker role (triage, deliver, maintenance) a no-op task on a queue of its own
every ``health_probe_interval_s``; the task records its answer in ``role_health``. A probe
unanswered for its role's deadline means the role is down: the supervisor kills the
worker and starts it again, and ``/healthz``, ``status`` and ``/metrics`` say so. Beat is
down when its tick (every reconcile period, recorded by the maintenance worker) stops
coming while the maintenance worker is up; it is restarted the same way.

Deadlines: a triage worker (concurrency 1) answers after the image it is on, so its
deadline, ``health_probe_timeout_s`` (60 s), must exceed a worker's start-up and the
slowest image. A deliver worker waits through a destination's retries inside its task,
so its deadline adds the delivery task's time limit.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from schemas import JobState
from worker.db import role_health
from worker.db.models import Job
from worker.db.role_health import PROBED_ROLES, Verdict
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Supervised child -> the health role it serves (``worker.process.service`` names).
CHILD_ROLES = {"worker": "triage", "maintenance-worker": "maintenance", "deliver-worker": "deliver",
               "retrain-worker": "retrain", "beat": "beat", "dicom": "dicom", "http": "http"}
ROLE_CHILDREN = {role: child for child, role in CHILD_ROLES.items()}


def probe_timeouts(settings: Settings) -> dict[str, float]:
    """Seconds each probed role may take to answer before it counts as down."""
    from worker.results.redelivery import delivery_time_limit_s

    timeout = settings.health_probe_timeout_s
    return {"triage": timeout, "maintenance": timeout,
            "deliver": timeout + delivery_time_limit_s(settings)}


def beat_max_age_s(settings: Settings) -> float:
    """Beat ticks every reconcile period: three missed ticks plus the probe deadline."""
    return 3 * settings.reconcile_interval_s + settings.health_probe_timeout_s


def role_verdicts(settings: Settings, sessions: sessionmaker[Session],
                  now: datetime | None = None) -> dict[str, Verdict]:
    """Every recorded role, judged with its own deadline (empty if no ``run`` recorded any)."""
    now = now or datetime.now(timezone.utc)
    timeouts = probe_timeouts(settings)
    rows = role_health.load(sessions)
    return {role: role_health.evaluate(row, now, timedelta(seconds=timeouts.get(role, settings.health_probe_timeout_s)),
                                       timedelta(seconds=beat_max_age_s(settings)))
            for role, row in sorted(rows.items())}


class LivenessProber:
    """Sends the probes and says which roles missed their deadline (call :meth:`check`
    every few seconds; it sends at most one outstanding probe per role)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session],
                 send_probe: Callable[[str, str], None],
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 roles: tuple[str, ...] = PROBED_ROLES) -> None:
        """``roles``: the probed roles this host runs (``run --roles``)."""
        self.settings = settings
        self.roles = roles
        self.sessions = sessions
        self.send_probe = send_probe
        self.clock = clock
        self.interval = timedelta(seconds=settings.health_probe_interval_s)

    def check(self) -> dict[str, str]:
        """Send the probes that are due; returns ``{role: why}`` for each role that is down."""
        now = self.clock()
        rows = role_health.load(self.sessions)
        verdicts = role_verdicts(self.settings, self.sessions, now)
        failing = {}
        for role in self.roles:
            row = rows.get(role)
            verdict = verdicts.get(role)
            if verdict is not None and verdict.stuck and row.process_state == role_health.RUNNING:
                failing[role] = verdict.detail
                continue
            outstanding = row is not None and row.probe_id and row.answered_id != row.probe_id
            sent = role_health.aware(row.probe_sent_at) if row is not None else None
            if not outstanding and (sent is None or now - sent >= self.interval):
                self._send(role, now)
        beat, maintenance = verdicts.get(role_health.BEAT), verdicts.get("maintenance")
        # Beat's ticks reach us through the maintenance worker: only while that one is up
        # does a missing tick mean that beat is stuck.
        if "maintenance" in self.roles and beat is not None and beat.stuck \
                and maintenance is not None and maintenance.ok \
                and rows[role_health.BEAT].process_state == role_health.RUNNING:
            failing[role_health.BEAT] = beat.detail
        return failing

    def _send(self, role: str, now: datetime) -> None:
        probe_id = uuid.uuid4().hex
        try:
            self.send_probe(role, probe_id)
        except Exception as exc:  # noqa: BLE001 - the broker's health is checked on its own
            log.warning("liveness probe for %s not sent (%s)", role, type(exc).__name__)
            return
        role_health.record_probe_sent(self.sessions, role, probe_id, now)

    def restarted(self, role: str) -> None:
        """Its process was restarted: a probe goes out at once and has its full deadline
        (beat: its ticks are waited for as long as after a tick)."""
        if role == role_health.BEAT:
            role_health.record_answer(self.sessions, role, role_health.BEAT_STARTED, self.clock())
        else:
            role_health.clear_probe(self.sessions, role)


def resend_oldest_queued(sessions: sessionmaker[Session], send: Callable[[str], None],
                         before: datetime, limit: int) -> int:
    """After a triage worker died or was restarted: send the ``limit`` oldest queued jobs
    again. The embedded broker deletes a message when it is fetched, so the one a dead
    worker had taken but not started (at most one per pool slot, the oldest: the queue is
    first in, first out) would otherwise wait for the reconciler's stale period (10 min).
    A copy of a job that is still queued costs the worker one lookup."""
    now = datetime.now(timezone.utc)
    with sessions.begin() as s:
        ids = s.execute(select(Job.id).where(Job.state == JobState.QUEUED.value,
                                             Job.last_sent_at < before)
                        .order_by(Job.last_sent_at).limit(limit)).scalars().all()
        claimed = [job_id for job_id in ids if s.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED.value)
            .values(last_sent_at=now, sent_count=Job.sent_count + 1)
            .execution_options(synchronize_session=False)).rowcount == 1]
    for job_id in claimed:
        send(job_id)
    if claimed:
        log.warning("triage worker restarted: sent the %d oldest queued job(s) again", len(claimed))
    return len(claimed)
