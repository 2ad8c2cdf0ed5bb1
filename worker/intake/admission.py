"""Admission: the one path by which an image enters, whatever the door.

Check cheaply, archive by content hash, record image + job (already queued) + submission
in one transaction, then send. The same content twice is one job; the second arrival is
recorded as a duplicate submission of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from schemas import ImageMetadata, JobState, RejectionReason, SourceDoor
from worker.db import jobs
from worker.db.engine import make_engine, make_session_factory
from worker.db.models import Image, Job, Submission, new_id, utcnow
from worker.errors import InputRejected
from worker.imaging.formats import sniff_format
from worker.intake import archive
from worker.storage.backends import storage_for
from worker.intake.names import recorded_name
from worker.intake.rejections import record_rejection
from worker.settings import Settings

log = logging.getLogger(__name__)

#: The three inserts of a new image, built once, on the tables themselves: the ORM's
#: bulk-insert path (``insert(Image).values(...)``) rebuilt and re-keyed each statement per
#: image and cost ~0.4 ms more per admission than the SQL it sends (issue 10). Column
#: defaults still apply; the SQL is the same.
_INSERT_IMAGE = insert(Image.__table__)
_INSERT_JOB = insert(Job.__table__)
_INSERT_SUBMISSION = insert(Submission.__table__)


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
        self.storage = storage_for(settings, session_factory)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def admit_bytes(
        self,
        data: bytes,
        door: SourceDoor,
        metadata: ImageMetadata | None = None,
        original_name: str | None = None,
        received_at: datetime | None = None,
    ) -> Admission:
        """``received_at``: when the file arrived (the intake folder's first sight of it),
        when that was before now; the report prints it as "Received"."""
        metadata = metadata or ImageMetadata()
        original_name = recorded_name(original_name)
        sha = archive.sha256_bytes(data)
        rejection: InputRejected | None = None
        try:
            precheck(data, self.settings.max_file_bytes)
        except InputRejected as exc:
            rejection = exc
        path = self.storage.archive(data, sha)
        record = (sha, path, len(data), door, metadata, original_name, rejection, received_at)
        try:
            admission = self._record(*record)
        except IntegrityError:  # the same content arrived concurrently by another door
            admission = self._record(*record)
        if admission.duplicate:
            log.info("a re-sent file via %s joined existing job %s (%s); recorded as another "
                     "submission of it (`melanoma-triage jobs show %s`)", door.value,
                     admission.job_id, admission.state.value, admission.job_id)
        else:
            log.info("job %s admitted via %s: %s", admission.job_id, door.value,
                     admission.state.value)
        if admission.state == JobState.REJECTED:
            code = rejection.code if rejection else RejectionReason.DUPLICATE_OF_REJECTED
            record_rejection(self.sessions, self.storage.rejected, admission.job_id, code,
                             admission.reason or "", data=data, original_name=original_name)
        elif not admission.duplicate:
            self._send_queued(admission.job_id)
        return admission

    def admit_unreadable(self, source: Path, door: SourceDoor, original_name: str | None,
                         reason: str) -> Admission:
        """A file we could not even read: record it and move it to rejected/."""
        return self.reject_unread(source, door, original_name, RejectionReason.UNREADABLE, reason)

    def reject_unread(
        self,
        source: Path | None,
        door: SourceDoor,
        original_name: str | None,
        code: RejectionReason,
        reason: str,
        size_bytes: int | None = None,
    ) -> Admission:
        """Record an entry rejected without reading its content (unreadable, too large, not a
        regular file) and move it, as it is, to rejected/ beside its sidecar. ``source``
        None: the entry cannot be moved and stays where it is (the sidecar says why)."""
        original_name = recorded_name(original_name)
        with self.sessions.begin() as s:
            image = Image(sha256=None, archive_path=None, size_bytes=size_bytes,
                          source_door=door.value)
            job = Job(image=image, state=JobState.REJECTED.value, error_code=code.value,
                      error=reason)
            s.add_all([image, job])
            s.flush()
            s.add(Submission(job_id=job.id, door=door.value, original_name=original_name))
            job_id = job.id
        log.info("job %s rejected at the %s door without reading it: %s", job_id, door.value,
                 code.value)
        record_rejection(self.sessions, self.storage.rejected, job_id, code, reason,
                         source=source, original_name=original_name)
        return Admission(job_id, JobState.REJECTED, reason=reason)

    def _record(self, sha, path, size, door, metadata, original_name, rejection,
                received_at=None) -> Admission:
        """New content: image, job and submission in one transaction of three inserts, the job
        already queued (it is sent right after: :meth:`_send_queued`). Content already here
        trips the unique sha256; it is then recorded as a duplicate submission."""
        caller = metadata.model_dump(mode="json", exclude_none=True)
        now = utcnow()
        arrived = min(received_at, now) if received_at is not None else now
        image_id, job_id = new_id(), new_id()
        job = dict(id=job_id, image_id=image_id, created_at=now, updated_at=now)
        if rejection:
            state = JobState.REJECTED
            job.update(error_code=rejection.code.value, error=rejection.reason)
        else:
            state = JobState.QUEUED
            job.update(queued_at=now, last_sent_at=now, sent_count=1)
        try:
            with self.sessions.begin() as s:
                s.execute(_INSERT_IMAGE, dict(
                    id=image_id, sha256=sha, archive_path=path, size_bytes=size,
                    source_door=door.value, caller_metadata=caller, received_at=arrived))
                s.execute(_INSERT_JOB, dict(state=state.value, **job))
                s.execute(_INSERT_SUBMISSION, dict(
                    id=new_id(), job_id=job_id, door=door.value, original_name=original_name,
                    caller_metadata=caller, received_at=arrived))
        except IntegrityError:  # the same content is here already (or arrived concurrently)
            return self._record_duplicate(sha, door, caller, original_name, arrived)
        if rejection:
            return Admission(job_id, state, reason=rejection.reason)
        return Admission(job_id, JobState.RECEIVED)  # the outcome for the caller: accepted

    def _record_duplicate(self, sha, door, caller, original_name, arrived) -> Admission:
        with self.sessions.begin() as s:
            image = s.execute(select(Image).where(Image.sha256 == sha)).scalar_one()
            job = image.job
            s.add(Submission(job_id=job.id, door=door.value, original_name=original_name,
                             caller_metadata=caller, duplicate=True, received_at=arrived))
            reason = f"duplicate of job {job.id}" + (f": {job.error}" if job.error else "")
            return Admission(job.id, JobState(job.state), duplicate=True, reason=reason)

    def _send_queued(self, job_id: str) -> bool:
        """Send a job recorded as queued; if the broker is down, the reconciler sends it later."""
        try:
            self.send(job_id)
        except Exception as exc:  # broker unreachable: the jobs table keeps the job
            log.warning("job %s: broker refused the message (%s); the reconciler will retry",
                        job_id, type(exc).__name__)
            with self.sessions.begin() as s:
                jobs.unmark_queued(s, job_id)
            return False
        return True

    def enqueue(self, job_id: str) -> bool:
        """Mark queued, then send; if the broker is down the reconciler sends it later."""
        with self.sessions.begin() as s:
            jobs.mark_queued(s, job_id)
        return self._send_queued(job_id)


def open_intake(settings: Settings, send: Callable[[str], None]) -> Intake:
    """The intake every process wires the same way (worker, watcher, hospital client), on an
    engine of its own that ``intake.close()`` disposes."""
    engine = make_engine(settings.database_url)
    return Intake(settings, make_session_factory(engine), send, engine=engine)
