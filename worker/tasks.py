"""Thin Celery tasks: load by id, call plain modules, persist, return a state.

Retries: transient trouble (database or broker down, disk) is retried with backoff;
rejected input never is; the attempts counter in the jobs table stops a poisonous
image that kills its worker from looping. Tasks are registered on the app that
``worker.celery_app.create_app`` builds, so tests and production share them.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from sqlalchemy.exc import OperationalError

from worker import pipeline, reconciler
from worker.celery_app import PROCESS_TASK, RECONCILE_TASK, RETRAIN_TASK
from worker.db import jobs
from worker.db.models import Job
from worker.errors import ModelNotAvailable, TransientError
from worker.intake import archive
from worker.intake.rejections import write_rejection
from worker.runtime import Runtime, runtime_for

log = logging.getLogger(__name__)

# ModelNotAvailable: an empty or half-written store is an operations problem, not the
# image's fault; retry until someone promotes a model (the attempts cap still applies).
TRANSIENT = (TransientError, ModelNotAvailable, OperationalError, ConnectionError, TimeoutError)


def _record_failure(rt: Runtime, job_id: str, code: str, reason: str) -> None:
    """Failed, not retried: recorded in the database and beside the file in rejected/."""
    with rt.sessions.begin() as s:
        jobs.fail(s, job_id, code, reason)
        job = s.get(Job, job_id)
        image, name = job.image, jobs.original_name(s, job_id)
    data = archive.load(image.archive_path) if image.archive_path else None
    write_rejection(rt.settings.rejected_dir, job_id, name, code, reason, data=data,
                    sha256=image.sha256, state="failed")


def _release(rt: Runtime, job_id: str) -> None:
    try:
        with rt.sessions.begin() as s:
            jobs.release(s, job_id)
    except OperationalError:
        pass  # the database itself is down: the attempt stays counted


def register_tasks(app: Celery) -> None:
    @worker_process_init.connect(weak=False)
    def _after_fork(**_kwargs) -> None:
        # Quick (Celery allows ~4 s): drop the parent's pool; the model loads on first use.
        runtime_for(app)

    @app.task(
        name=PROCESS_TASK,
        shared=False,
        bind=True,
        autoretry_for=TRANSIENT,
        retry_backoff=2,
        retry_backoff_max=300,
        retry_jitter=True,
        max_retries=8,
    )
    def process_image(self, job_id: str) -> str:
        rt = runtime_for(self.app)
        try:
            return pipeline.process_job(rt, job_id)
        except TRANSIENT as exc:
            log.warning("job %s: %s; retrying with backoff", job_id, type(exc).__name__)
            _release(rt, job_id)
            raise
        except SoftTimeLimitExceeded:
            _record_failure(rt, job_id, "timeout", "processing took longer than the time limit")
            return "failed"
        except Exception as exc:  # a defect, or an image that breaks a library: record, no loop
            log.error("job %s failed: %s", job_id, type(exc).__name__)
            _record_failure(rt, job_id, "internal_error", f"{type(exc).__name__}: {exc}")
            return "failed"

    @app.task(name=RECONCILE_TASK, bind=True, shared=False)
    def reconcile(self) -> int:
        rt = runtime_for(self.app)
        return reconciler.reconcile(
            rt.sessions,
            rt.intake.enqueue,
            received_grace=timedelta(seconds=max(30.0, rt.settings.poll_interval_s * 5)),
            stale_after=timedelta(seconds=rt.settings.stale_after_s),
        )

    retrain_limit = app.triage_settings.retrain_time_limit_s

    @app.task(name=RETRAIN_TASK, bind=True, shared=False, time_limit=retrain_limit,
              soft_time_limit=max(30, retrain_limit - 300))
    def retrain(self, trigger: str = "schedule") -> str:
        """Runs on the "retrain" queue. The database lease, not the broker, prevents double
        runs: a redelivered message finds the lease held and returns "busy"."""
        from worker.retrain.cycle import run_retrain

        return run_retrain(self.app.triage_settings, trigger=trigger).state
