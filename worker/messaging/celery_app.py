"""The Celery application: reliable, JSON-only configuration built from the settings.

This app has no tasks: a sender needs none, because tasks are sent by name
(``worker.messaging.queues``). The app the worker and beat run, with the tasks registered, is
``worker.messaging.celery_worker``. Never import TensorFlow here (the worker forks after importing it).
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery
from celery.schedules import crontab

from worker.messaging.queues import (
    BEAT_TICK_TASK,
    DELIVER_QUEUE,
    DELIVER_TASK,
    MAINTENANCE_QUEUE,
    PROBE_TASK,
    PROCESS_TASK,
    RECONCILE_TASK,
    REDELIVER_TASK,
    RETENTION_EVERY_S,
    RETENTION_TASK,
    RETRAIN_QUEUE,
    RETRAIN_TASK,
    TRIAGE_QUEUE,
    probe_queue,
)
from worker.messaging.filesystem_transport import Transport as FilesystemTransport
from worker.messaging.filesystem_broker import prepare_control_folder
from worker.settings import Settings


def _crontab(expr: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = expr.split()
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                   month_of_year=month_of_year, day_of_week=day_of_week)


def _transport_options(settings: Settings) -> dict:
    if settings.uses_filesystem_broker:
        queue_dir = str(settings.broker_dir / "queue")
        return {
            "data_folder_in": queue_dir,
            "data_folder_out": queue_dir,
            "processed_folder": str(settings.broker_dir / "processed"),
            "control_folder": str(settings.broker_dir / "control"),  # default: the cwd
            "store_processed": False,
            # worker.messaging.filesystem_transport.Transport: 5 ms after a message, doubling while the
            # queues stay empty, to at most this: an idle process polls 4x/s, and an image
            # waits at most this long in an idle queue; a freed prefetch slot polls at once.
            "polling_interval": 0.25,
            "busy_polling_interval": 0.005,
        }
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Longer than any task may run, or an acks_late task is delivered twice.
        from worker.results.redelivery import delivery_time_limit_s

        return {"visibility_timeout": max(3600, settings.task_time_limit_s * 2,
                                          delivery_time_limit_s(settings) * 2)}
    return {}


#: Queues whose exchange files the embedded broker needs before any process binds them.
QUEUES = (TRIAGE_QUEUE, MAINTENANCE_QUEUE, RETRAIN_QUEUE, DELIVER_QUEUE,
          *(probe_queue(role) for role in (TRIAGE_QUEUE, DELIVER_QUEUE, MAINTENANCE_QUEUE)))


def create_app(settings: Settings) -> Celery:
    """A configured app without tasks; ``app.triage_settings`` carries the settings along.

    On the embedded filesystem broker every process first makes the broker's exchange
    files whole (``worker.messaging.filesystem_broker``): kombu's own creation of them races."""
    if settings.uses_filesystem_broker:
        prepare_control_folder(settings.broker_dir / "control", QUEUES)
    app = Celery("melanoma_triage")
    app.conf.update(
        broker_url=settings.broker_url,
        # The embedded broker's adaptive poll (kombu's filesystem transport, otherwise as is).
        broker_transport=(f"{FilesystemTransport.__module__}:{FilesystemTransport.__name__}"
                          if settings.uses_filesystem_broker else None),
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        task_default_queue=TRIAGE_QUEUE,
        task_routes={RETRAIN_TASK: {"queue": RETRAIN_QUEUE},
                     RECONCILE_TASK: {"queue": MAINTENANCE_QUEUE},
                     DELIVER_TASK: {"queue": DELIVER_QUEUE},
                     REDELIVER_TASK: {"queue": MAINTENANCE_QUEUE},
                     RETENTION_TASK: {"queue": MAINTENANCE_QUEUE}},
        worker_hijack_root_logger=False,
        # --pool=prefork runs this: a child killed idle no longer stalls the worker.
        worker_pool="worker.messaging.prefork_pool:TaskPool",
        beat_schedule={
            # Its own queue, so it never waits behind a backlog; a pass that could not run
            # within two periods (no worker up) expires instead of piling up.
            "reconcile-jobs": {"task": RECONCILE_TASK, "schedule": settings.reconcile_interval_s,
                               "options": {"queue": MAINTENANCE_QUEUE,
                                           "expires": 2 * settings.reconcile_interval_s}},
            "retrain": {"task": RETRAIN_TASK, "schedule": _crontab(settings.retrain_cron),
                        "args": ["schedule"], "options": {"queue": RETRAIN_QUEUE}},
            # Lost deliver messages (worker.results.redelivery), at most once per period;
            # beside the reconciler, not behind a delivery that waits through its retries.
            "redeliver-results": {"task": REDELIVER_TASK, "schedule": settings.reconcile_interval_s,
                                  "options": {"queue": MAINTENANCE_QUEUE,
                                              "expires": settings.reconcile_interval_s}},
            # Archived inputs past TRIAGE_RETENTION_DAYS (nothing when it is unset).
            "purge-expired-inputs": {"task": RETENTION_TASK, "schedule": RETENTION_EVERY_S,
                                     "options": {"queue": MAINTENANCE_QUEUE,
                                                 "expires": RETENTION_EVERY_S}},
            # Beat's liveness: the maintenance worker records each tick (role_health "beat").
            "beat-tick": {"task": BEAT_TICK_TASK, "schedule": settings.reconcile_interval_s,
                          "options": {"queue": MAINTENANCE_QUEUE,
                                      "expires": settings.reconcile_interval_s}},
        },
        timezone="UTC",
    )
    app.triage_settings = settings
    return app


def process_sender(app: Celery) -> Callable[[str], None]:
    """The ``send`` that plain modules (intake, runtime) are given: queue one job for processing."""

    def send(job_id: str) -> None:
        app.send_task(PROCESS_TASK, args=[job_id], queue=TRIAGE_QUEUE)

    return send


def deliver_sender(app: Celery, expires_s: float | None = None) -> Callable[[str], None]:
    """The ``send`` that hands one finished job to the ``deliver`` queue (results to PACS,
    FHIR and webhooks). ``expires_s``: the message is dropped unread after that long (the
    redelivery sweep's copies, so that a stopped deliver worker does not pile them up)."""

    def send(job_id: str) -> None:
        app.send_task(DELIVER_TASK, args=[job_id], queue=DELIVER_QUEUE, expires=expires_s)

    return send


def probe_sender(app: Celery, expires_s: float) -> Callable[[str, str], None]:
    """The ``send(role, probe_id)`` of the liveness prober: one no-op task on the role's
    own probe queue; dropped unread once it is ``expires_s`` old (a dead role's probes do
    not pile up)."""

    def send(role: str, probe_id: str) -> None:
        app.send_task(PROBE_TASK, args=[role, probe_id], queue=probe_queue(role), expires=expires_s)

    return send


def broker_connection_check(app: Celery) -> None:
    """Raise when the broker cannot be reached within a few seconds (health checks)."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
