"""Pydantic messages: what crosses process and system boundaries (JSON only)."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from schemas.classes import CLASS_NAMES
from schemas.codes import Laterality
from schemas.dicom_values import FIELD_RULES
from schemas.states import TriageLevel


class ImageMetadata(BaseModel):
    """Patient and study identifiers of one image. Every field is optional.

    Text fields are checked against their DICOM VR (``schemas.dicom_values``): a value
    that breaks it is refused here, whether a caller sent it or a DICOM file held it.
    Errors never echo the input (``hide_input_in_errors``): it is patient data.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_date: date | None = None
    body_site: str | None = None
    laterality: str | None = None

    @field_validator(*FIELD_RULES, mode="after")
    @classmethod
    def _dicom_vr(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Padding stripped, empty read as absent; too long or malformed: refused, never cut."""
        if v is None:
            return None
        return FIELD_RULES[info.field_name].check(v) or None

    @field_validator("laterality")
    @classmethod
    def _laterality(cls, v: str | None) -> str | None:
        """Stored as the DICOM code ("L"), so the database and the tags agree."""
        if v is None or v == "":
            return None
        try:
            return Laterality(v.strip().upper()).value
        except ValueError:
            choices = ", ".join(f"{lat.value} ({lat.wording.lower()})" for lat in Laterality)
            raise ValueError(f"laterality must be one of {choices}") from None

    def merged_over(self, base: ImageMetadata) -> ImageMetadata:
        """Fields set here win over those of ``base`` (caller metadata over file tags)."""
        data = base.model_dump()
        data.update({k: v for k, v in self.model_dump().items() if v not in (None, "")})
        return ImageMetadata(**data)


class EnqueueRequest(BaseModel):
    """What a hospital system sends with an image."""

    metadata: ImageMetadata = Field(default_factory=ImageMetadata)
    original_name: str | None = None


class TriageThresholds(BaseModel):
    """Operating points stored with a model version, applied to calibrated probabilities."""

    urgent_melanoma: float = Field(ge=0, le=1)
    soon_keratinocyte: float = Field(ge=0, le=1)
    min_confidence: float = Field(ge=0, le=1)
    # Recorded with the thresholds: what they give on validation data.
    urgent_sensitivity: float | None = None
    urgent_specificity: float | None = None
    soon_sensitivity: float | None = None
    soon_specificity: float | None = None
    # The largest urgent threshold that keeps validation melanoma sensitivity >= 0.95 (the
    # requirement, without the margin ``urgent_melanoma`` keeps): how far a leave-one-source-out
    # rule may raise ``urgent_melanoma`` (``models apply-loso``). None: never raised.
    urgent_melanoma_ceiling: float | None = Field(default=None, ge=0, le=1)
    # The class call: argmax of log(p) + class_bias (a prior correction fitted on validation
    # for balanced accuracy; rare classes are otherwise almost never named). None: argmax of p.
    # Triage never uses it: it reads the calibrated probabilities above.
    class_bias: list[float] | None = None


class ModelMetadata(BaseModel):
    """model.json of one model store version."""

    version: str
    created_at: datetime
    parent_version: str | None = None
    sha256: str
    input_size: int
    class_names: list[str] = Field(default_factory=lambda: list(CLASS_NAMES))
    temperature: float = 1.0
    thresholds: TriageThresholds
    metrics: dict = Field(default_factory=dict)
    training_command: str | None = None
    data_manifest_sha256: str | None = None
    notes: str | None = None
    #: The training recipe (``worker.training.config.recipe``): what retraining repeats.
    recipe: dict | None = None


class PredictionResult(BaseModel):
    path: str | None = None
    model_version: str
    probabilities: dict[str, float]
    melanoma_probability: float
    predicted_class: str
    triage: TriageLevel
