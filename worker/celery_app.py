"""The Celery application: reliable, JSON-only configuration built from the settings.

``celery -A worker.celery_app worker`` imports this module; it must never import
TensorFlow (the worker forks after importing it).
"""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab

from worker.settings import Settings

TRIAGE_QUEUE = "triage"
RETRAIN_QUEUE = "retrain"
PROCESS_TASK = "triage.process_image"
RECONCILE_TASK = "triage.reconcile"
RETRAIN_TASK = "triage.retrain"


def _crontab(expr: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = expr.split()
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                   month_of_year=month_of_year, day_of_week=day_of_week)


def create_app(settings: Settings) -> Celery:
    app = Celery("melanoma_triage")
    transport_options: dict = {}
    if settings.uses_filesystem_broker:
        queue_dir = str(settings.broker_dir / "queue")
        transport_options = {
            "data_folder_in": queue_dir,
            "data_folder_out": queue_dir,
            "processed_folder": str(settings.broker_dir / "processed"),
            "control_folder": str(settings.broker_dir / "control"),  # default: the cwd
            "store_processed": False,
            "polling_interval": 0.1,  # default 1 s caps the embedded worker at ~1 image/s
        }
    elif settings.broker_url.startswith(("redis://", "rediss://")):
        # Longer than any task may run, or an acks_late task is delivered twice.
        transport_options = {"visibility_timeout": max(3600, settings.task_time_limit_s * 2)}
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options,
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
    from worker.tasks import register_tasks  # here: tasks import this module's constants

    register_tasks(app)
    return app


def send_process(app: Celery, job_id: str) -> None:
    app.send_task(PROCESS_TASK, args=[job_id], queue=TRIAGE_QUEUE)


#: The entry point for the ``celery`` command; configuration comes from TRIAGE_* variables.
app = create_app(Settings())
