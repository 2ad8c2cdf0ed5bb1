"""DICOM result objects: valid per dicom3tools' dciodvfy, in the right study, with the
right content; and our C-STORE sender against dcmtk's storescp, read back by dcmdump."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread, uid

from schemas import ImageMetadata, TriageLevel
from tests.imagegen import lesion_rgb
from tests.resultgen import (
    INPUT_SOP_UID,
    INPUT_STUDY_UID,
    MODEL_VERSION,
    StoreSCP,
    finished_job,
    free_port,
    input_bytes,
)
from worker.imaging.decode import decode_bytes
from worker.results.dicom_objects import (
    DERMOSCOPY_SOP,
    VL_PHOTOGRAPHIC_SOP,
    write_objects,
)
from worker.results.dicom_results import build_dicom_results
from worker.results.dicom_sender import DicomDestination, parse_destinations, send_files
from worker.results.errors import DeliveryError


def dciodvfy(path: Path) -> str:
    assert shutil.which("dciodvfy"), "dicom3tools is part of the test setup (scripts/setup.sh)"
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def assert_valid(path: Path) -> None:
    report = dciodvfy(path)
    errors = [line for line in report.splitlines() if line.strip().startswith("Error")]
    assert not errors, f"dciodvfy found errors in {path.name}:\n{report}"


def objects_for(tmp_path: Path, fmt: str, sop_class: str = DERMOSCOPY_SOP, **kwargs) -> dict:
    job = finished_job(tmp_path / "in", fmt, **kwargs)
    objects = build_dicom_results(job, sop_class)
    paths = write_objects(objects, tmp_path / "out")
    return {obj.name: path for obj, path in zip(objects, paths)}


@pytest.mark.parametrize("fmt,sop_class", [
    ("dicom", DERMOSCOPY_SOP),
    ("jpeg", DERMOSCOPY_SOP),
    ("png", VL_PHOTOGRAPHIC_SOP),
])
def test_every_object_passes_dciodvfy(tmp_path, fmt, sop_class):
    paths = objects_for(tmp_path, fmt, sop_class)
    assert set(paths) == ({"sr", "report"} if fmt == "dicom" else {"image", "sr", "report"})
    for path in paths.values():
        assert_valid(path)


def test_jpeg_baseline_dicom_input_with_non_latin_name(tmp_path):
    data = input_bytes("dicom", transfer_syntax=uid.JPEGBaseline8Bit, photometric="YBR_FULL_422")
    meta = ImageMetadata(patient_id="Ж-77", patient_name="Ёлкина^Мария", study_instance_uid=INPUT_STUDY_UID,
                         sop_instance_uid=INPUT_SOP_UID, sop_class_uid=DERMOSCOPY_SOP)
    paths = objects_for(tmp_path, "dicom", data=data, metadata=meta)
    for path in paths.values():
        assert_valid(path)
        ds = dcmread(path)
        assert str(ds.PatientName) == "Ёлкина^Мария" and ds.PatientID == "Ж-77"


def test_dicom_input_without_uids_gets_its_own_copy_in_a_new_study(tmp_path):
    data = input_bytes("dicom", dicom_metadata={"StudyInstanceUID": None, "SOPInstanceUID": None})
    paths = objects_for(tmp_path, "dicom", data=data, metadata=ImageMetadata(patient_id="X-1"))
    assert set(paths) == {"image", "sr", "report"}
    for path in paths.values():
        assert_valid(path)
    assert len({dcmread(p).StudyInstanceUID for p in paths.values()}) == 1


def test_results_land_in_the_input_study_as_new_series(tmp_path):
    paths = objects_for(tmp_path, "dicom")
    sr, pdf = dcmread(paths["sr"]), dcmread(paths["report"])
    source = dcmread(tmp_path / "in" / "0123456789abcdef0123456789abcdef.dicom", stop_before_pixels=True)
    for ds in (sr, pdf):
        assert ds.StudyInstanceUID == INPUT_STUDY_UID
        assert ds.PatientID == "TEST-0001" and str(ds.PatientName) == "Doe^Jane"
        assert ds.AccessionNumber == "ACC0001"
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        equipment = ds.ContributingEquipmentSequence[0]
        assert MODEL_VERSION in equipment.SoftwareVersions
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert "decision support" in equipment.ContributionDescription.lower()
    assert sr.SeriesInstanceUID != pdf.SeriesInstanceUID
    assert pdf.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and pdf.Modality == "DOC"
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    document = bytes(pdf.EncapsulatedDocument)[: pdf.EncapsulatedDocumentLength]
    assert document.startswith(b"%PDF") and document.rstrip(b"\x00").endswith(b"%%EOF\n")
    assert pdf.SourceInstanceSequence[0].ReferencedSOPInstanceUID == INPUT_SOP_UID


def test_structured_report_content(tmp_path):
    paths = objects_for(tmp_path, "dicom", melanoma=0.83)
    sr = hd.sr.srread(paths["sr"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MELTRIAGE"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == INPUT_SOP_UID

    group = sr.content.get_image_measurement_groups()[0]
    assert group.source_images[0].referenced_sop_instance_uid == INPUT_SOP_UID
    measurement = group.get_measurements()[0]
    assert measurement.name.meaning == "Melanoma probability"
    assert measurement.value == pytest.approx(0.83)
    assert measurement.unit.value == "1"
    evaluations = {e.name.meaning: e.value for e in group.get_qualitative_evaluations()}
    finding = evaluations["Predicted lesion class"]
    assert (finding.value, finding.scheme_designator) == ("372244006", "SCT")
    assert evaluations["Triage level"].value == "URGENT"
    texts = {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
             for item in group[0].ContentSequence if item.ValueType == "TEXT"}
    assert texts["Algorithm Version"] == MODEL_VERSION  # TID 4019
    assert "not a diagnosis" in texts["Comment"]


@pytest.mark.parametrize("cls,code,scheme", [
    ("nevus", "400096001", "SCT"),
    ("basal_cell_carcinoma", "254701007", "SCT"),
    ("seborrheic_keratosis", "SK", "99MELTRIAGE"),
])
def test_predicted_class_codes(tmp_path, cls, code, scheme):
    paths = objects_for(tmp_path, "dicom", predicted_class=cls, melanoma=0.05, triage=TriageLevel.ROUTINE)
    group = hd.sr.srread(paths["sr"]).content.get_image_measurement_groups()[0]
    finding = {e.name.meaning: e.value for e in group.get_qualitative_evaluations()}["Predicted lesion class"]
    assert (finding.value, finding.scheme_designator) == (code, scheme)


def test_jpeg_input_becomes_a_dermoscopic_image_in_a_new_study(tmp_path):
    rgb = lesion_rgb((96, 128))
    paths = objects_for(tmp_path, "jpeg", data=input_bytes("jpeg", rgb=rgb))
    image, sr, pdf = (dcmread(paths[k]) for k in ("image", "sr", "report"))
    assert image.SOPClassUID == DERMOSCOPY_SOP and image.Modality == "DMS"
    assert image.StudyInstanceUID not in (INPUT_STUDY_UID, "")
    assert sr.StudyInstanceUID == pdf.StudyInstanceUID == image.StudyInstanceUID
    assert image.PatientID == "P-JPEG-7" and image.ImageLaterality == "R"
    assert image.LossyImageCompression == "01"  # the file we got was JPEG
    assert image.ContactMethod == "" and image.LightSourcePolarization == ""  # unknown: empty
    decoded = decode_bytes(input_bytes("jpeg", rgb=rgb)).rgb
    assert np.array_equal(image.pixel_array, decoded)  # no second lossy step
    ref = hd.sr.srread(paths["sr"]).content.get_image_measurement_groups()[0].source_images[0]
    assert ref.referenced_sop_instance_uid == image.SOPInstanceUID


def test_building_twice_gives_the_same_instances(tmp_path):
    first = objects_for(tmp_path / "a", "jpeg")
    second = objects_for(tmp_path / "b", "jpeg")
    for name in first:
        a, b = dcmread(first[name]), dcmread(second[name])
        assert (a.SOPInstanceUID, a.SeriesInstanceUID, a.StudyInstanceUID) == \
               (b.SOPInstanceUID, b.SeriesInstanceUID, b.StudyInstanceUID)


def test_destination_parsing():
    assert parse_destinations(" PACS@10.0.0.5:104 ,ARCHIVE@pacs.example.org:11112") == [
        DicomDestination("PACS", "10.0.0.5", 104), DicomDestination("ARCHIVE", "pacs.example.org", 11112)]
    assert parse_destinations("") == []
    for bad in ("PACS@host", "@host:104", "WAYTOOLONGAETITLE17@h:104", "P@h:70000", "P\\Q@h:1"):
        with pytest.raises(ValueError):
            DicomDestination.parse(bad)


# --------------------------------------------------------------------------- over the network


@pytest.fixture
def storescp(tmp_path):
    with StoreSCP(tmp_path / "received") as scp:
        yield DicomDestination("PACS", "127.0.0.1", scp.port), scp.folder


def dcmdump(path: Path) -> str:
    out = subprocess.run(["dcmdump", "-Un", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_sender_stores_every_object_on_storescp(tmp_path, storescp):
    destination, folder = storescp
    paths = objects_for(tmp_path, "jpeg")
    send_files(destination, list(paths.values()), calling_ae="MELTRIAGE", timeout_s=10)
    received = sorted(folder.iterdir())
    assert len(received) == 3
    dumps = "\n".join(dcmdump(p) for p in received)
    assert "(0008,0016) UI [1.2.840.10008.5.1.4.1.1.77.1.7]" in dumps  # 77.1.7 went through
    assert "(0008,0016) UI [1.2.840.10008.5.1.4.1.1.88.33]" in dumps  # Comprehensive SR
    assert "(0008,0016) UI [1.2.840.10008.5.1.4.1.1.104.1]" in dumps  # Encapsulated PDF
    study = "(0020,000d) UI [" + dcmread(paths["sr"]).StudyInstanceUID + "]"
    assert [line.startswith(study) for line in dumps.splitlines()].count(True) == 3  # top level
    assert "UNVERIFIED" in dumps


def test_sender_fails_cleanly_when_nobody_listens(tmp_path):
    paths = objects_for(tmp_path, "dicom")
    with pytest.raises(DeliveryError, match="no association"):
        send_files(DicomDestination("PACS", "127.0.0.1", free_port()), list(paths.values()),
                   calling_ae="MELTRIAGE", timeout_s=2)
