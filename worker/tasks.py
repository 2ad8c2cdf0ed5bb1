"""Thin Celery tasks: load by id, call plain modules, persist, return a state.

Retries: transient trouble (database or broker down, disk, no model yet) is retried with
backoff; rejected input never is; the attempts counter in the jobs table stops a
poisonous image that kills its worker from looping. :func:`register_tasks` puts them on
an app from ``worker.celery_app.create_app``, so tests and production share them.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery, Task, current_app
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from sqlalchemy.exc import OperationalError

from schemas import JobState, RejectionReason
from worker import pipeline, reconciler
from worker.celery_app import process_sender
from worker.db import jobs
from worker.errors import TransientError
from worker.intake.rejections import record_rejection
from worker.queues import PROCESS_TASK, RECONCILE_TASK, RETRAIN_TASK
from worker.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)

#: Retried with backoff: our transient errors (ModelNotAvailable among them) and the
#: library errors that mean "the database or the network is down for now".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError, OperationalError, ConnectionError, TimeoutError)


def runtime_for(app: Celery) -> Runtime:
    """This process's runtime, kept on the app; a forked child builds its own."""
    rt: Runtime | None = getattr(app, "_triage_runtime", None)
    if rt is None or not rt.in_this_process:
        if rt is not None:
            rt.drop_after_fork()
        rt = build_runtime(app.triage_settings, send=process_sender(app))
        app._triage_runtime = rt
    return rt


@worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    """Quick (Celery allows ~4 s): drop the parent's pool; the model loads on first use.

    Connected once, here; the child's current app is the one the worker runs."""
    app = current_app._get_current_object()
    if getattr(app, "triage_settings", None) is not None:
        runtime_for(app)


def _fail(rt: Runtime, job_id: str, code: RejectionReason, reason: str) -> str:
    """Failed, not retried: recorded in the database and beside the file in rejected/."""
    record_rejection(rt.sessions, rt.settings.rejected_dir, job_id, code, reason,
                     state=JobState.FAILED)
    return JobState.FAILED.value


def _release(rt: Runtime, job_id: str) -> None:
    try:
        with rt.sessions.begin() as s:
            jobs.release(s, job_id)
    except OperationalError:
        pass  # the database itself is down: the attempt stays counted


def process_image(task: Task, job_id: str) -> str:
    rt = runtime_for(task.app)
    try:
        return pipeline.process_job(rt, job_id)
    except TRANSIENT_ERRORS as exc:
        log.warning("job %s: %s; retrying with backoff", job_id, type(exc).__name__)
        _release(rt, job_id)
        raise
    except SoftTimeLimitExceeded:
        return _fail(rt, job_id, RejectionReason.TIMEOUT,
                     "processing took longer than the time limit")
    except Exception as exc:  # a defect, or an image that breaks a library: record, no loop
        log.error("job %s failed: %s", job_id, type(exc).__name__)
        return _fail(rt, job_id, RejectionReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")


def reconcile(task: Task) -> int:
    rt = runtime_for(task.app)
    return reconciler.reconcile(
        rt.sessions,
        rt.intake.enqueue,
        received_grace=timedelta(seconds=max(30.0, rt.settings.poll_interval_s * 5)),
        stale_after=timedelta(seconds=rt.settings.stale_after_s),
    )


def retrain(task: Task, trigger: str = "schedule") -> str:
    """Runs on the "retrain" queue. The database lease, not the broker, prevents double
    runs: a redelivered message finds the lease held and returns "busy"."""
    from worker.retrain.cycle import run_retrain  # TensorFlow: never in the parent

    return run_retrain(task.app.triage_settings, trigger=trigger).state


def register_tasks(app: Celery) -> None:
    """Put the tasks on ``app`` (``shared=False``: each app gets its own, with its settings)."""
    app.task(name=PROCESS_TASK, shared=False, bind=True, autoretry_for=TRANSIENT_ERRORS,
             retry_backoff=2, retry_backoff_max=300, retry_jitter=True,
             max_retries=8)(process_image)
    app.task(name=RECONCILE_TASK, bind=True, shared=False)(reconcile)
    limit = app.triage_settings.retrain_time_limit_s
    app.task(name=RETRAIN_TASK, bind=True, shared=False, time_limit=limit,
             soft_time_limit=max(30, limit - 300))(retrain)
