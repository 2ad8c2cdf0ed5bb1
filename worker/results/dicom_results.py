"""Every DICOM object melanoma-triage writes for one finished job, in sending order."""

from __future__ import annotations

from worker.results.dicom_objects import (
    DERMOSCOPY_SOP,
    ResultObject,
    build_report_pdf,
    source_reference,
)
from worker.results.dicom_sr import build_structured_report
from worker.results.finished_job import FinishedJob


def build_dicom_results(job: FinishedJob, image_sop_class: str = DERMOSCOPY_SOP,
                        pdf: bytes | None = None) -> list[ResultObject]:
    """Every DICOM object for one finished job, in sending order (image before references)."""
    source = source_reference(job, image_sop_class)
    objects: list[ResultObject] = []
    if "PixelData" in source:  # our own copy of the photograph: PACS needs it first
        objects.append(ResultObject("image", source))
    objects.append(ResultObject("sr", build_structured_report(job, source)))
    objects.append(ResultObject("report", build_report_pdf(job, source, pdf)))
    return objects
