"""What one triage report shows: the record the pipeline fills and the layout draws.

Validated on construction, so the layout never has to guess and a bad value fails in
the pipeline, before any file is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from schemas import CLASS_NAMES, ImageMetadata, TriageLevel, TriageThresholds


@dataclass(frozen=True, eq=False)
class ReportContent:
    """Everything one report shows. Validated on construction so layout never guesses.

    ``eq=False`` because the image array has no meaningful ``==``.
    """

    job_id: str
    metadata: ImageMetadata
    image_rgb: np.ndarray
    probabilities: dict[str, float]
    triage: TriageLevel
    triage_explanation: str
    thresholds: TriageThresholds
    model_version: str
    image_sha256: str
    received_at: datetime
    reported_at: datetime
    quality_note: str | None = None
    #: The file ``image_rgb`` was decoded from, when it is a JPEG: embedded as it is (its
    #: image segments only) when it shows the same pixels (``worker.report.thumbnail``).
    source_jpeg: bytes | None = None
    #: The name the file came with (intake folder, HTTP upload, DICOM re-send): printed.
    original_name: str | None = None
    #: The model's class call (``PredictionResult.predicted_class``): printed under the banner.
    predicted_class: str | None = None
    #: IANA zone of every time printed (``TRIAGE_TIMEZONE``), with the zone named.
    timezone: str = "UTC"
    #: The banner's words for this level (``TRIAGE_REFERRAL_WORDING``); None: the neutral default.
    referral_wording: str | None = None
    #: Which calibration the percentages use (``Classifier.calibration_note``): the version,
    #: and for a site version the confirmed cases of the site it was calibrated on.
    calibration_note: str | None = None

    def __post_init__(self) -> None:
        img = self.image_rgb
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image_rgb must be an HxWx3 array, got {getattr(img, 'shape', type(img))}")
        if img.dtype != np.uint8:
            raise ValueError(f"image_rgb must be uint8, got {img.dtype}")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError("image_rgb is empty")
        if self.source_jpeg is not None and not isinstance(self.source_jpeg, bytes):
            raise ValueError(f"source_jpeg must be bytes or None, got {type(self.source_jpeg).__name__}")
        missing = set(CLASS_NAMES) - set(self.probabilities)
        extra = set(self.probabilities) - set(CLASS_NAMES)
        if missing or extra:
            raise ValueError(f"probabilities keys differ from CLASS_NAMES: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, p in self.probabilities.items():
            if not (isinstance(p, (int, float)) and math.isfinite(p) and -1e-6 <= p <= 1 + 1e-6):
                raise ValueError(f"probability of {name} must be a finite number in [0, 1], got {p!r}")
        if self.predicted_class is not None and self.predicted_class not in CLASS_NAMES:
            raise ValueError(f"predicted_class must be one of CLASS_NAMES, got {self.predicted_class!r}")
        if not isinstance(self.triage, TriageLevel):
            raise ValueError(f"triage must be a TriageLevel, got {self.triage!r}")
        for field in ("received_at", "reported_at"):
            ts = getattr(self, field)
            if ts.tzinfo is None or ts.utcoffset() is None:
                raise ValueError(f"{field} must be timezone-aware (UTC)")
