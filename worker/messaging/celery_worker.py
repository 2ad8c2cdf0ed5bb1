"""The app that Celery's worker, beat and flower run: the configuration plus the tasks.

``celery -A worker.messaging.celery_worker:app`` reads ``app``, which is built from the TRIAGE_*
environment on first access (a module ``__getattr__``), so importing this module builds
no settings; tests and ``melanoma-triage run`` call :func:`create_worker_app` instead.
"""

from __future__ import annotations

from functools import cache

from celery import Celery

from worker.messaging.celery_app import create_app
from worker.settings import Settings
from worker.messaging.tasks import register_tasks


def create_worker_app(settings: Settings) -> Celery:
    app = create_app(settings)
    register_tasks(app)
    return app


@cache
def _app_from_environment() -> Celery:
    from worker.process.at_rest import apply_umask

    apply_umask()  # a worker or beat started on its own (compose): before its first file
    return create_worker_app(Settings())


def __getattr__(name: str) -> Celery:
    if name == "app":
        return _app_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
