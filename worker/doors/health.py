"""``GET /healthz``: can this installation take an image and get it reported?

Checks, each with a short answer: the database answers a query, the broker accepts a
connection, the model store has a current model whose file is there, the folders that
take data (archive, reports, the SQLite database, the embedded broker) have at least
``min_free_disk_bytes`` free, and every role ``melanoma-triage run`` supervises is up:
its process runs and its liveness probe was answered in time (``worker.process.liveness``).
The answer names each failing part in ``failing``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from worker.db.models import Job
from worker.process.liveness import role_verdicts
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


def data_folders(settings: Settings) -> dict[str, Path]:
    """Where the service writes data, by name: free space is checked for each."""
    folders = {"archive": settings.archive_dir, "reports": settings.reports_dir}
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        folders["database"] = Path(url.database).parent
    if settings.uses_filesystem_broker:
        folders["broker"] = settings.broker_dir
    return folders


def free_space(settings: Settings) -> dict[str, dict]:
    """Free bytes per data folder against ``min_free_disk_bytes``."""
    out = {}
    for name, folder in data_folders(settings).items():
        try:
            free = shutil.disk_usage(folder).free
        except OSError as exc:
            out[name] = {"ok": False, "detail": f"cannot read free space ({type(exc).__name__})"}
            continue
        ok = free >= settings.min_free_disk_bytes
        out[name] = {"ok": ok, "free_bytes": free,
                     **({} if ok else {"detail": f"{free} bytes free, under {settings.min_free_disk_bytes}"})}
    return out


def _roles(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, dict]:
    try:
        return {role: v.as_dict() for role, v in role_verdicts(settings, sessions).items()}
    except Exception as exc:  # the database check names the cause
        return {"roles": {"ok": False, "detail": f"role health unreadable ({type(exc).__name__})"}}


def check_health(settings: Settings, sessions: sessionmaker[Session],
                 check_broker: Callable[[], None]) -> dict:
    """``{"status": "ok"|"unavailable", "failing": [...], "checks": {...}, "roles": {...},
    "disk": {...}}``; ok only when every check, role and folder is.
    ``check_broker`` raises when the broker cannot be reached (the Celery layer provides it)."""
    checks = {"database": _database(sessions), "broker": _broker(check_broker), "model": _model(settings)}
    roles = _roles(settings, sessions)
    disk = free_space(settings)
    failing = ([name for name, c in checks.items() if not c["ok"]]
               + [f"role:{name}" for name, r in roles.items() if not r["ok"]]
               + [f"disk:{name}" for name, d in disk.items() if not d["ok"]])
    return {"status": "unavailable" if failing else "ok", "failing": failing, "checks": checks,
            "roles": roles, "disk": disk}
