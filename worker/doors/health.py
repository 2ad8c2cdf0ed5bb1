"""``GET /healthz``: can this installation take an image and get it reported?

Three checks, each with a short answer: the database answers a query, the broker accepts
a connection, and the model store has a current model whose file is there.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker.db.models import Job
from worker.settings import Settings
from worker.store.version_files import SERVING_MODEL_FILE
from worker.store.versions import ModelStore


def _database(sessions: sessionmaker[Session]) -> dict:
    try:
        with sessions() as s:
            s.execute(select(Job.id).limit(1))  # the schema is there, not just a connection
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "detail": f"database unreachable ({type(exc).__name__})"}


def _broker(check_broker: Callable[[], None]) -> dict:
    try:
        check_broker()
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "detail": f"broker unreachable ({type(exc).__name__})"}


def _model(settings: Settings) -> dict:
    store = ModelStore(settings.model_store_dir)
    try:
        version = store.current_version()
        if version is None:
            return {"ok": False, "detail": "no current model version"}
        if not (store.version_dir(version) / SERVING_MODEL_FILE).is_file():
            return {"ok": False, "version": version, "detail": "served model file (model.tflite) missing"}
        return {"ok": True, "version": version}
    except Exception as exc:
        return {"ok": False, "detail": f"model store unreadable ({type(exc).__name__})"}


def check_health(settings: Settings, sessions: sessionmaker[Session],
                 check_broker: Callable[[], None]) -> dict:
    """``{"status": "ok"|"unavailable", "checks": {...}}``; ok only when every check is.
    ``check_broker`` raises when the broker cannot be reached (the Celery layer provides it)."""
    checks = {"database": _database(sessions), "broker": _broker(check_broker), "model": _model(settings)}
    healthy = all(c["ok"] for c in checks.values())
    return {"status": "ok" if healthy else "unavailable", "checks": checks}
