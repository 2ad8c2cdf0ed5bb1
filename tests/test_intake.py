"""Intake: admission (archive, dedup, rejection) and the polling watcher. No services."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from schemas import ImageMetadata, JobState, SourceDoor
from tests.imagegen import garbage_bytes, jpeg_bytes, lesion_rgb
from worker.db.models import Image, Job, Submission
from worker.intake.admission import Intake
from worker.intake.names import safe_filename
from worker.intake.watcher import META_SUFFIX, NAME_SUFFIX, PROCESSING_DIR, IntakeWatcher


class RecordingBroker:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.fail = fail

    def __call__(self, job_id: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append(job_id)


@pytest.fixture
def broker():
    return RecordingBroker()


@pytest.fixture
def intake(migrated_settings, sessions, broker):
    return Intake(migrated_settings, sessions, broker)


def _job(sessions, job_id) -> Job:
    with sessions() as s:
        return s.get(Job, job_id)


def test_admission_archives_records_and_enqueues(intake, sessions, broker, migrated_settings):
    data = jpeg_bytes(lesion_rgb())
    meta = ImageMetadata(patient_id="P1", laterality="r")
    adm = intake.admit_bytes(data, SourceDoor.API, meta, "lesion.jpg")
    assert adm.state == JobState.RECEIVED and not adm.duplicate
    assert broker.sent == [adm.job_id]
    job = _job(sessions, adm.job_id)
    assert job.state == JobState.QUEUED.value and job.queued_at is not None
    assert (job.attempts, job.sent_count) == (0, 1)  # column default, and this first send
    assert job.last_sent_at == job.queued_at and job.created_at and job.updated_at
    with sessions() as s:
        image = s.execute(select(Image)).scalar_one()
        assert Path(image.archive_path).read_bytes() == data
        assert image.caller_metadata == {"patient_id": "P1", "laterality": "R"}
        assert (image.size_bytes, image.source_door, image.received_at is not None) == (len(data), "api", True)
        sub = s.execute(select(Submission)).scalar_one()
        assert (sub.job_id, sub.door, sub.original_name, sub.duplicate) == (adm.job_id, "api", "lesion.jpg", False)
        assert sub.caller_metadata == image.caller_metadata


def test_content_archived_already_is_made_durable_not_written_again(tmp_path, monkeypatch):
    """Another door may have renamed the same content in a moment ago, before making the
    rename durable: a second arrival is acknowledged only after its folder is synced."""
    from worker.intake import archive

    data = jpeg_bytes(lesion_rgb(seed=5))
    first = archive.store(tmp_path, data)
    synced: list[Path] = []
    monkeypatch.setattr(archive, "fsync_dir", synced.append)
    monkeypatch.setattr(archive, "write_atomic", lambda *a: pytest.fail("written again"))
    assert archive.store(tmp_path, data) == first
    assert synced == [first.parent] and first.read_bytes() == data


def test_same_content_twice_is_one_job_and_a_recorded_duplicate(intake, sessions, broker):
    data = jpeg_bytes(lesion_rgb(seed=3))
    first = intake.admit_bytes(data, SourceDoor.INTAKE, original_name="a.jpg")
    second = intake.admit_bytes(data, SourceDoor.API, original_name="b.jpg")
    assert second.job_id == first.job_id and second.duplicate
    assert broker.sent == [first.job_id]  # not enqueued twice
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        subs = s.execute(select(Submission).order_by(Submission.received_at)).scalars().all()
        assert [(x.original_name, x.duplicate) for x in subs] == [("a.jpg", False), ("b.jpg", True)]


@pytest.mark.parametrize("data, code", [(b"", "empty_file"), (garbage_bytes(), "not_an_image")])
def test_bad_input_is_rejected_at_the_door_with_a_sidecar(intake, sessions, broker,
                                                          migrated_settings, data, code):
    adm = intake.admit_bytes(data, SourceDoor.INTAKE, original_name="bad file.jpg")
    assert adm.state == JobState.REJECTED and broker.sent == []
    job = _job(sessions, adm.job_id)
    assert (job.state, job.error_code) == ("rejected", code)
    sidecar = migrated_settings.rejected_dir / f"{adm.job_id}__bad_file.jpg.json"
    info = json.loads(sidecar.read_text())
    assert info["code"] == code and info["reason"] and info["original_name"] == "bad file.jpg"
    assert (migrated_settings.rejected_dir / f"{adm.job_id}__bad_file.jpg").read_bytes() == data


def test_broker_down_leaves_the_job_received_for_the_reconciler(migrated_settings, sessions):
    intake = Intake(migrated_settings, sessions, RecordingBroker(fail=True))
    adm = intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=4)), SourceDoor.API)
    assert _job(sessions, adm.job_id).state == JobState.RECEIVED.value


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "passwd"), ("my lesion (1).jpg", "my_lesion_1_.jpg"),
    ("Zoë Müller.dcm", "Zoe_Muller.dcm"), ("..", "file"), ("a..b.jpg", "a.b.jpg"), ("", "file"),
])
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected


def _watcher(intake, folder: Path, stable_scans: int = 1, **timing) -> IntakeWatcher:
    """A watcher that goes by scans only (no time window, no hold), unless told otherwise."""
    timing = {"stable_seconds": 0, "incomplete_grace_seconds": 0, **timing}
    return IntakeWatcher(intake, folder, stable_scans, **timing)


def _drop(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_watcher_takes_a_file_only_when_stable(intake, migrated_settings, broker):
    watcher = _watcher(intake, migrated_settings.intake_dir, stable_scans=2)
    path = _drop(migrated_settings.intake_dir, "growing.jpg", b"\xff\xd8\xff partial")
    assert watcher.scan_once() == []  # first sight
    with open(path, "ab") as f:
        f.write(b" more bytes")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10_000_000))
    assert watcher.scan_once() == []  # changed: starts over
    assert path.exists()
    path.write_bytes(jpeg_bytes(lesion_rgb()))
    watcher.scan_once()
    admissions = watcher.scan_once()
    assert len(admissions) == 1 and not path.exists()
    assert broker.sent == [admissions[0].job_id]


def test_watcher_ignores_part_files_until_renamed(intake, migrated_settings):
    watcher = _watcher(intake, migrated_settings.intake_dir)
    part = _drop(migrated_settings.intake_dir, "lesion.jpg.part", jpeg_bytes(lesion_rgb()))
    assert watcher.scan_once() == [] and part.exists()
    part.rename(part.with_name("lesion.jpg"))
    assert len(watcher.scan_once()) == 1


def test_watcher_handles_odd_names_and_subfolders(intake, migrated_settings, sessions):
    folder = migrated_settings.intake_dir
    (folder / "clinic A").mkdir()
    names = ["with space.jpg", "ünïcödé.jpg", "..dots..jpg", "clinic A/nested.jpg"]
    for i, name in enumerate(names):
        _drop(folder, name, jpeg_bytes(lesion_rgb(seed=10 + i)))
    watcher = _watcher(intake, folder)
    admissions = watcher.scan_once()
    assert len(admissions) == len(names)
    with sessions() as s:
        stored = set(s.execute(select(Submission.original_name)).scalars())
    assert stored == {Path(n).name for n in names}
    assert not any(p.is_file() for p in folder.rglob("*"))



def test_unreadable_file_is_recorded_and_moved(intake, migrated_settings, sessions, monkeypatch):
    from worker.intake import watcher as watcher_module

    watcher = _watcher(intake, migrated_settings.intake_dir)
    _drop(migrated_settings.intake_dir, "locked.jpg", b"\xff\xd8\xff")
    real_read = watcher_module.read_regular_file

    def deny(path, limit):
        if watcher.original_name(path) == "locked.jpg":
            raise PermissionError(13, "Permission denied")
        return real_read(path, limit)

    monkeypatch.setattr(watcher_module, "read_regular_file", deny)
    [adm] = watcher.scan_once()
    assert adm.state == JobState.REJECTED
    job = _job(sessions, adm.job_id)
    assert job.error_code == "unreadable" and "Permission denied" in job.error
    assert (migrated_settings.rejected_dir / f"{adm.job_id}__locked.jpg").exists()


def test_a_failed_admission_keeps_the_file_for_the_next_scan(migrated_settings, sessions):
    from sqlalchemy.exc import OperationalError

    class Broken(Intake):
        calls = 0

        def admit_bytes(self, *a, **k):
            Broken.calls += 1
            if Broken.calls == 1:
                raise OperationalError("INSERT ...", {}, ConnectionError("database down"))
            return super().admit_bytes(*a, **k)

    watcher = _watcher(Broken(migrated_settings, sessions, RecordingBroker()),
                       migrated_settings.intake_dir)
    _drop(migrated_settings.intake_dir, "lesion.jpg", jpeg_bytes(lesion_rgb()))
    assert watcher.scan_once() == []
    processing = migrated_settings.intake_dir / PROCESSING_DIR
    assert len([p for p in processing.iterdir() if not p.name.endswith((NAME_SUFFIX, META_SUFFIX))]) == 1
    [adm] = watcher.scan_once()
    assert adm.state == JobState.RECEIVED
    assert list(processing.iterdir()) == []
    with sessions() as s:
        assert s.execute(select(Submission.original_name)).scalar_one() == "lesion.jpg"


# --------------------------------------------------------------------------- door checks


@pytest.mark.parametrize("field, value, rule", [
    ("accession_number", "A" * 17, "16 characters (DICOM SH)"),
    ("patient_id", "P" * 65, "64 characters (DICOM LO)"),
    ("body_site", "B" * 65, "64 characters (DICOM LO)"),
    ("patient_name", "N" * 65, "component group longer than 64"),
    ("patient_name", "A=B=C=D", "more than 3 component groups"),
    ("patient_name", "a^b^c^d^e^f", "more than 5 components"),
    ("study_instance_uid", "1.2.03", "not a valid DICOM UID"),
    ("sop_instance_uid", "1." + "2" * 64, "64 characters (DICOM UI)"),
    ("patient_id", "P1\\P2", "single value"),
    ("patient_id", "P1\nP2", "control characters"),
])
def test_caller_metadata_breaking_its_dicom_vr_is_refused_without_echoing_it(field, value, rule):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        ImageMetadata(**{field: value})
    assert rule in str(caught.value) and field in str(caught.value)
    assert value not in str(caught.value)


def test_metadata_within_its_vr_is_kept_with_padding_removed():
    meta = ImageMetadata(patient_id=" P-1 ", accession_number="A" * 16, patient_name="=".join(
        ["N" * 64] * 3), study_instance_uid="1.2.840.10008.0.1 ", body_site="  ")
    assert (meta.patient_id, meta.accession_number, meta.body_site) == ("P-1", "A" * 16, None)
    assert meta.study_instance_uid == "1.2.840.10008.0.1"


def test_the_http_door_says_which_field_breaks_which_rule():
    from worker.doors.http_api import parse_metadata

    why = parse_metadata('{"accession_number": "ACC-1234567890123"}')
    assert why == "accession_number: Value error, is longer than 16 characters (DICOM SH)"


@pytest.mark.parametrize("name, expected", [
    ("lesion.jpg", "lesion.jpg"),
    ("x" * 300 + ".jpeg", "x" * 250 + ".jpeg"),
    ("x" * 300, "x" * 255),
    ("line\nbreak\x1b[31m.jpg", "line\ufffdbreak\ufffd[31m.jpg"),
    (b"caf\xe9.jpg", "caf\ufffd.jpg"),
    ("caf\udce9.jpg", "caf\ufffd.jpg"),  # os.listdir's surrogate escape of byte 0xE9
    ("bad \ud800 surrogate.jpg", "bad ? surrogate.jpg"),
    ("", None),
    (None, None),
])
def test_recorded_name_is_valid_text_that_fits(name, expected):
    from worker.intake.names import recorded_name

    assert recorded_name(name) == expected


def test_an_api_name_longer_than_the_limit_is_stored_shortened(intake, sessions):
    adm = intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=21)), SourceDoor.API,
                             original_name="n" * 1000 + ".dcm")
    with sessions() as s:
        stored = s.execute(select(Submission.original_name)
                           .where(Submission.job_id == adm.job_id)).scalar_one()
    assert len(stored) == 255 and stored.endswith(".dcm")


@pytest.mark.parametrize("name, hidden", [
    (".DS_Store", True), ("._lesion.jpg", True), (".lesion.jpg.Ab12Cd", True), ("...", True),
    ("..dots..jpg", False), ("lesion.jpg", False), ("..%2Fetc.jpg", False),
])
def test_hidden_names(name, hidden):
    from worker.intake.watcher import is_hidden

    assert is_hidden(name) is hidden
