"""Per-process resources of a worker: database engine, intake, and the lazily loaded model.

Built once per process from the settings; after a fork the child builds its own (a
parent's connection pool and TensorFlow state must never cross a fork). No Celery here:
the caller hands in ``send``, the function that queues a job.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker.classify.model_cache import ModelCache
from worker.imaging.dicom import quiet_pydicom
from worker.intake.admission import Intake, open_intake
from worker.store.versions import ModelStore
from worker.storage.backends import FilesystemStorage
from worker.storage.model_sync import model_refresher
from worker.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    models: ModelCache
    intake: Intake
    storage: FilesystemStorage
    pid: int = field(default_factory=os.getpid)

    @property
    def in_this_process(self) -> bool:
        """False in a forked child: the runtime was built by the parent."""
        return self.pid == os.getpid()

    def drop_after_fork(self) -> None:
        """Forget the parent's connection pool without closing the parent's sockets."""
        self.engine.dispose(close=False)

    def close(self) -> None:
        self.engine.dispose()


def build_runtime(settings: Settings, send: Callable[[str], None]) -> Runtime:
    quiet_pydicom()
    intake = open_intake(settings, send)
    return Runtime(
        settings=settings,
        engine=intake.engine,
        sessions=intake.sessions,
        models=ModelCache(ModelStore(settings.model_store_dir), tf_threads=settings.tf_threads,
                          refresh=model_refresher(settings, intake.engine)),
        intake=intake,
        storage=intake.storage,
    )
