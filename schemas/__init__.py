"""The data contract of melanoma-triage.

Pydantic messages and enums that a hospital system can import without TensorFlow,
Celery or SQLAlchemy.
"""

from schemas.classes import CLASS_NAMES, MELANOMA, MELANOMA_INDEX, SOON_CLASSES, LesionClass
from schemas.codes import (
    DeliveryKind,
    DeliveryState,
    Laterality,
    ModelAction,
    RejectionReason,
    RetrainState,
    TruthSource,
)
from schemas.messages import (
    EnqueueRequest,
    ImageMetadata,
    ModelMetadata,
    PredictionResult,
    TriageThresholds,
)
from schemas.states import JobState, SourceDoor, TriageLevel

__all__ = [
    "CLASS_NAMES",
    "MELANOMA",
    "MELANOMA_INDEX",
    "SOON_CLASSES",
    "LesionClass",
    "EnqueueRequest",
    "ImageMetadata",
    "ModelMetadata",
    "PredictionResult",
    "TriageThresholds",
    "JobState",
    "SourceDoor",
    "TriageLevel",
    "DeliveryKind",
    "DeliveryState",
    "Laterality",
    "ModelAction",
    "RejectionReason",
    "RetrainState",
    "TruthSource",
]
