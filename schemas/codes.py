"""Coded values recorded in the database and shown to people: one enum per code list.

Values are the strings stored in the database; never rename one without a migration.
"""

from enum import Enum


class RejectionReason(str, Enum):
    """Why an image was rejected or failed (``jobs.error_code`` and the rejection sidecar)."""

    EMPTY_FILE = "empty_file"
    TOO_LARGE_FILE = "too_large_file"
    NOT_AN_IMAGE = "not_an_image"
    UNREADABLE = "unreadable"
    TRUNCATED = "truncated"
    DECOMPRESSION_BOMB = "decompression_bomb"
    TOO_SMALL = "too_small"
    DICOM_INVALID = "dicom_invalid"
    DICOM_NO_PIXEL_DATA = "dicom_no_pixel_data"
    DICOM_UNSUPPORTED = "dicom_unsupported"
    DUPLICATE_OF_REJECTED = "duplicate_of_rejected"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal_error"


class Laterality(str, Enum):
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


class TruthSource(str, Enum):
    """Where a confirmed diagnosis comes from, strongest first (histopathology wins)."""

    HISTOPATHOLOGY = "histopathology"
    CONSENSUS = "consensus"
    CLINICAL = "clinical"


class RetrainState(str, Enum):
    """State of one retraining run (``retrain_runs.state``)."""

    RUNNING = "running"
    PROMOTED = "promoted"
    KEPT = "kept"
    FAILED = "failed"
    BUSY = "busy"  # another retraining held the lease; nothing was recorded


class ModelAction(str, Enum):
    """What happened to the model store (``model_events.action``)."""

    SEED = "seed"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    SHADOW_ON = "shadow_on"
    SHADOW_OFF = "shadow_off"
