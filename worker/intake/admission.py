"""Admission: the one path by which an image enters, whatever the door.

Check cheaply, archive by content hash, record image + job + submission in one
transaction, then enqueue. The same content twice is one job; the second arrival is
recorded as a duplicate submission of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from schemas import ImageMetadata, JobState, RejectionReason, SourceDoor
from worker.db import jobs
from worker.db.engine import make_engine, make_session_factory
from worker.db.models import Image, Job, Submission
from worker.errors import InputRejected
from worker.imaging.formats import sniff_format
from worker.intake import archive
from worker.intake.rejections import record_rejection
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admission:
    job_id: str
    state: JobState
    duplicate: bool = False
    reason: str | None = None


def precheck(data: bytes, max_bytes: int) -> str:
    """Cheap checks before anything is stored; returns the sniffed format."""
    if not data:
        raise InputRejected(RejectionReason.EMPTY_FILE, "the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InputRejected(RejectionReason.TOO_LARGE_FILE,
                            f"the file is {len(data)} bytes; the limit is {max_bytes}")
    fmt = sniff_format(data[:512])
    if fmt is None:
        raise InputRejected(RejectionReason.NOT_AN_IMAGE,
                            "not a JPEG, PNG or DICOM file (unrecognised content)")
    return fmt


class Intake:
    """Admits images from every door; ``send`` queues a job (the broker is the caller's business)."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        send: Callable[[str], None],
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = session_factory
        self.send = send
        self.engine = engine  # set when this intake owns it: close() disposes it

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def admit_bytes(
        self,
        data: bytes,
        door: SourceDoor,
        metadata: ImageMetadata | None = None,
        original_name: str | None = None,
    ) -> Admission:
        metadata = metadata or ImageMetadata()
        sha = archive.sha256_bytes(data)
        rejection: InputRejected | None = None
        try:
            precheck(data, self.settings.max_file_bytes)
        except InputRejected as exc:
            rejection = exc
        path = archive.store(self.settings.archive_dir, data, sha)
        try:
            admission = self._record(sha, str(path), len(data), door, metadata, original_name, rejection)
        except IntegrityError:  # the same content arrived concurrently by another door
            admission = self._record(sha, str(path), len(data), door, metadata, original_name, rejection)
        log.info("job %s admitted via %s: %s%s", admission.job_id, door.value, admission.state.value,
                 " (duplicate)" if admission.duplicate else "")
        if admission.state == JobState.REJECTED:
            code = rejection.code if rejection else RejectionReason.DUPLICATE_OF_REJECTED
            record_rejection(self.sessions, self.settings.rejected_dir, admission.job_id, code,
                             admission.reason or "", data=data, original_name=original_name)
        elif not admission.duplicate:
            self.enqueue(admission.job_id)
        return admission

    def admit_unreadable(self, source: Path, door: SourceDoor, original_name: str | None,
                         reason: str) -> Admission:
        """A file we could not even read: record it and move it to rejected/."""
        with self.sessions.begin() as s:
            image = Image(sha256=None, archive_path=None, size_bytes=None, source_door=door.value)
            job = Job(image=image, state=JobState.REJECTED.value,
                      error_code=RejectionReason.UNREADABLE.value, error=reason)
            s.add_all([image, job])
            s.flush()
            s.add(Submission(job_id=job.id, door=door.value, original_name=original_name))
            job_id = job.id
        record_rejection(self.sessions, self.settings.rejected_dir, job_id,
                         RejectionReason.UNREADABLE, reason, source=source,
                         original_name=original_name)
        return Admission(job_id, JobState.REJECTED, reason=reason)

    def _record(self, sha, path, size, door, metadata, original_name, rejection) -> Admission:
        caller = metadata.model_dump(mode="json", exclude_none=True)
        with self.sessions.begin() as s:
            image = s.execute(select(Image).where(Image.sha256 == sha)).scalar_one_or_none()
            if image is not None:
                job = image.job
                s.add(Submission(job_id=job.id, door=door.value, original_name=original_name,
                                 caller_metadata=caller, duplicate=True))
                reason = f"duplicate of job {job.id}" + (f": {job.error}" if job.error else "")
                return Admission(job.id, JobState(job.state), duplicate=True, reason=reason)
            image = Image(sha256=sha, archive_path=path, size_bytes=size, source_door=door.value,
                          caller_metadata=caller)
            state = JobState.REJECTED if rejection else JobState.RECEIVED
            job = Job(image=image, state=state.value,
                      error_code=rejection.code.value if rejection else None,
                      error=rejection.reason if rejection else None)
            s.add_all([image, job])
            s.flush()
            s.add(Submission(job_id=job.id, door=door.value, original_name=original_name,
                             caller_metadata=caller))
            return Admission(job.id, state, reason=rejection.reason if rejection else None)

    def enqueue(self, job_id: str) -> bool:
        """Mark queued, then send; if the broker is down the reconciler sends it later."""
        with self.sessions.begin() as s:
            jobs.mark_queued(s, job_id)
        try:
            self.send(job_id)
        except Exception as exc:  # broker unreachable: the jobs table keeps the job
            log.warning("job %s: broker refused the message (%s); the reconciler will retry",
                        job_id, type(exc).__name__)
            with self.sessions.begin() as s:
                jobs.unmark_queued(s, job_id)
            return False
        return True


def open_intake(settings: Settings, send: Callable[[str], None]) -> Intake:
    """The intake every process wires the same way (worker, watcher, hospital client), on an
    engine of its own that ``intake.close()`` disposes."""
    engine = make_engine(settings.database_url)
    return Intake(settings, make_session_factory(engine), send, engine=engine)
