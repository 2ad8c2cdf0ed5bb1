"""``GET /healthz``: can this installation take an image and get it reported?

Three checks, each with a short answer: the database answers a query, the broker accepts
a connection, and the model store has a current model whose file is there.
"""

from __future__ import annotations

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker.db.models import Job
from worker.settings import Settings
from worker.store.versions import ModelStore


def _database(sessions: sessionmaker[Session]) -> dict:
    try:
        with sessions() as s:
            s.execute(select(Job.id).limit(1))  # the schema is there, not just a connection
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "detail": f"database unreachable ({type(exc).__name__})"}


def _broker(app: Celery) -> dict:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "detail": f"broker unreachable ({type(exc).__name__})"}


def _model(settings: Settings) -> dict:
    store = ModelStore(settings.model_store_dir)
    try:
        version = store.current_version()
        if version is None:
            return {"ok": False, "detail": "no current model version"}
        if not store.model_path(version).is_file():
            return {"ok": False, "version": version, "detail": "model file missing"}
        return {"ok": True, "version": version}
    except Exception as exc:
        return {"ok": False, "detail": f"model store unreadable ({type(exc).__name__})"}


def check_health(settings: Settings, sessions: sessionmaker[Session], app: Celery) -> dict:
    """``{"status": "ok"|"unavailable", "checks": {...}}``; ok only when every check is."""
    checks = {"database": _database(sessions), "broker": _broker(app), "model": _model(settings)}
    healthy = all(c["ok"] for c in checks.values())
    return {"status": "ok" if healthy else "unavailable", "checks": checks}
