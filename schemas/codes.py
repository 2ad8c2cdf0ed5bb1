"""Coded values recorded in the database and shown to people: one enum per code list.

Values are the strings stored in the database; never rename one without a migration.
"""

from enum import StrEnum


class RejectionReason(StrEnum):
    """Why an image was rejected or failed (``jobs.error_code`` and the rejection sidecar)."""

    EMPTY_FILE = "empty_file"
    TOO_LARGE_FILE = "too_large_file"
    NOT_AN_IMAGE = "not_an_image"
    UNREADABLE = "unreadable"
    NOT_A_REGULAR_FILE = "not_a_regular_file"  # FIFO, socket, dangling or looping symlink
    TRUNCATED = "truncated"
    DECOMPRESSION_BOMB = "decompression_bomb"
    TOO_SMALL = "too_small"
    DICOM_INVALID = "dicom_invalid"
    DICOM_NO_PIXEL_DATA = "dicom_no_pixel_data"
    DICOM_UNSUPPORTED = "dicom_unsupported"
    DUPLICATE_OF_REJECTED = "duplicate_of_rejected"
    TIMEOUT = "timeout"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    INTERNAL_ERROR = "internal_error"
    # Metadata dropped with images in the intake folder (worker.intake.sidecars).
    INVALID_SIDECAR = "invalid_sidecar"  # unreadable JSON or keys: its image goes on without it
    ORPHAN_SIDECAR = "orphan_sidecar"  # no image with its stem arrived
    INVALID_MANIFEST = "invalid_manifest"  # manifest.csv unreadable: its folder's images go on
    MANIFEST_UNMATCHED = "manifest_unmatched"  # rows whose file never arrived


class Laterality(StrEnum):
    """DICOM Image Laterality (0020,0062) values."""

    LEFT = "L"
    RIGHT = "R"
    BOTH = "B"
    UNPAIRED = "U"

    @property
    def wording(self) -> str:
        return _LATERALITY_WORDING[self]


_LATERALITY_WORDING = {
    Laterality.LEFT: "Left",
    Laterality.RIGHT: "Right",
    Laterality.BOTH: "Both sides",
    Laterality.UNPAIRED: "Unpaired",
}


class TruthSource(StrEnum):
    """Where a confirmed diagnosis comes from, strongest first (histopathology wins)."""

    HISTOPATHOLOGY = "histopathology"
    CONSENSUS = "consensus"
    CLINICAL = "clinical"


class RetrainState(StrEnum):
    """State of one retraining run (``retrain_runs.state``)."""

    RUNNING = "running"
    PROMOTED = "promoted"
    KEPT = "kept"
    FAILED = "failed"
    BUSY = "busy"  # another retraining held the lease; nothing was recorded
    PENDING_APPROVAL = "pending_approval"  # passed the gates; stored, waits for ``models approve``


class ModelAction(StrEnum):
    """What happened to the model store (``model_events.action``)."""

    SEED = "seed"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    SHADOW_ON = "shadow_on"
    SHADOW_OFF = "shadow_off"
    APPROVE = "approve"  # a person made a retrained challenger that waited for approval current


class DeliveryKind(StrEnum):
    DICOM = "dicom"  # C-STORE of the DICOM result objects
    FHIR = "fhir"  # POST of the FHIR bundle
    WEBHOOK = "webhook"  # signed JSON POST for an urgent result


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"  # out of attempts, or refused for good: waits for ``deliveries resend``
