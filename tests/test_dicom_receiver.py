"""The DICOM receiver against real peers: dcmtk's echoscu and storescu, and pynetdicom as an
SCU where a status must be read exactly. Each test gets its own receiver on a free port."""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select

from schemas import JobState, SourceDoor
from tests.conftest import make_settings
from worker.db.engine import make_engine, make_session_factory
from worker.db.integration import DicomInstance
from worker.db.migrate import upgrade
from worker.db.models import Image, Job, Submission
from worker.doors.dicom_receiver import start_dicom_receiver
from worker.imaging.decode import decode_bytes
from worker.intake.admission import Intake

DERMOSCOPY = "1.2.840.10008.5.1.4.1.1.77.1.7"
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
AE_TITLE = "MELTRIAGE"

# dcmtk is part of the test setup (scripts/setup.sh): missing, the tests fail rather than skip.
assert shutil.which("storescu"), "dcmtk (storescu, echoscu) is installed by scripts/setup.sh"


class Door:
    """A receiver with its database; ``sent`` holds the job ids handed to the broker."""

    def __init__(self, tmp_path: Path, **overrides) -> None:
        values = dict(dicom_host="127.0.0.1", dicom_port=0)
        values.update(overrides)
        self.settings = make_settings(tmp_path / "home", **values)
        self.settings.ensure_folders()
        upgrade(self.settings.database_url)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = make_session_factory(self.engine)
        self.sent: list[str] = []
        self.intake = Intake(self.settings, self.sessions, self.sent.append)
        self.receiver = start_dicom_receiver(self.settings, self.intake)
        self.port = self.receiver.port

    def close(self) -> None:
        self.receiver.shutdown()
        self.engine.dispose()

    def jobs(self) -> list[Job]:
        with self.sessions() as s:
            return list(s.execute(select(Job)).scalars())


@pytest.fixture
def door(tmp_path):
    d = Door(tmp_path)
    yield d
    d.close()


def _rgb(size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = np.linspace(40, 220, size, dtype=np.uint8)[None, :]
    img[..., 1] = 90
    img[..., 2] = rng.integers(0, 255, (size, size), dtype=np.uint8)
    return img


def dermoscopy_file(path: Path, sop_uid: str | None = None, comment: str = "") -> Path:
    """A Dermoscopic Photography instance (77.1.7), explicit VR little endian, RGB."""
    pixels = _rgb()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DERMOSCOPY
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DERMOSCOPY
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DMS"
    ds.PatientID = "TEST-0001"
    ds.PatientName = "Test^Patient"
    ds.ImageComments = comment
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_vl_photo_file(tmp_path: Path) -> Path:
    """A JPEG-baseline VL Photographic instance made by dcmtk's img2dcm from a real JPEG."""
    jpeg = tmp_path / "lesion.jpg"
    PILImage.fromarray(_rgb(96)).save(jpeg, "JPEG", quality=90)
    out = tmp_path / "lesion.dcm"
    subprocess.run(["img2dcm", "--vl-photo", str(jpeg), str(out)], check=True,
                   capture_output=True, timeout=60)
    assert dcmread(out).file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    return out


def storescu(port: int, path: Path, calling: str = "STORESCU", *extra: str) -> subprocess.CompletedProcess:
    """dcmtk's storescu proposing only the file's own SOP class (-R: 77.1.7 is not in its defaults)."""
    return subprocess.run(["storescu", "-R", "-aet", calling, "-aec", AE_TITLE, *extra, "127.0.0.1",
                           str(port), str(path)], capture_output=True, text=True, timeout=60)


def scu_store(port: int, path: Path, contexts: list[tuple[str, str]], raw: bool = False) -> int:
    """Send one file with pynetdicom and return the C-STORE status (``raw``: not decoded)."""
    ae = AE(ae_title="PYSCU")
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = raw
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
    assert "Status" in status, "no C-STORE response (aborted?)"
    return status.Status


def test_echoscu_verifies_the_receiver(door):
    result = subprocess.run(["echoscu", "-aet", "ECHOSCU", "-aec", AE_TITLE, "127.0.0.1",
                             str(door.port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_jpeg_baseline_from_img2dcm_is_archived_and_queued(door, tmp_path):
    path = jpeg_vl_photo_file(tmp_path)
    result = storescu(door.port, path, "STORESCU", "-xy")  # -xy: propose JPEG baseline
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = door.jobs()  # committed before the status was sent
    assert job.state == JobState.QUEUED.value
    assert door.sent == [job.id]
    with door.sessions() as s:
        image = s.get(Image, job.image_id)
        mapped = s.get(DicomInstance, str(dcmread(path).SOPInstanceUID))
        assert image.source_door == SourceDoor.DICOM.value
        archived = Path(image.archive_path).read_bytes()
    assert mapped.job_id == job.id and mapped.calling_ae_title == "STORESCU"
    assert mapped.sop_class_uid == VL_PHOTO
    # The archive holds a Part 10 file our decoder reads, not just a data set.
    decoded = decode_bytes(archived)
    assert decoded.rgb.shape == (96, 96, 3)


@pytest.mark.parametrize(("tool", "propose", "syntax"), [
    (["dcmcrle"], "-xr", RLELossless),
    (["dcmcjpls", "--encode-lossless"], "-xt", JPEGLSLossless),
    (None, "-xv", JPEG2000Lossless),  # dcmtk has no JPEG 2000 codec: pydicom + openjpeg
])
def test_compressed_transfer_syntaxes_are_accepted(door, tmp_path, tool, propose, syntax):
    source = dermoscopy_file(tmp_path / "plain.dcm")
    path = tmp_path / "compressed.dcm"
    if tool:
        subprocess.run([*tool, str(source), str(path)], check=True, capture_output=True, timeout=60)
    else:
        ds = dcmread(source)
        ds.compress(syntax, encoding_plugin="pylibjpeg")
        ds.save_as(path, enforce_file_format=True)
    assert dcmread(path).file_meta.TransferSyntaxUID == syntax
    result = storescu(door.port, path, "STORESCU", propose)
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = door.jobs()
    with door.sessions() as s:
        archived = Path(s.get(Image, job.image_id).archive_path).read_bytes()
    assert dcmread(BytesIO(archived)).file_meta.TransferSyntaxUID == syntax
    assert (decode_bytes(archived).rgb == _rgb()).all()  # all lossless


def test_dermoscopy_77_1_7_is_accepted_and_resend_is_the_same_job(door, tmp_path):
    uid = generate_uid()
    first = dermoscopy_file(tmp_path / "a.dcm", uid)
    assert storescu(door.port, first).returncode == 0
    assert storescu(door.port, first).returncode == 0  # same bytes
    changed = dermoscopy_file(tmp_path / "b.dcm", uid, comment="re-sent after coercion")
    assert first.read_bytes() != changed.read_bytes()
    assert scu_store(door.port, changed, [(DERMOSCOPY, ExplicitVRLittleEndian)]) == 0x0000
    (job,) = door.jobs()
    assert door.sent == [job.id]
    with door.sessions() as s:
        subs = list(s.execute(select(Submission).where(Submission.job_id == job.id)).scalars())
    assert [sub.duplicate for sub in sorted(subs, key=lambda x: x.received_at)] == [False, True, True]
    assert {sub.door for sub in subs} == {"dicom"}


def test_resend_after_processing_is_found_by_images_sop_uid(door, tmp_path):
    """Once the worker has read the file, the images row alone identifies the instance."""
    uid = generate_uid()
    assert storescu(door.port, dermoscopy_file(tmp_path / "a.dcm", uid)).returncode == 0
    with door.sessions.begin() as s:
        s.get(Image, door.jobs()[0].image_id).sop_instance_uid = uid
        s.query(DicomInstance).delete()
    changed = dermoscopy_file(tmp_path / "b.dcm", uid, comment="again")
    assert storescu(door.port, changed).returncode == 0
    assert len(door.jobs()) == 1


def test_unknown_calling_ae_is_rejected_at_association(tmp_path):
    door = Door(tmp_path, dicom_allowed_calling_aets="CAMERA1, PACS")
    try:
        path = dermoscopy_file(tmp_path / "a.dcm")
        refused = storescu(door.port, path, "INTRUDER")
        assert refused.returncode != 0
        assert "reject" in (refused.stdout + refused.stderr).lower()
        assert door.jobs() == []
        assert storescu(door.port, path, "CAMERA1").returncode == 0
        assert len(door.jobs()) == 1
    finally:
        door.close()


def test_wrong_sop_class_is_not_accepted(door, tmp_path):
    """A CT slice finds no presentation context; nothing is admitted."""
    path = dermoscopy_file(tmp_path / "ct.dcm")
    ds = dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.Modality = "CT"
    ds.save_as(path, enforce_file_format=True)
    result = storescu(door.port, path)
    assert result.returncode != 0
    assert "presentation context" in (result.stdout + result.stderr).lower()
    assert door.jobs() == []


def test_data_set_that_does_not_match_its_context_is_0xA900(door, tmp_path):
    """File meta and context say dermoscopy; the data set itself says CT."""
    path = dermoscopy_file(tmp_path / "mismatch.dcm")
    ds = dcmread(path)
    ds.SOPClassUID = CT_IMAGE
    ds.save_as(path, enforce_file_format=False)  # keeps the file meta as it is
    assert dcmread(path).file_meta.MediaStorageSOPClassUID == DERMOSCOPY
    assert scu_store(door.port, path, [(DERMOSCOPY, ExplicitVRLittleEndian)], raw=True) == 0xA900
    assert door.jobs() == []


def test_unparsable_data_set_is_0xC000(door, tmp_path):
    path = dermoscopy_file(tmp_path / "bad.dcm")
    _meta, offset = split_dataset(path)
    # SOP Class UID whose value length runs far past the end of the data.
    path.write_bytes(path.read_bytes()[:offset] + b"\x08\x00\x16\x00UI\xff\x7f" + b"1.2" * 4)
    assert scu_store(door.port, path, [(DERMOSCOPY, ExplicitVRLittleEndian)], raw=True) == 0xC000
    assert door.jobs() == []


def test_disk_floor_answers_0xA700(tmp_path):
    door = Door(tmp_path, min_free_disk_bytes=1 << 60)
    try:
        path = dermoscopy_file(tmp_path / "a.dcm")
        assert scu_store(door.port, path, [(DERMOSCOPY, ExplicitVRLittleEndian)]) == 0xA700
        assert door.jobs() == []
    finally:
        door.close()


def test_backlog_over_limit_answers_0xA700(tmp_path):
    door = Door(tmp_path, max_backlog=1)
    try:
        first, second = dermoscopy_file(tmp_path / "a.dcm"), dermoscopy_file(tmp_path / "b.dcm")
        assert scu_store(door.port, first, [(DERMOSCOPY, ExplicitVRLittleEndian)]) == 0x0000
        assert scu_store(door.port, second, [(DERMOSCOPY, ExplicitVRLittleEndian)]) == 0xA700
        assert len(door.jobs()) == 1
    finally:
        door.close()


def test_oversized_instance_is_recorded_as_rejected(tmp_path):
    door = Door(tmp_path, max_file_bytes=2000)
    try:
        path = dermoscopy_file(tmp_path / "a.dcm")
        assert scu_store(door.port, path, [(DERMOSCOPY, ExplicitVRLittleEndian)]) == 0xA700
        (job,) = door.jobs()
        assert job.state == JobState.REJECTED.value and job.error_code == "too_large_file"
        assert door.sent == []
    finally:
        door.close()


@pytest.mark.integration
def test_receiver_on_postgresql(tmp_path, postgres_url):
    door = Door(tmp_path, database_url=postgres_url)
    try:
        uid = generate_uid()
        assert storescu(door.port, dermoscopy_file(tmp_path / "a.dcm", uid)).returncode == 0
        assert storescu(door.port, dermoscopy_file(tmp_path / "b.dcm", uid, "again")).returncode == 0
        (job,) = door.jobs()
        assert door.sent == [job.id]
    finally:
        door.close()
