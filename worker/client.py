"""The client API for hospital systems: ``enqueue(path_or_bytes, metadata) -> job id``.

Importable without TensorFlow. The caller's metadata wins over the identifiers read from
the file. The image goes through the same admission as an intake-folder drop: archived
by content hash, recorded, enqueued; the same content twice returns the same job id.

    from worker.client import enqueue
    job_id = enqueue("/data/lesion.dcm", {"accession_number": "ACC123", "laterality": "L"})

Two modes. Direct (``settings``): this process writes our database, broker and archive.
HTTP (``url`` and ``token``): the image goes to ``POST /v1/jobs`` of a running
``melanoma-triage serve``; a hospital system then needs nothing but the URL and a token.

    job_id = enqueue("/data/lesion.dcm", url="https://triage.example.org", token=token)
"""

from __future__ import annotations

import os
from pathlib import Path

from schemas import ImageMetadata, SourceDoor
from worker.messaging.celery_app import create_app, process_sender
from worker.doors.http_client import HttpJobsClient
from worker.doors.http_client import Submission as HttpSubmission
from worker.intake.admission import Admission, open_intake
from worker.settings import Settings


class TriageClient:
    """Holds the connections; reuse one for many images. ``url`` + ``token``: HTTP mode."""

    def __init__(self, settings: Settings | None = None, *, url: str | None = None,
                 token: str | None = None, timeout: float = 60.0) -> None:
        self.http: HttpJobsClient | None = None
        if url is not None:
            if not token:
                raise ValueError("HTTP mode needs a token (melanoma-triage tokens create NAME)")
            self.http = HttpJobsClient(url, token, timeout)
            return
        self.settings = settings or Settings()
        self.settings.ensure_folders()
        self.app = create_app(self.settings)
        self.intake = open_intake(self.settings, process_sender(self.app))
        self.engine = self.intake.engine

    def submit(
        self,
        path_or_bytes: str | os.PathLike | bytes,
        metadata: ImageMetadata | dict | None = None,
        door: SourceDoor = SourceDoor.API,
        original_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Admission | HttpSubmission:
        """Admit one image; in HTTP mode the server records the door as ``http``."""
        if isinstance(metadata, dict):
            metadata = ImageMetadata.model_validate(metadata)
        if isinstance(path_or_bytes, bytes):
            data = path_or_bytes
        else:
            path = Path(path_or_bytes)
            data = path.read_bytes()
            original_name = original_name or path.name
        if self.http is not None:
            return self.http.submit(data, metadata, original_name, idempotency_key)
        return self.intake.admit_bytes(data, door, metadata, original_name)

    def job(self, job_id: str) -> dict | None:
        """State, times and, once done, the result (the body of ``GET /v1/jobs/{job_id}``)."""
        if self.http is not None:
            return self.http.job(job_id)
        from worker.doors.job_view import job_view

        with self.intake.sessions() as s:
            return job_view(s, job_id)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        else:
            self.intake.close()

    def __enter__(self) -> TriageClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def enqueue(
    path_or_bytes: str | os.PathLike | bytes,
    metadata: ImageMetadata | dict | None = None,
    settings: Settings | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
) -> str:
    """Submit one image; returns its job id (the existing one for a repeated image)."""
    with TriageClient(settings, url=url, token=token) as client:
        return client.submit(path_or_bytes, metadata).job_id
