"""The Celery application: reliable, JSON-only configuration built from the settings.

This app has no tasks: a sender needs none, because tasks are sent by name
(``worker.queues``). The app the worker and beat run, with the tasks registered, is
``worker.celery_worker``. Never import TensorFlow here (the worker forks after importing it).
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery
from celery.schedules import crontab

from worker.queues import PROCESS_TASK, RECONCILE_TASK, RETRAIN_QUEUE, RETRAIN_TASK, TRIAGE_QUEUE
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
            "polling_interval": 0.1,  # default 1 s caps the embedded worker at ~1 image/s
        }
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Longer than any task may run, or an acks_late task is delivered twice.
        return {"visibility_timeout": max(3600, settings.task_time_limit_s * 2)}
    return {}


def create_app(settings: Settings) -> Celery:
    """A configured app without tasks; ``app.triage_settings`` carries the settings along."""
    app = Celery("melanoma_triage")
    app.conf.update(
        broker_url=settings.broker_url,
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
        task_routes={RETRAIN_TASK: {"queue": RETRAIN_QUEUE}},
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile-jobs": {"task": RECONCILE_TASK, "schedule": settings.reconcile_interval_s},
            "retrain": {"task": RETRAIN_TASK, "schedule": _crontab(settings.retrain_cron),
                        "args": ["schedule"], "options": {"queue": RETRAIN_QUEUE}},
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
