"""The heartbeat of a running attempt: renews the job's lease in the database while alive.

Why a lease in the jobs table rather than the broker's acknowledgement: the embedded
filesystem broker deletes a message when it is fetched (``acks_late`` does nothing there)
and Redis gives an unacknowledged message back only after its visibility timeout (an
hour). A lease of ~20 s renewed every third of it lets the reconciler see a dead worker
within seconds, the same way on every broker.

The heartbeat stops renewing, and marks the lease lost, when the attempt has run past
the task's hard time limit or when the process that started it lost its parent (a
prefork pool child whose Celery main process was killed keeps running, but nobody will
acknowledge its work or enforce its time limit): the job is then sent again. The
pipeline asks :meth:`JobHeartbeat.check` before its side effects.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from worker.db import jobs
from worker.errors import TriageError

log = logging.getLogger(__name__)


class LeaseLost(TriageError):
    """Another attempt owns the job now (or this one outlived its limits): stop, write nothing."""


class JobHeartbeat:
    """Context manager: a daemon thread renews the lease of ``attempt`` every third of it."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, attempt: int,
                 lease_s: float, max_s: float) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.attempt = attempt
        self.lease = timedelta(seconds=lease_s)
        self.period_s = max(0.05, lease_s / 3)
        self.max_s = max_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._ppid = os.getppid()
        self._thread: threading.Thread | None = None

    def _why_stop(self) -> str | None:
        if os.getppid() != self._ppid:
            return "the worker's main process is gone"
        if time.monotonic() - self._started > self.max_s:
            return "the attempt ran past the task time limit"
        return None

    def beat(self) -> bool:
        """One renewal; False once the lease is lost (it stays lost)."""
        if self.lost.is_set():
            return False
        reason = self._why_stop()
        if reason is None:
            try:
                with self.sessions.begin() as s:
                    if jobs.renew_lease(s, self.job_id, self.attempt, self.lease):
                        return True
                reason = "another attempt took the job"
            except Exception as exc:  # the database is away: the lease runs on; try again
                log.warning("job %s: lease renewal failed (%s)", self.job_id, type(exc).__name__)
                return True
        log.warning("job %s attempt %d: lease lost (%s)", self.job_id, self.attempt, reason)
        self.lost.set()
        return False

    def check(self) -> None:
        """Raise :class:`LeaseLost` when this attempt no longer owns the job."""
        if self.lost.is_set() or self._why_stop() is not None:
            self.lost.set()
            raise LeaseLost(f"job {self.job_id}: attempt {self.attempt} no longer holds the job")

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            if not self.beat():
                return

    def __enter__(self) -> JobHeartbeat:
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.job_id[:8]}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
