"""Thin Celery tasks: load by id, call plain modules, persist, return a state.

Retries: transient trouble (database or broker down, disk, no model yet) is retried with
backoff; rejected input never is; the attempts counter in the jobs table stops a
poisonous image that kills its worker from looping. :func:`register_tasks` puts them on
an app from ``worker.messaging.celery_app.create_app``, so tests and production share them.
"""

from __future__ import annotations

import errno
import logging
from datetime import timedelta

from celery import Celery, Task, current_app
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from sqlalchemy.exc import OperationalError

from schemas import JobState, RejectionReason
from worker.jobs import pipeline
from worker.jobs import reconciler
from worker.messaging.celery_app import deliver_sender, process_sender
from worker.db import jobs, task_claims
from worker.db.models import Job
from worker.errors import TransientError
from worker.jobs.heartbeat import LeaseLost
from worker.intake.rejections import describe_exception, record_rejection
from worker.db import role_health
from worker.messaging.queues import (BEAT_TICK_TASK, DELIVER_TASK, PROBE_TASK, PROCESS_TASK,
                                     RECONCILE_TASK, REDELIVER_TASK, RETENTION_TASK, RETRAIN_TASK,
                                     TRIAGE_QUEUE)
from worker.results import redelivery
from worker.results.delivery import deliver_results
from worker.jobs.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)

#: Retried with backoff: our transient errors (ModelNotAvailable among them) and the
#: library errors that mean "the database or the network is down for now".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError, OperationalError, ConnectionError, TimeoutError)
#: A full disk (reports, rejected/) is an operations problem, not the image's: the job
#: waits, retried without a cap (backoff up to a minute), until there is room again.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
STORAGE_RETRY_MAX_S = 60


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
    """Quick (Celery allows ~4 s): drop the parent's pool and, in a worker that consumes the
    triage queue, load and warm the model (LiteRT: ~0.1 s), so the first image does not pay it.

    Connected once, here; the child's current app is the one the worker runs."""
    app = current_app._get_current_object()
    if getattr(app, "triage_settings", None) is not None:
        rt = runtime_for(app)
        if TRIAGE_QUEUE in app.amqp.queues.consume_from:  # not the retrain or deliver worker
            rt.models.warm()


def _fail(rt: Runtime, job_id: str, code: RejectionReason, reason: str) -> str:
    """Failed, not retried: recorded in the database and beside the file in rejected/."""
    record_rejection(rt.sessions, rt.storage.rejected, job_id, code, reason,
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
        state = pipeline.process_job(rt, job_id)
        if state == JobState.DONE.value:
            _send_delivery(task.app, job_id)
        elif state == "skipped":
            _record_if_exhausted(rt, job_id)
        return state
    except TRANSIENT_ERRORS as exc:
        log.warning("job %s: %s; retrying with backoff", job_id, type(exc).__name__)
        _release(rt, job_id)
        raise
    except SoftTimeLimitExceeded:
        return _fail(rt, job_id, RejectionReason.TIMEOUT,
                     "processing took longer than the time limit")
    except LeaseLost:  # another attempt owns the job now: it writes the result
        log.info("job %s: this attempt was superseded; stopping", job_id)
        return "skipped"
    except OSError as exc:
        if exc.errno not in STORAGE_FULL_ERRNOS:
            log.error("job %s failed: %s", job_id, type(exc).__name__)
            return _fail(rt, job_id, RejectionReason.INTERNAL_ERROR, describe_exception(exc))
        delay = min(STORAGE_RETRY_MAX_S, 2 ** (task.request.retries + 1))
        log.warning("job %s: no space left on the device; retrying in %d s", job_id, delay)
        _release(rt, job_id)
        raise task.retry(exc=exc, countdown=delay, max_retries=None) from None
    except Exception as exc:  # a defect, or an image that breaks a library: record, no loop
        log.error("job %s failed: %s", job_id, type(exc).__name__)
        return _fail(rt, job_id, RejectionReason.INTERNAL_ERROR, describe_exception(exc))


def _send_delivery(app: Celery, job_id: str) -> None:
    """Hand the done job to the ``deliver`` queue; if the broker refuses, the job stays done
    and the redelivery sweep sends it later (a broker error must not fail a finished job)."""
    try:
        deliver_sender(app)(job_id)
    except Exception as exc:  # noqa: BLE001 - logged by type; the sweep recovers it
        log.warning("job %s: deliver message not sent (%s); the sweep re-sends it",
                    job_id, type(exc).__name__)


def deliver(task: Task, job_id: str) -> dict[str, int]:
    """Runs on the "deliver" queue: results to PACS, FHIR and webhooks, waiting through the
    retries (idempotent: a sent delivery is never sent twice). Returns counts by state."""
    rt = runtime_for(task.app)
    counts: dict[str, int] = {}
    for outcome in deliver_results(rt.settings, rt.sessions, job_id):
        counts[outcome.state] = counts.get(outcome.state, 0) + 1
    return counts


def redeliver(task: Task) -> int:
    """Beat's sweep for lost deliver messages (``worker.results.redelivery``)."""
    rt = runtime_for(task.app)
    # Each copy lives one period: the next sweep sends a fresh one if it is still needed.
    send = deliver_sender(task.app, expires_s=rt.settings.reconcile_interval_s)
    return redelivery.redeliver(rt.sessions, rt.settings, send)


def purge_retention(task: Task) -> int:
    """Beat's hourly retention pass (``worker.retention.purge``); 0 when it is not set."""
    from worker.retention.purge import purge_expired

    rt = runtime_for(task.app)
    return purge_expired(rt.settings, rt.sessions).purged


def _record_if_exhausted(rt: Runtime, job_id: str) -> None:
    """A job that ran out of attempts gets its sidecar in rejected/ like any failure (once)."""
    with rt.sessions() as s:
        job = s.get(Job, job_id)
        exhausted = (job is not None and job.state == JobState.FAILED.value
                     and job.error_code == RejectionReason.ATTEMPTS_EXHAUSTED.value)
        reason = job.error if exhausted else ""
    if exhausted and not rt.storage.has_rejection(job_id):
        record_rejection(rt.sessions, rt.storage.rejected, job_id,
                         RejectionReason.ATTEMPTS_EXHAUSTED, reason or "", state=JobState.FAILED)


def reconcile(task: Task) -> int:
    rt = runtime_for(task.app)
    return reconciler.reconcile(
        rt.sessions,
        rt.intake.enqueue,
        received_grace=timedelta(seconds=max(30.0, rt.settings.poll_interval_s * 5)),
        stale_after=timedelta(seconds=rt.settings.stale_after_s),
    )


def probe(task: Task, role: str, probe_id: str) -> str:
    """A liveness probe (``worker.process.liveness``): record the answer, nothing else. It ran
    through this role's broker queue and pool, so the answer proves both take work."""
    role_health.record_answer(runtime_for(task.app).sessions, role, probe_id)
    return probe_id


def beat_tick(task: Task) -> str:
    """Beat's periodic tick arrived: beat is alive and sending on schedule."""
    role_health.record_answer(runtime_for(task.app).sessions, role_health.BEAT, "tick")
    return "tick"


def retrain(task: Task, trigger: str = "schedule") -> str:
    """Runs on the "retrain" queue, at most once per message.

    Acknowledged on receipt (``acks_late=False``): a retraining outlives Redis's visibility
    timeout, and an unacknowledged message would be delivered again. A retraining lost
    with its worker is started again by the next schedule or by hand. The message's task
    id is claimed in the database first, so a message delivered twice runs once
    ("duplicate"); the retraining lease keeps two different messages from overlapping."""
    from worker.retrain.cycle import run_retrain  # TensorFlow: never in the parent

    task_id = task.request.id
    if task_id and not task_claims.claim_once(runtime_for(task.app).sessions, task_id, RETRAIN_TASK):
        log.warning("retrain message %s delivered again: already run, ignored", task_id)
        return "duplicate"
    return run_retrain(task.app.triage_settings, trigger=trigger).state


def register_tasks(app: Celery) -> None:
    """Put the tasks on ``app`` (``shared=False``: each app gets its own, with its settings)."""
    app.task(name=PROCESS_TASK, shared=False, bind=True, autoretry_for=TRANSIENT_ERRORS,
             retry_backoff=2, retry_backoff_max=30, retry_jitter=True,
             # No cap: a database or broker outage is not the image's fault, and a job
             # whose retries ran out would wait for the reconciler's stale period. The
             # attempts counter in the jobs table still stops a poisonous image; a job
             # goes on at most 30 s after the outage ends.
             max_retries=None)(process_image)
    app.task(name=RECONCILE_TASK, bind=True, shared=False)(reconcile)
    # Covers every retry of every destination; a killed task leaves its rows pending and
    # the sweep sends the job again once this limit has passed.
    deliver_limit = redelivery.delivery_time_limit_s(app.triage_settings)
    app.task(name=DELIVER_TASK, bind=True, shared=False, autoretry_for=TRANSIENT_ERRORS,
             retry_backoff=2, retry_backoff_max=300, retry_jitter=True, max_retries=8,
             time_limit=deliver_limit, soft_time_limit=deliver_limit - 30)(deliver)
    app.task(name=REDELIVER_TASK, bind=True, shared=False)(redeliver)
    app.task(name=RETENTION_TASK, bind=True, shared=False)(purge_retention)
    app.task(name=PROBE_TASK, bind=True, shared=False, acks_late=False)(probe)
    app.task(name=BEAT_TICK_TASK, bind=True, shared=False, acks_late=False)(beat_tick)
    limit = app.triage_settings.retrain_time_limit_s
    app.task(name=RETRAIN_TASK, bind=True, shared=False, time_limit=limit,
             soft_time_limit=max(30, limit - 300), acks_late=False,
             reject_on_worker_lost=False)(retrain)
