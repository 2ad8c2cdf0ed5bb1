"""DICOM result objects for PACS: the report as an Encapsulated PDF, the structured report
(:mod:`worker.results.dicom_sr`), and for a JPEG/PNG input the photograph itself as a
Dermoscopic Photography Image, so a camera that only writes JPEG still reaches PACS.

Decisions:
* Results go into the input's study (same Study Instance UID and patient module as the
  input file, with the caller's metadata winning, as everywhere else), each object type in
  a new series. A JPEG/PNG input gets a new study unless the caller named one.
* Every UID is derived from the job id (``2.25`` UUID-derived UIDs), so building again
  gives the same instances: a re-send overwrites in PACS instead of duplicating.
* Contributing Equipment names the model and its version (IHE AI Results style); every
  object carries the decision-support statement.
* The photograph is stored uncompressed (the decoded pixels, EXIF orientation applied), so
  nothing is lost twice; Lossy Image Compression says whether the file we got was JPEG.
  What we do not know about the acquisition (polarisation, contact, magnification) is left
  empty, as the standard allows for type 2 attributes, never made up.
* Every object passes dicom3tools' ``dciodvfy`` without errors (tests/test_results_dicom.py).
"""

from __future__ import annotations

import importlib.metadata
import uuid
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
)

from worker.results.codes import DECISION_SUPPORT_STATEMENT, LOCAL_DICOM_SCHEME, LOCAL_SCHEME_NAME
from worker.results.finished_job import FinishedJob

DERMOSCOPY_SOP = "1.2.840.10008.5.1.4.1.1.77.1.7"
VL_PHOTOGRAPHIC_SOP = "1.2.840.10008.5.1.4.1.1.77.1.4"
#: SOP class of the photograph written for a JPEG/PNG input -> its modality.
IMAGE_SOP_MODALITY = {DERMOSCOPY_SOP: "DMS", VL_PHOTOGRAPHIC_SOP: "XC"}

MANUFACTURER = "melanoma-triage"
MODEL_NAME = "melanoma-triage dermoscopy triage"
CHARSET = "ISO_IR 192"  # UTF-8: patient names in any script

#: Series numbers of what we add to a study (high, so they sort after the camera's series).
SR_SERIES_NUMBER = 9001
PDF_SERIES_NUMBER = 9002
IMAGE_SERIES_NUMBER = 1

#: Namespace of our name-based UIDs (a random UUID, fixed forever).
UID_NAMESPACE = uuid.UUID("0b6a5c8e-2f4d-4f61-9a3e-7d1c52e8b9f4")

REPORT_TITLE = "Dermoscopy triage report - decision support"

#: Patient and study attributes copied from the input file into every result object.
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription",
)
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class ResultObject:
    """One DICOM object to send, with the short name it is filed under in the outbox."""

    name: str  # "sr" | "report" | "image"
    dataset: Dataset


def software_version() -> str:
    try:
        return importlib.metadata.version("melanoma-triage")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def result_uid(job_id: str, what: str) -> str:
    """A UID that is the same every time for this job and this object: a name-based UUID
    (RFC 4122 version 5) under the ``2.25`` root (ISO/IEC 9834-8, PS3.5 B.2)."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, f'{job_id}/{what}').int}"


def dicom_date(ts: datetime) -> str:
    return ts.strftime("%Y%m%d")


def dicom_time(ts: datetime) -> str:
    return ts.strftime("%H%M%S")


# --------------------------------------------------------------------------- the source


def source_reference(job: FinishedJob, image_sop_class: str = DERMOSCOPY_SOP) -> Dataset:
    """The image the result is about, as PACS will know it.

    For a DICOM input: the archived file's patient, study and SOP identity (no pixels), the
    job's metadata over it. For a JPEG/PNG input, or a DICOM file without the UIDs PACS
    needs: the photograph we write for it (:func:`build_photograph`), pixels included.
    """
    if not job.is_dicom_input:
        return build_photograph(job, image_sop_class)
    ref = _dicom_header_reference(job)
    if not all(ref.get(k) for k in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID")):
        # A decodable file that PACS could not place: send our own copy in a new study.
        return build_photograph(job, image_sop_class)
    return ref


def _dicom_header_reference(job: FinishedJob) -> Dataset:
    header = Dataset()
    if job.archive_path is not None and job.archive_path.exists():
        header = dcmread(BytesIO(job.archive_path.read_bytes()), stop_before_pixels=True)
    ref = Dataset()
    for keyword in PATIENT_STUDY_KEYWORDS + ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"):
        if keyword in header:
            setattr(ref, keyword, header[keyword].value)
    _apply_metadata(ref, job)
    for keyword in _TYPE2:
        if keyword not in ref:
            setattr(ref, keyword, "")
    return ref


def _apply_metadata(ds: Dataset, job: FinishedJob) -> None:
    """The job's identifiers (caller metadata over file tags) win over the file's header."""
    md = job.metadata
    values = {
        "PatientID": md.patient_id,
        "PatientName": md.patient_name,
        "AccessionNumber": md.accession_number,
        "StudyInstanceUID": md.study_instance_uid,
        "SeriesInstanceUID": md.series_instance_uid,
        "SOPInstanceUID": md.sop_instance_uid,
        "SOPClassUID": md.sop_class_uid,
        "StudyDate": dicom_date(datetime.combine(md.study_date, datetime.min.time()))
        if md.study_date else None,
    }
    for keyword, value in values.items():
        if value:
            setattr(ds, keyword, value)


def _copy_patient_study(dst: Dataset, src: Dataset) -> None:
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in src:
            setattr(dst, keyword, src[keyword].value)
        elif keyword in _TYPE2:
            setattr(dst, keyword, "")


# --------------------------------------------------------------------------- shared modules


def contributing_equipment(job: FinishedJob) -> Dataset:
    """The model that produced the result, IHE AI Results style (purpose: processing)."""
    from highdicom import ContributingEquipment
    from pydicom.sr.codedict import codes

    return ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=MODEL_NAME,
        software_versions=[job.model_version, software_version()],
        contribution_datetime=job.finished_at,
        contribution_description=DECISION_SUPPORT_STATEMENT,
    )


def local_coding_scheme():
    """Declares our private coding scheme, as PS3.3 asks of any private scheme used."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(
        designator=LOCAL_DICOM_SCHEME, name=LOCAL_SCHEME_NAME, responsible_organization=MANUFACTURER)


def _new_instance(sop_class: str, sop_instance: str, job: FinishedJob) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = CHARSET
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.InstanceCreationDate = dicom_date(job.finished_at)
    ds.InstanceCreationTime = dicom_time(job.finished_at)
    ds.InstanceNumber = 1
    ds.ContentDate = dicom_date(job.finished_at)
    ds.ContentTime = dicom_time(job.finished_at)
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = [job.model_version, software_version()]
    ds.ContributingEquipmentSequence = Sequence([contributing_equipment(job)])
    return ds


def _source_instance_sequence(source: Dataset) -> Sequence:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return Sequence([item])


# --------------------------------------------------------------------------- the objects


def build_report_pdf(job: FinishedJob, source: Dataset, pdf: bytes | None = None) -> Dataset:
    """Encapsulated PDF (1.2.840.10008.5.1.4.1.1.104.1) of the report, in the source's study."""
    pdf = pdf if pdf is not None else job.report_path.read_bytes()
    ds = _new_instance(EncapsulatedPDFStorage, result_uid(job.job_id, "report"), job)
    _copy_patient_study(ds, source)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = result_uid(job.job_id, "report-series")
    ds.SeriesNumber = PDF_SERIES_NUMBER
    ds.SeriesDescription = "AI triage report (decision support)"
    ds.ConversionType = "WSD"  # made on a workstation, not digitised
    ds.AcquisitionDateTime = ""
    ds.BurnedInAnnotation = "YES"  # the report shows the patient's identifiers
    ds.DocumentTitle = REPORT_TITLE
    ds.ConceptNameCodeSequence = Sequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.SourceInstanceSequence = _source_instance_sequence(source)
    return ds


def build_photograph(job: FinishedJob, sop_class: str = DERMOSCOPY_SOP,
                     rgb: np.ndarray | None = None) -> Dataset:
    """The JPEG/PNG input as a Dermoscopic Photography Image (or VL Photographic Image).

    ``rgb`` defaults to the archived file decoded by the product's own decoder.
    """
    if sop_class not in IMAGE_SOP_MODALITY:
        raise ValueError(f"unsupported photograph SOP class {sop_class}")
    if rgb is None:
        rgb = _decode_archived(job)
    md = job.metadata
    ds = _new_instance(sop_class, result_uid(job.job_id, "image"), job)
    ds.PatientName = md.patient_name or ""
    ds.PatientID = md.patient_id or ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = md.study_instance_uid or result_uid(job.job_id, "study")
    ds.StudyDate = dicom_date(datetime.combine(md.study_date, datetime.min.time())) \
        if md.study_date else dicom_date(job.received_at)
    ds.StudyTime = "" if md.study_date else dicom_time(job.received_at)
    ds.ReferringPhysicianName = ""
    ds.StudyID = "" if md.study_instance_uid else job.job_id[:16]  # a study we created
    ds.AccessionNumber = md.accession_number or ""
    ds.Modality = IMAGE_SOP_MODALITY[sop_class]
    ds.SeriesInstanceUID = result_uid(job.job_id, "image-series")
    ds.SeriesNumber = IMAGE_SERIES_NUMBER
    ds.SeriesDescription = "Dermoscopy photograph (converted from %s)" % (job.source_format or "file").upper()
    if sop_class == DERMOSCOPY_SOP:  # Enhanced General Equipment is type 1 here
        ds.DeviceSerialNumber = "none (software conversion)"
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageComments = (
        f"Converted by melanoma-triage from a {(job.source_format or 'non-DICOM').upper()} file; "
        "the acquisition device and its settings were not recorded."
        + (f" Body site as sent: {md.body_site}." if md.body_site else "")
    )
    if md.laterality:
        ds.ImageLaterality = md.laterality
    else:
        ds.Laterality = ""  # series laterality, type 2C: required (empty) without an image one
    ds.BurnedInAnnotation = "NO"
    # De-identification tools must be cautious: we cannot tell what the photograph shows.
    ds.RecognizableVisualFeatures = "YES"
    lossy = job.source_format == "jpeg"
    ds.LossyImageCompression = "01" if lossy else "00"
    if lossy:
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.AcquisitionContextSequence = Sequence()
    if sop_class == DERMOSCOPY_SOP:
        # dciodvfy checks this IOD's (user-optional) Frame of Reference module unconditionally.
        ds.FrameOfReferenceUID = result_uid(job.job_id, "frame-of-reference")
        ds.PositionReferenceIndicator = ""
        # Dermoscopic Image module: what we do not know stays empty (type 2).
        ds.LightSourcePolarization = ""
        ds.EmitterColorTemperature = None
        ds.ContactMethod = ""
        ds.OpticalMagnificationFactor = None
    _set_rgb_pixels(ds, rgb)
    return ds


def _decode_archived(job: FinishedJob) -> np.ndarray:
    from worker.imaging.decode import decode_bytes

    if job.archive_path is None:
        raise FileNotFoundError("the job has no archived image")
    return decode_bytes(job.archive_path.read_bytes()).rgb


def _set_rgb_pixels(ds: Dataset, rgb: np.ndarray) -> None:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got {rgb.shape}")
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()


def to_bytes(ds: Dataset) -> bytes:
    """A Part 10 file (preamble, file meta) in explicit VR little endian."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_objects(objects: list[ResultObject], folder: Path) -> list[Path]:
    """Write each object as ``<name>.dcm`` atomically; returns the paths in sending order."""
    from worker.durable import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for obj in objects:
        path = folder / f"{obj.name}.dcm"
        write_atomic(path, to_bytes(obj.dataset))
        paths.append(path)
    return paths
