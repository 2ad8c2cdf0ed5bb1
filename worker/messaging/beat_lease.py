"""Exactly one beat across hosts: beat schedules only while it holds the database lease
``beat`` (``worker.db.lease``). A second beat (another host, a restarted container before the
old one's lease ran out) stands by, checking every few seconds, and takes over once the
holder stops renewing: at most one lease period without a schedule, never two schedules.

Run as ``celery beat --scheduler worker.messaging.beat_lease:LeasedScheduler`` (``run`` and
compose do)."""

from __future__ import annotations

import logging

from celery.beat import PersistentScheduler

from worker.db.engine import make_engine, make_session_factory
from worker.db.lease import DbLease

log = logging.getLogger(__name__)

BEAT_LOCK = "beat"
BEAT_LEASE_S = 30.0
STANDBY_CHECK_S = 5.0


class LeasedScheduler(PersistentScheduler):
    """Celery's persistent scheduler, ticking only while this beat holds the lease."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        settings = self.app.triage_settings
        self._engine = make_engine(settings.database_url)
        self._lease = DbLease(make_session_factory(self._engine), BEAT_LOCK, ttl_s=BEAT_LEASE_S)
        self._holding = False

    def _hold(self) -> bool:
        try:
            held = self._lease.renew() if self._holding else self._lease.acquire()
        except Exception as exc:  # the database away: schedule nothing until it is back
            log.warning("beat lease not checked (%s): standing by", type(exc).__name__)
            held = False
        if held != self._holding:
            log.warning("beat: %s", "holding the lease, scheduling" if held
                        else "another beat holds the lease, standing by")
        self._holding = held
        return held

    def tick(self, *args, **kwargs) -> float:
        if not self._hold():
            return STANDBY_CHECK_S
        return min(super().tick(*args, **kwargs), BEAT_LEASE_S / 3)

    def close(self) -> None:
        try:
            if self._holding:
                self._lease.release()
        except Exception:  # noqa: BLE001 - it expires on its own
            pass
        self._engine.dispose()
        super().close()
