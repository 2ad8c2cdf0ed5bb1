"""Celery's prefork pool, repaired for a child killed while it held the pool's queue lock.

On a broker without an event loop (the embedded filesystem broker), Celery runs billiard's
threaded ``Pool``: every child reads its tasks from one shared pipe guarded by a
process-shared lock (``SimpleQueue._rlock``), and an idle child waits for the next task in
``get()`` *holding* that lock. Killed there (``kill -9``, the OOM killer), the child never
releases it, so its replacement waits in ``SemLock.acquire`` for ever: the worker's main
process answers pings and fetches a message, and nothing runs (billiard issue 104; seen
here as a job ``queued`` for good after one ``kill -9`` of the idle child). The same holds
for the result pipe's write lock (``_wlock``) of a child killed while it wrote a result.

:class:`RepairingPool` releases such a lock when the child that held it is gone: after the
dead children are reaped and before their replacements start, while no child is alive, a
held lock can only be a dead child's. With one child (the default: ``worker_concurrency``
1) that is every child death. With several, a death among live children that hold the
lock legitimately cannot be told apart here; the liveness probe
(``worker.process.liveness``) restarts such a worker instead.

Brokers with an event loop (Redis) run Celery's ``AsynPool``, one pipe per child, which
replaces a dead child's pipes; it is left as it is. ``worker.messaging.celery_app`` makes
:class:`TaskPool` every worker's pool (``worker_pool``; ``--pool=prefork`` picks it up).
"""

from __future__ import annotations

import logging

from billiard.pool import Pool as BilliardPool
from celery.concurrency.prefork import TaskPool as PreforkTaskPool

log = logging.getLogger(__name__)


def release_if_held(lock, what: str) -> bool:
    """Release ``lock`` if something holds it; call only when no live process can hold it."""
    if lock is None:
        return False
    if lock.acquire(False):
        lock.release()
        return False
    lock.release()  # a multiprocessing Lock may be released by another process
    log.warning("pool: released the %s a dead child held (billiard issue 104)", what)
    return True


class RepairingPool(BilliardPool):
    """billiard's threaded pool that frees the queue locks of children that died."""

    def _join_exited_workers(self, shutdown=False):
        exited = super()._join_exited_workers(shutdown)
        if exited and not shutdown and not self._pool:  # no child alive: none holds a lock
            release_if_held(getattr(self._inqueue, "_rlock", None), "task queue's read lock")
            release_if_held(getattr(self._outqueue, "_wlock", None), "result queue's write lock")
        return exited


class TaskPool(PreforkTaskPool):
    """Celery's prefork ``TaskPool`` whose threaded pool is :class:`RepairingPool`."""

    BlockingPool = RepairingPool
