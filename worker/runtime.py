"""Per-process resources of a worker: database engine, intake, and the lazily loaded model.

Built once per process from the settings; after a fork the child builds its own (a
parent's connection pool and TensorFlow state must never cross a fork).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker.classify.model_cache import ModelCache
from worker.db.engine import make_engine, make_session_factory
from worker.imaging.dicom import quiet_pydicom
from worker.intake.admission import Intake
from worker.model_store import ModelStore
from worker.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    models: ModelCache
    intake: Intake
    pid: int = field(default_factory=os.getpid)

    def close(self) -> None:
        self.engine.dispose()


def build_runtime(settings: Settings, app: Celery) -> Runtime:
    from worker.celery_app import send_process  # not at import: celery_app imports the tasks

    quiet_pydicom()
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    store = ModelStore(settings.model_store_dir)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        models=ModelCache(store, tf_threads=settings.tf_threads),
        intake=Intake(settings, sessions, send=lambda job_id: send_process(app, job_id)),
    )


def runtime_for(app: Celery) -> Runtime:
    """The runtime of this process, attached to the app; rebuilt after a fork."""
    rt: Runtime | None = getattr(app, "_triage_runtime", None)
    if rt is None or rt.pid != os.getpid():
        if rt is not None:
            rt.engine.dispose(close=False)  # drop the parent's pool without closing its sockets
        rt = build_runtime(app.triage_settings, app)
        app._triage_runtime = rt
    return rt
