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
from worker.intake.watcher import PROCESSING_DIR, IntakeWatcher


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
    with sessions() as s:
        image = s.execute(select(Image)).scalar_one()
        assert Path(image.archive_path).read_bytes() == data
        assert image.caller_metadata == {"patient_id": "P1", "laterality": "R"}


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


def _drop(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_watcher_takes_a_file_only_when_stable(intake, migrated_settings, broker):
    watcher = IntakeWatcher(intake, migrated_settings.intake_dir, stable_scans=2)
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
    watcher = IntakeWatcher(intake, migrated_settings.intake_dir, stable_scans=1)
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
    watcher = IntakeWatcher(intake, folder, stable_scans=1)
    admissions = watcher.scan_once()
    assert len(admissions) == len(names)
    with sessions() as s:
        stored = set(s.execute(select(Submission.original_name)).scalars())
    assert stored == {Path(n).name for n in names}
    assert not any(p.is_file() for p in folder.rglob("*"))



def test_unreadable_file_is_recorded_and_moved(intake, migrated_settings, sessions, monkeypatch):
    watcher = IntakeWatcher(intake, migrated_settings.intake_dir, stable_scans=1)
    _drop(migrated_settings.intake_dir, "locked.jpg", b"\xff\xd8\xff")
    real_read = Path.read_bytes

    def deny(self):
        if self.name.endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    [adm] = watcher.scan_once()
    assert adm.state == JobState.REJECTED
    job = _job(sessions, adm.job_id)
    assert job.error_code == "unreadable" and "Permission denied" in job.error
    assert (migrated_settings.rejected_dir / f"{adm.job_id}__locked.jpg").exists()


def test_a_failed_admission_keeps_the_file_for_the_next_scan(migrated_settings, sessions):
    class Broken(Intake):
        calls = 0

        def admit_bytes(self, *a, **k):
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError("database down")
            return super().admit_bytes(*a, **k)

    watcher = IntakeWatcher(Broken(migrated_settings, sessions, RecordingBroker()),
                            migrated_settings.intake_dir, stable_scans=1)
    _drop(migrated_settings.intake_dir, "lesion.jpg", jpeg_bytes(lesion_rgb()))
    assert watcher.scan_once() == []
    assert len(list((migrated_settings.intake_dir / PROCESSING_DIR).iterdir())) == 1
    [adm] = watcher.scan_once()
    assert adm.state == JobState.RECEIVED
    assert list((migrated_settings.intake_dir / PROCESSING_DIR).iterdir()) == []
