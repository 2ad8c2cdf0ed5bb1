"""Coded values shared by the database, the workers and the hospital client."""

from enum import StrEnum


class JobState(StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobState.DONE, JobState.REJECTED, JobState.FAILED)


class SourceDoor(StrEnum):
    """How an image entered the system."""

    INTAKE = "intake"  # dropped into the intake folder
    API = "api"  # enqueued by a hospital system through worker.client
    CLI = "cli"  # melanoma-triage enqueue
    DICOM = "dicom"  # C-STORE to our DICOM receiver
    HTTP = "http"  # POST /v1/jobs on the HTTP API


class TriageLevel(StrEnum):
    URGENT = "urgent"  # suspected melanoma
    SOON = "soon"  # suspected BCC, SCC or actinic keratosis
    ROUTINE = "routine"
    INDETERMINATE = "indeterminate"  # unusable image or unsure model

    @property
    def wording(self) -> str:
        return _WORDING[self]


_WORDING = {
    TriageLevel.URGENT: "URGENT - suspected melanoma: urgent referral",
    TriageLevel.SOON: "SOON - suspected keratinocyte cancer or pre-cancer: see within weeks",
    TriageLevel.ROUTINE: "ROUTINE - no suspicious features detected by the model",
    TriageLevel.INDETERMINATE: "INDETERMINATE - the model cannot triage this image: clinician review",
}
