"""The DICOM door: a C-ECHO and C-STORE SCP (pynetdicom) in front of the admission.

A modality, a dermoscopy camera or a PACS pushes photographs here. pynetdicom owns the
sockets and threads; this module plugs in one C-STORE handler that answers with a status
and never raises (a raising handler would answer 0xC211 and log a traceback that may
hold tag values).

Statuses:

* ``0x0000`` once the instance is archived and its job committed (or, for a re-sent SOP
  Instance UID, once the re-send is recorded against the existing job);
* ``0xA700`` when free disk space is under ``min_free_disk_bytes`` or the backlog is at
  ``max_backlog``, and for an instance over ``max_file_bytes`` (recorded as rejected);
* ``0xA701`` when storing failed for a reason of ours (database down): try again later;
* ``0xA900`` when the data set's SOP Class UID is not the presentation context's;
* ``0xC000`` when the data set cannot be parsed or lacks its SOP UIDs; when its image
  cannot be decoded (a truncated instance, undecodable pixel data: recorded as a rejected
  job with the decoder's reason, e.g. ``truncated``); and for an instance whose job is
  rejected (the error comment names the reason code).

A re-sent SOP Instance UID is the same job even when its bytes differ (another transfer
syntax, coerced tags): ``dicom_instances`` maps UIDs to jobs from the moment of
admission, ``images.sop_instance_uid`` once the worker has read the file. A UID whose job
was *rejected* (a truncated first try) does not hold later tries back: the next instance
with that UID is admitted as a job of its own and ``dicom_instances`` links it to the
rejected one (``previous_job_id``).

Associations: the called AE title must be ours (``dicom_ae_title``); the calling one, one
of ``dicom_allowed_calling_aets`` when that is set; at most ``dicom_max_associations`` at
once.
"""

from __future__ import annotations

import logging
import threading
import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from schemas import JobState, RejectionReason, SourceDoor
from worker.errors import InputRejected
from worker.db.integration import DicomInstance
from worker.db.models import Image, Job, Submission
from worker.doors.capacity import refusal
from worker.imaging.decode import decode_bytes
from worker.imaging.dicom import ACCEPTED_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES
from worker.imaging.limits import DecodeLimits
from worker.intake.admission import Intake
from worker.settings import Settings

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
UNABLE_TO_STORE = 0xA701
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: Transfer syntaxes accepted for each SOP class: exactly those our decoder reads.
TRANSFER_SYNTAXES: list[str] = sorted(ACCEPTED_TRANSFER_SYNTAXES)

_LOCK_STRIPES = 64


def allowed_calling_aets(settings: Settings) -> list[str]:
    """``TRIAGE_DICOM_ALLOWED_CALLING_AETS`` as a list; empty means any caller."""
    return [t.strip() for t in settings.dicom_allowed_calling_aets.split(",") if t.strip()]


def build_ae(settings: Settings) -> AE:
    """Our application entity: contexts, calling-AE filter, limits and timeouts."""
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.add_supported_context(Verification)
    for sop_class in ACCEPTED_SOP_CLASSES:  # 77.1.7 is not in pynetdicom's defaults
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.require_calling_aet = allowed_calling_aets(settings)
    ae.require_called_aet = True  # an association addressed to another AE is rejected
    ae.maximum_associations = settings.dicom_max_associations
    ae.acse_timeout = settings.dicom_acse_timeout_s
    ae.dimse_timeout = settings.dicom_dimse_timeout_s
    ae.network_timeout = settings.dicom_network_timeout_s
    return ae


@dataclass(frozen=True)
class _Instance:
    """What the handler needs from a received data set."""

    data: bytes  # Part 10 bytes: preamble, file meta, data set as sent
    sop_class_uid: str
    sop_instance_uid: str


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]  # LO
    return status


class StoreHandler:
    """The C-STORE handler, bound to one admission."""

    def __init__(self, settings: Settings, intake: Intake) -> None:
        self.settings = settings
        self.intake = intake
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def __call__(self, event: Event) -> Dataset:
        """Answer one C-STORE; every path returns a status, none raises."""
        try:
            return self._store(event)
        except Exception as exc:  # never raise into pynetdicom; never log tag values
            log.error("C-STORE from %s failed: %s", _calling_ae(event), type(exc).__name__)
            return _status(UNABLE_TO_STORE, "temporarily unable to store; try again later")

    def _store(self, event: Event) -> Dataset:
        instance = _read_instance(event)
        if isinstance(instance, Dataset):
            return instance
        context_class = event.context.abstract_syntax
        if instance.sop_class_uid != context_class:
            log.info("C-STORE from %s refused: data set SOP class is not the context's",
                     _calling_ae(event))
            return _status(DATASET_DOES_NOT_MATCH, "SOP Class UID does not match the context")
        why = refusal(self.settings, self.intake.sessions)
        if why is not None:
            log.warning("C-STORE from %s refused: %s", _calling_ae(event), why)
            return _status(OUT_OF_RESOURCES, why)
        lock = self._locks[zlib.crc32(instance.sop_instance_uid.encode()) % _LOCK_STRIPES]
        with lock:  # one admission per SOP Instance UID at a time in this receiver
            return self._admit(instance, _calling_ae(event))

    def _undecodable(self, instance: _Instance) -> InputRejected | None:
        """Why the worker would reject this image (truncated, undecodable), found at the door
        so the sender hears it now; None when it decodes."""
        limits = DecodeLimits(max_bytes=self.settings.max_file_bytes,
                              max_pixels=self.settings.max_image_pixels)
        try:
            decode_bytes(instance.data, limits)
        except InputRejected as exc:
            if exc.code == RejectionReason.TOO_LARGE_FILE:
                return None  # recorded by the admission with its own status (0xA700)
            return exc
        return None

    def _admit(self, instance: _Instance, calling_ae: str | None) -> Dataset:
        existing, previous = self._resent(instance)
        if existing is not None:
            log.info("C-STORE from %s: re-sent instance recorded against job %s",
                     calling_ae, existing[0])
            return _answer(*existing)
        name = f"{instance.sop_instance_uid}.dcm"
        rejected = self._undecodable(instance)
        if rejected is not None:
            admission = self.intake.reject_unread(None, SourceDoor.DICOM, name, rejected.code,
                                                  rejected.reason, size_bytes=len(instance.data))
        else:
            admission = self.intake.admit_bytes(instance.data, SourceDoor.DICOM, original_name=name)
        self._map(instance, admission.job_id, calling_ae, previous)
        code = None
        if admission.state == JobState.REJECTED:
            with self.intake.sessions() as s:
                code = s.get(Job, admission.job_id).error_code
        log.info("C-STORE from %s: job %s %s", calling_ae, admission.job_id, admission.state.value)
        return _answer(admission.job_id, admission.state, code)

    def _map(self, instance: _Instance, job_id: str, calling_ae: str | None,
             previous: str | None) -> None:
        """UID -> job in ``dicom_instances``; a UID that was a rejected job's now points at
        this job and keeps the rejected one as ``previous_job_id``."""
        uid = instance.sop_instance_uid
        try:
            with self.intake.sessions.begin() as s:
                row = s.get(DicomInstance, uid)
                if row is None:
                    s.add(DicomInstance(sop_instance_uid=uid, job_id=job_id,
                                        sop_class_uid=instance.sop_class_uid,
                                        calling_ae_title=calling_ae, previous_job_id=previous))
                else:
                    row.previous_job_id = previous or row.job_id
                    row.job_id, row.calling_ae_title = job_id, calling_ae
        except IntegrityError:  # another receiver process admitted this UID meanwhile
            log.warning("job %s: SOP instance already mapped by another receiver", job_id)
        if previous is not None:
            log.info("job %s: complete instance after rejected job %s (same SOP Instance UID)",
                     job_id, previous)

    def _resent(self, instance: _Instance) -> tuple[tuple[str, JobState, str | None] | None, str | None]:
        """(the job of an instance already received, recorded as a duplicate submission, or
        None; the rejected job a UID had, which a new try does not count as a re-send of)."""
        uid = instance.sop_instance_uid
        with self.intake.sessions.begin() as s:
            job_id = s.execute(
                select(DicomInstance.job_id).where(DicomInstance.sop_instance_uid == uid)
            ).scalar_one_or_none()
            if job_id is None:
                job_id = s.execute(
                    select(Job.id).join(Image, Job.image_id == Image.id)
                    .where(Image.sop_instance_uid == uid).order_by(Job.created_at.desc()).limit(1)
                ).scalar_one_or_none()
            if job_id is None:
                return None, None
            job = s.get(Job, job_id)
            if job.state in (JobState.REJECTED.value, JobState.FAILED.value):
                return None, job.id  # a failed try: the new instance gets its own chance
            s.add(Submission(job_id=job_id, door=SourceDoor.DICOM.value,
                             original_name=f"{uid}.dcm", duplicate=True))
            return (job.id, JobState(job.state), job.error_code), None


def _answer(job_id: str, state: JobState, error_code: str | None) -> Dataset:
    """The status for an admitted instance: success unless its job is rejected."""
    if state != JobState.REJECTED:
        return _status(SUCCESS)
    code = error_code or "rejected"
    if code == RejectionReason.TOO_LARGE_FILE.value:
        return _status(OUT_OF_RESOURCES, f"rejected: {code} (job {job_id})")
    return _status(CANNOT_UNDERSTAND, f"rejected: {code} (job {job_id})")


def _calling_ae(event: Event) -> str | None:
    try:
        return event.assoc.requestor.ae_title
    except Exception:
        return None


def _read_instance(event: Event) -> _Instance | Dataset:
    """Parse the data set fully (pydicom defers); a failure status when it cannot be read."""
    try:
        data = event.encoded_dataset(include_meta=True)
        ds = dcmread(BytesIO(data), force=False)
        for _element in ds:  # converts every raw top-level element
            pass
        sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except Exception as exc:
        log.info("C-STORE from %s: data set cannot be parsed (%s)", _calling_ae(event),
                 type(exc).__name__)
        return _status(CANNOT_UNDERSTAND, "data set cannot be parsed")
    if not sop_class or not sop_instance or len(sop_instance) > 64:
        return _status(CANNOT_UNDERSTAND, "SOP Class or Instance UID missing or invalid")
    return _Instance(data, sop_class, sop_instance)


class DicomReceiver:
    """A running receiver; ``shutdown()`` stops accepting and closes open associations."""

    def __init__(self, server: ThreadedAssociationServer) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def shutdown(self) -> None:
        self._server.shutdown()


def start_dicom_receiver(settings: Settings, intake: Intake) -> DicomReceiver:
    """Listen on ``dicom_host:dicom_port`` in background threads; returns at once."""
    ae = build_ae(settings)
    handlers = [(evt.EVT_C_STORE, StoreHandler(settings, intake))]
    server = ae.start_server((settings.dicom_host, settings.dicom_port), block=False,
                             evt_handlers=handlers)
    receiver = DicomReceiver(server)
    log.info("DICOM receiver %s listening on %s:%d (%s)", settings.dicom_ae_title,
             settings.dicom_host, receiver.port,
             ", ".join(allowed_calling_aets(settings)) or "any calling AE")
    return receiver
