"""The one-page PDF triage report: content record, file naming and atomic writing.

Layout lives in :mod:`worker.report.layout`; this module owns the contract that the
pipeline codes against and the side effect (the file).
"""

from __future__ import annotations

import hashlib
import math
import pathlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from schemas import CLASS_NAMES, ImageMetadata, TriageLevel, TriageThresholds
from worker.durable import write_atomic

#: Longest identifier part and longest job-id part of a report file name.
MAX_NAME_PART = 64
#: Used when an image has neither an accession number nor a patient id.
NO_ID = "NOID"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


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

    def __post_init__(self) -> None:
        img = self.image_rgb
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image_rgb must be an HxWx3 array, got {getattr(img, 'shape', type(img))}")
        if img.dtype != np.uint8:
            raise ValueError(f"image_rgb must be uint8, got {img.dtype}")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError("image_rgb is empty")
        missing = set(CLASS_NAMES) - set(self.probabilities)
        extra = set(self.probabilities) - set(CLASS_NAMES)
        if missing or extra:
            raise ValueError(f"probabilities keys differ from CLASS_NAMES: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, p in self.probabilities.items():
            if not (isinstance(p, (int, float)) and math.isfinite(p) and -1e-6 <= p <= 1 + 1e-6):
                raise ValueError(f"probability of {name} must be a finite number in [0, 1], got {p!r}")
        if not isinstance(self.triage, TriageLevel):
            raise ValueError(f"triage must be a TriageLevel, got {self.triage!r}")
        for field in ("received_at", "reported_at"):
            ts = getattr(self, field)
            if ts.tzinfo is None or ts.utcoffset() is None:
                raise ValueError(f"{field} must be timezone-aware (UTC)")


def _safe_part(value: str | None) -> str:
    """ASCII letters, digits, '.', '_', '-' only; no leading dots or dashes; bounded."""
    if not value:
        return ""
    ascii_text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    text = _UNSAFE.sub("_", ascii_text)
    text = re.sub(r"\.{2,}", ".", text)  # never a '..' component
    text = re.sub(r"_{2,}", "_", text)
    text = text.strip("._-")
    return text[:MAX_NAME_PART].rstrip("._-")


def report_filename(metadata: ImageMetadata, job_id: str) -> str:
    """``<accession or patient id>_<job_id>.pdf``: what staff search for, safe on any share."""
    job = _safe_part(job_id)
    if not job:
        raise ValueError("job_id has no usable characters for a file name")
    key = _safe_part(metadata.accession_number) or _safe_part(metadata.patient_id) or NO_ID
    return f"{key}_{job}.pdf"


def render_report(content: ReportContent, out_path: pathlib.Path) -> str:
    """Write the report atomically and return its sha256 hex.

    Readers of the folder (staff, PACS export, pollers) only ever see a complete file:
    the PDF is written to a hidden temp file beside ``out_path`` and renamed over it.
    """
    from worker.report.layout import build_pdf  # reportlab import kept off the import path

    out_path = pathlib.Path(out_path)
    data = build_pdf(content)
    digest = hashlib.sha256(data).hexdigest()
    write_atomic(out_path, data)
    return digest

