"""Intake folder (issue 19): metadata dropped with an image (a JSON sidecar in either order,
a manifest.csv for a batch), what becomes of sidecars that cannot be used, the fast path for
whole files and the arrival time. SQLite, no broker, no model."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from schemas import JobState
from tests.conftest import make_settings
from tests.imagegen import dicom_bytes, garbage_bytes, jpeg_bytes, lesion_rgb, png_bytes
from worker.db.engine import make_engine, make_session_factory
from worker.db.models import Image, Job, Submission
from worker.intake.admission import Intake
from worker.intake.sidecars import MetadataRefused, parse_manifest, parse_sidecar
from worker.intake.watcher import IntakeWatcher

SIDECAR = {"patient_id": "P-19", "accession_number": "ACC-19", "laterality": "l",
           "body_site": "left forearm"}


@pytest.fixture
def world(tmp_path):
    """(settings, sessions, sent job ids): a migrated SQLite home with short timings."""
    from worker.db.migrate import upgrade

    settings = make_settings(tmp_path / "home", stable_seconds=30.0, settle_seconds=0.2,
                             sidecar_wait_seconds=1.0, sidecar_orphan_seconds=1.5,
                             incomplete_grace_seconds=30.0)
    settings.ensure_folders()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    yield settings, make_session_factory(engine), []
    engine.dispose()


def _watcher(world) -> IntakeWatcher:
    settings, sessions, sent = world
    return IntakeWatcher(Intake(settings, sessions, sent.append), settings.intake_dir, 2)


def _scan_until(watcher: IntakeWatcher, done, limit: float = 8.0) -> tuple[list, float]:
    """Scan every 0.1 s until ``done(admissions)``; the admissions and the seconds it took."""
    admissions, start = [], time.monotonic()
    while not done(admissions):
        assert time.monotonic() - start < limit, admissions
        admissions += watcher.scan_once()
        time.sleep(0.1)
    return admissions, time.monotonic() - start


def _images(sessions) -> list[Image]:
    with sessions() as s:
        return list(s.execute(select(Image).order_by(Image.received_at)).scalars())


def _rejections(sessions, code: str) -> list[tuple[Job, Submission]]:
    with sessions() as s:
        rows = s.execute(select(Job, Submission).join(Submission, Submission.job_id == Job.id)
                         .where(Job.error_code == code)).all()
        return [(j, sub) for j, sub in rows]


@pytest.mark.parametrize("sidecar_first", [True, False])
def test_a_sidecar_carries_the_patient_in_either_order(world, sidecar_first):
    settings, sessions, _ = world
    watcher, folder = _watcher(world), settings.intake_dir
    image, sidecar = folder / "lesion.jpg", folder / "lesion.json"
    first, second = ((sidecar, json.dumps(SIDECAR).encode()), (image, jpeg_bytes(lesion_rgb())))
    if not sidecar_first:
        first, second = second, first
    first[0].write_bytes(first[1])
    watcher.scan_once()
    time.sleep(0.3)
    second[0].write_bytes(second[1])
    _scan_until(watcher, lambda a: len(a) == 1)
    [row] = _images(sessions)
    assert row.caller_metadata == {"patient_id": "P-19", "accession_number": "ACC-19",
                                   "laterality": "L", "body_site": "left forearm"}
    assert not image.exists() and not sidecar.exists()  # the sidecar is used up


def test_an_image_alone_waits_briefly_for_its_sidecar_then_goes_on(world):
    settings, sessions, _ = world
    watcher = _watcher(world)
    (settings.intake_dir / "alone.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=2)))
    admissions, took = _scan_until(watcher, lambda a: len(a) == 1)
    assert 1.0 <= took < 3.0  # sidecar_wait_seconds, far below stable_seconds (30)
    assert _images(sessions)[0].caller_metadata == {}


@pytest.mark.parametrize("content, words", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"patient_id": "P1", "colour": "red"}).encode(), "'colour' is not a metadata key"),
    (json.dumps({"laterality": "sideways"}).encode(), "laterality"),
    (json.dumps(["P1"]).encode(), "must be a JSON object"),
])
def test_an_invalid_sidecar_is_a_recorded_rejection_and_its_image_goes_on(world, content, words):
    settings, sessions, _ = world
    watcher, folder = _watcher(world), settings.intake_dir
    (folder / "bad.json").write_bytes(content)
    (folder / "bad.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=3)))
    admissions, _ = _scan_until(watcher, lambda a: len(a) == 1)
    assert admissions[0].state == JobState.RECEIVED and _images(sessions)[0].caller_metadata == {}
    [(job, sub)] = _rejections(sessions, "invalid_sidecar")
    assert words in job.error and "taken without this metadata" in job.error
    assert sub.original_name == "bad.json" and not (folder / "bad.json").exists()
    kept = settings.rejected_dir / f"{job.id}__bad.json"
    assert kept.read_bytes() == content
    assert json.loads(kept.with_name(kept.name + ".json").read_text())["code"] == "invalid_sidecar"


def test_a_sidecar_without_an_image_ends_as_a_recorded_rejection(world):
    settings, sessions, _ = world
    watcher = _watcher(world)
    (settings.intake_dir / "nobody.json").write_text(json.dumps(SIDECAR))
    start = time.monotonic()
    while not _rejections(sessions, "orphan_sidecar"):
        assert time.monotonic() - start < 8
        watcher.scan_once()
        time.sleep(0.1)
    assert time.monotonic() - start >= 1.5  # sidecar_orphan_seconds
    [(job, sub)] = _rejections(sessions, "orphan_sidecar")
    assert "no image with the same name" in job.error and sub.original_name == "nobody.json"
    assert not (settings.intake_dir / "nobody.json").exists()


def test_a_manifest_gives_each_file_of_its_folder_its_row(world):
    settings, sessions, _ = world
    watcher = _watcher(world)
    batch = settings.intake_dir / "camera-export"
    batch.mkdir()
    (batch / "manifest.csv").write_text(
        "file_name,patient_id,laterality,body_site\n"
        "IMG_0001.JPG,P-1,R,back\n"
        "IMG_0002.JPG,P-2,,scalp\n")
    (batch / "IMG_0001.JPG").write_bytes(jpeg_bytes(lesion_rgb(seed=11)))
    (batch / "IMG_0002.JPG").write_bytes(jpeg_bytes(lesion_rgb(seed=12)))
    (batch / "IMG_0002.json").write_text(json.dumps({"accession_number": "A-2"}))
    _scan_until(watcher, lambda a: len(a) == 2)
    with sessions() as s:
        got = {sub.original_name: sub.caller_metadata for sub in s.execute(select(Submission)).scalars()}
    assert got == {"IMG_0001.JPG": {"patient_id": "P-1", "laterality": "R", "body_site": "back"},
                   "IMG_0002.JPG": {"patient_id": "P-2", "body_site": "scalp",
                                    "accession_number": "A-2"}}
    start = time.monotonic()
    while (batch / "manifest.csv").exists():  # every row used: removed once its time is up
        assert time.monotonic() - start < 8
        watcher.scan_once()
        time.sleep(0.1)
    assert _rejections(sessions, "manifest_unmatched") == []


def test_a_manifest_row_whose_file_never_comes_is_recorded(world):
    settings, sessions, _ = world
    watcher = _watcher(world)
    batch = settings.intake_dir / "export2"
    batch.mkdir()
    (batch / "manifest.csv").write_text("file_name,patient_id\nA.jpg,P-A\nB.jpg,P-B\n")
    (batch / "A.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=13)))
    start = time.monotonic()
    while not _rejections(sessions, "manifest_unmatched"):
        assert time.monotonic() - start < 8
        watcher.scan_once()
        time.sleep(0.1)
    [(job, _sub)] = _rejections(sessions, "manifest_unmatched")
    assert job.error.startswith("1 of its 2 rows")
    assert _images(sessions)[0].caller_metadata == {"patient_id": "P-A"}


def test_manifest_parsing_refuses_with_a_reason_and_no_values():
    with pytest.raises(MetadataRefused, match="no file_name column"):
        parse_manifest(b"name,patient_id\na.jpg,SECRET\n")
    with pytest.raises(MetadataRefused, match="line 3") as refused:
        parse_manifest(b"file_name,laterality\na.jpg,L\nb.jpg,SECRET-SIDE\n")
    assert "SECRET" not in refused.value.reason
    assert parse_sidecar(b'{"metadata": {"patient_id": "P1"}}').patient_id == "P1"


@pytest.mark.parametrize("kind", ["jpeg", "png", "dicom"])
def test_a_whole_file_is_taken_after_the_short_settle(world, kind):
    """stable_seconds is 30 here: a whole JPEG, PNG or DICOM goes after the settle (0.2 s)
    and the sidecar wait (1 s), with its sidecar at once."""
    settings, sessions, _ = world
    watcher = _watcher(world)
    rgb = lesion_rgb(seed=21)
    data = {"jpeg": jpeg_bytes(rgb), "png": png_bytes(rgb), "dicom": dicom_bytes(rgb)}[kind]
    (settings.intake_dir / f"whole.{kind}.json").write_text(json.dumps({"patient_id": "P"}))
    (settings.intake_dir / f"whole.{kind}").write_bytes(data)
    _admissions, took = _scan_until(watcher, lambda a: len(a) == 1)
    assert took < 1.5


def test_a_file_whose_content_is_not_understood_waits_the_stable_time(world):
    settings, sessions, _ = world
    watcher = IntakeWatcher(Intake(settings, sessions, lambda j: None), settings.intake_dir, 2,
                            stable_seconds=2.0)
    (settings.intake_dir / "odd.jpg").write_bytes(garbage_bytes())
    admissions, took = _scan_until(watcher, lambda a: len(a) == 1)
    assert took >= 2.0 and admissions[0].state == JobState.REJECTED


def test_received_is_when_the_file_arrived_not_when_it_was_taken(world):
    settings, sessions, _ = world
    watcher = _watcher(world)
    arrived = datetime.now(timezone.utc)
    (settings.intake_dir / "when.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=22)))
    _admissions, took = _scan_until(watcher, lambda a: len(a) == 1)
    received = _images(sessions)[0].received_at.replace(tzinfo=timezone.utc)
    assert took >= 1.0 and abs((received - arrived).total_seconds()) < 0.5


def test_a_resent_file_says_which_job_it_joined(world, caplog):
    import logging

    settings, sessions, _ = world
    watcher = _watcher(world)
    data = jpeg_bytes(lesion_rgb(seed=23))
    (settings.intake_dir / "first.jpg").write_bytes(data)
    [first], _ = _scan_until(watcher, lambda a: len(a) == 1)
    caplog.set_level(logging.INFO, logger="worker.intake.admission")
    (settings.intake_dir / "again.jpg").write_bytes(data)
    [again], _ = _scan_until(watcher, lambda a: len(a) == 1)
    assert again.duplicate and again.job_id == first.job_id
    assert f"joined existing job {first.job_id}" in caplog.text
    assert "again.jpg" not in caplog.text  # never a file name in the log
