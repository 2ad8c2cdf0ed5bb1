"""A named lease in the database (table ``locks``): one holder at a time, across machines.

Used for one retraining at a time (``worker.retrain.cycle``) and for every change of the
model store's CURRENT pointer (``worker.store.admin.pointer_lock``).

Acquire = INSERT the row, or UPDATE it where the current lease has expired. Both are single
atomic statements on SQLite and PostgreSQL (a concurrent INSERT of the same primary key fails
with an integrity error; the conditional UPDATE matches for at most one contender), so no
broker or file lock is involved. The holder is ``host:pid:uuid``. A holder that dies stops
renewing and its lease expires after ``ttl_s``; a live holder renews it from a heartbeat
thread (``keep_alive``) and can tell whether it still holds it (``lost``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from worker.db.models import Lock, utcnow
from worker.errors import TriageError

log = logging.getLogger(__name__)

class LockHeld(TriageError):
    """Someone else holds the lease."""

    def __init__(self, name: str, holder: str | None) -> None:
        super().__init__(f"lock {name!r} is held by {holder or 'someone else'}")
        self.name = name
        self.holder = holder


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class DbLease:
    """One named lease; a context manager that raises LockHeld when someone else has it."""

    def __init__(self, sessions: sessionmaker[Session], name: str, ttl_s: float,
                 holder: str | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.sessions = sessions
        self.name = name
        self.ttl = timedelta(seconds=ttl_s)
        self.holder = holder or new_holder()
        self.lost = threading.Event()
        self._held = False

    def acquire(self) -> bool:
        now = utcnow()
        try:
            with self.sessions.begin() as s:
                s.add(Lock(name=self.name, holder=self.holder, acquired_at=now,
                           expires_at=now + self.ttl))
            self._held = True
            return True
        except IntegrityError:
            pass
        with self.sessions.begin() as s:
            res = s.execute(
                update(Lock).where(Lock.name == self.name, Lock.expires_at < now)
                .values(holder=self.holder, acquired_at=now, expires_at=now + self.ttl)
            )
            self._held = res.rowcount == 1
        if self._held:
            log.warning("lock %s: took over an expired lease", self.name)
        return self._held

    def acquire_wait(self, timeout_s: float, poll_s: float = 0.2) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.acquire():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    def renew(self) -> bool:
        """Extend the lease; False (and ``lost`` set) when it is no longer ours."""
        now = utcnow()
        with self.sessions.begin() as s:
            res = s.execute(
                update(Lock).where(Lock.name == self.name, Lock.holder == self.holder)
                .values(expires_at=now + self.ttl)
            )
        if res.rowcount != 1:
            self.lost.set()
            self._held = False
            return False
        return True

    def release(self) -> None:
        if not self._held:
            return
        with self.sessions.begin() as s:
            s.execute(delete(Lock).where(Lock.name == self.name, Lock.holder == self.holder))
        self._held = False

    def still_held(self) -> bool:
        return self._held and not self.lost.is_set() and self.renew()

    @contextmanager
    def keep_alive(self, every_s: float | None = None) -> Iterator[None]:
        """Renew from a daemon thread every ``every_s`` (default: a third of the TTL)."""
        period = every_s or self.ttl.total_seconds() / 3
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(period):
                try:
                    if not self.renew():
                        log.error("lock %s: lease lost", self.name)
                        return
                except Exception as exc:  # database briefly away: try again next beat
                    log.warning("lock %s: renewal failed: %s", self.name, type(exc).__name__)

        thread = threading.Thread(target=beat, name=f"lease-{self.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def __enter__(self) -> DbLease:
        if not self.acquire():
            raise LockHeld(self.name, current_holder(self.sessions, self.name))
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def current_holder(sessions: sessionmaker[Session], name: str) -> str | None:
    with sessions() as s:
        row = s.execute(select(Lock.holder, Lock.expires_at).where(Lock.name == name)).first()
    return None if row is None else row[0]


def lock_info(sessions: sessionmaker[Session], name: str) -> dict | None:
    with sessions() as s:
        lock = s.get(Lock, name)
        if lock is None:
            return None
        return {"name": lock.name, "holder": lock.holder,
                "acquired_at": _iso(lock.acquired_at), "expires_at": _iso(lock.expires_at)}


def _iso(ts: datetime) -> str:
    return ts.isoformat()
