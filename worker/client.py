"""The client API for hospital systems: ``enqueue(path_or_bytes, metadata) -> job id``.

Importable without TensorFlow. The caller's metadata wins over the identifiers read from
the file. The image goes through the same admission as an intake-folder drop: archived
by content hash, recorded, enqueued; the same content twice returns the same job id.

    from worker.client import enqueue
    job_id = enqueue("/data/lesion.dcm", {"accession_number": "ACC123", "laterality": "L"})
"""

from __future__ import annotations

import os
from pathlib import Path

from schemas import ImageMetadata, SourceDoor
from worker.celery_app import create_app, send_process
from worker.db.engine import make_engine, make_session_factory
from worker.intake.admission import Admission, Intake
from worker.settings import Settings


class TriageClient:
    """Holds the connections; reuse one for many images."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.settings.ensure_folders()
        self.app = create_app(self.settings)
        self.engine = make_engine(self.settings.database_url)
        self.intake = Intake(self.settings, make_session_factory(self.engine),
                             send=lambda job_id: send_process(self.app, job_id))

    def submit(
        self,
        path_or_bytes: str | os.PathLike | bytes,
        metadata: ImageMetadata | dict | None = None,
        door: SourceDoor = SourceDoor.API,
        original_name: str | None = None,
    ) -> Admission:
        if isinstance(metadata, dict):
            metadata = ImageMetadata.model_validate(metadata)
        if isinstance(path_or_bytes, bytes):
            data = path_or_bytes
        else:
            path = Path(path_or_bytes)
            data = path.read_bytes()
            original_name = original_name or path.name
        return self.intake.admit_bytes(data, door, metadata, original_name)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> TriageClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def enqueue(
    path_or_bytes: str | os.PathLike | bytes,
    metadata: ImageMetadata | dict | None = None,
    settings: Settings | None = None,
) -> str:
    """Submit one image; returns its job id (the existing one for a repeated image)."""
    with TriageClient(settings) as client:
        return client.submit(path_or_bytes, metadata).job_id
