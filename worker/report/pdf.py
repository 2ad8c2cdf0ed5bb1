"""The one-page PDF triage report as a file: its name and its atomic writing.

The content record lives in :mod:`worker.report.content` and the drawing in
:mod:`worker.report.layout`; this module owns the side effect (the file).
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import unicodedata

from schemas import ImageMetadata
from worker.durable import write_atomic, write_new
from worker.report.content import ReportContent

#: Longest identifier part and longest job-id part of a report file name.
MAX_NAME_PART = 64
#: Used when an image has neither an accession number nor a patient id.
NO_ID = "NOID"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


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


def report_filename(metadata: ImageMetadata, job_id: str, original_name: str | None = None) -> str:
    """``<accession or patient id>_<job_id>.pdf``: what staff search for, safe on any share.
    With neither id, ``<stem of the original file name>_<job_id>.pdf`` (``lesion.jpg`` ->
    ``lesion_<job>.pdf``), and ``NOID_<job_id>.pdf`` when there is no usable name either."""
    job = _safe_part(job_id)
    if not job:
        raise ValueError("job_id has no usable characters for a file name")
    key = (_safe_part(metadata.accession_number) or _safe_part(metadata.patient_id)
           or _safe_part(_stem(original_name)) or NO_ID)
    return f"{key}_{job}.pdf"


def _stem(name: str | None) -> str | None:
    """The original name's last path part without its extension."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, _ext = base.rpartition(".")
    return stem if dot and stem else base


def render_report(content: ReportContent, out_path: pathlib.Path, *, private: bool = False) -> str:
    """Write the report and return its sha256 hex.

    Readers of the folder (staff, PACS export, pollers) only ever see a complete file:
    the PDF is written to a hidden temp file beside ``out_path`` and renamed over it.
    ``private``: ``out_path`` is itself a new hidden name that no reader looks at, and the
    caller renames it into place and makes that durable (``pipeline.place_report``): the
    bytes are written there and fsynced, without a temp file, a rename and a folder sync
    of their own (two of the five file-system round trips a report cost).
    """
    from worker.report.layout import build_pdf  # reportlab import kept off the import path

    out_path = pathlib.Path(out_path)
    data = build_pdf(content)
    digest = hashlib.sha256(data).hexdigest()
    if private:
        write_new(out_path, data)
    else:
        write_atomic(out_path, data)
    return digest
