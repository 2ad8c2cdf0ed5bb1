"""The folder door under bad and odd input (issue 9): names, entry types, sizes, timing,
unexpected errors, and patient data kept out of logs, error columns and sidecars.

The entries come from the fault corpus (``tests/faults/corpus.py``). Cases marked
``both`` run on SQLite and on PostgreSQL (which enforces column lengths SQLite ignores).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select

from schemas import ImageMetadata, JobState, SourceDoor
from tests.conftest import make_settings
from tests.faults.corpus import (
    KINDS,
    LEFT_ALONE,
    REPORT,
    CorpusContext,
    entry_type,
    kind,
    observed_outcome,
    place,
)
from tests.imagegen import jpeg_bytes, lesion_rgb
from worker.classify.export import ensure_export
from worker.jobs import pipeline
from worker.db.models import Image, Job, Report, Submission
from worker.intake import watcher as watcher_module
from worker.intake.rejections import describe_exception
from worker.intake.watcher import NAME_SUFFIX, PROCESSING_DIR, IntakeWatcher
from worker.jobs.runtime import build_runtime
from worker.store.versions import ModelStore

PATIENT_ID, PATIENT_NAME = "SECRET-PID-4711", "ROE^RICHARD"


@pytest.fixture(params=["sqlite"])
def backend(request) -> str:
    return request.param


def _both(test):
    """Run ``test`` on SQLite and on PostgreSQL."""
    return pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)(test)


@pytest.fixture
def rt(request, backend, tmp_path, tiny_model_dir):
    """A runtime (database, intake, model) on the chosen backend; no broker."""
    from worker.db.migrate import upgrade

    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else ""
    settings = make_settings(tmp_path / "home", database_url=url, stable_seconds=0,
                             incomplete_grace_seconds=0)
    settings.ensure_folders()
    upgrade(settings.database_url)
    store = ModelStore(settings.model_store_dir, export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    runtime = build_runtime(settings, send=lambda job_id: None)
    yield runtime
    runtime.close()


@pytest.fixture
def ctx(rt, tmp_path) -> CorpusContext:
    return CorpusContext(intake_dir=rt.settings.intake_dir, outside_dir=tmp_path / "outside",
                         max_file_bytes=rt.settings.max_file_bytes, stall_s=6.0,
                         claim_timeout_s=20.0)


def _watcher(rt, stable_scans: int = 1, **timing) -> IntakeWatcher:
    timing = {"stable_seconds": 0, "incomplete_grace_seconds": 0, **timing}
    return IntakeWatcher(rt.intake, rt.settings.intake_dir, stable_scans, **timing)


def _scan_until(watcher: IntakeWatcher, enough: Callable[[list], bool], timeout: float,
                interval: float = 0.1) -> list:
    admissions: list = []
    deadline = time.monotonic() + timeout
    while not enough(admissions):
        assert time.monotonic() < deadline, f"only {len(admissions)} admissions in {timeout} s"
        admissions += watcher.scan_once()
        time.sleep(interval)
    return admissions


def _outcome(rt, placed) -> str:
    with rt.engine.connect() as conn:
        return observed_outcome(conn, placed)


def _process_all(rt) -> None:
    with rt.sessions() as s:
        ids = s.execute(select(Job.id).where(Job.state == JobState.QUEUED.value)).scalars().all()
    for job_id in ids:
        pipeline.process_job(rt, job_id)


def _sidecars(rt) -> list[dict]:
    return [json.loads(p.read_text()) for p in rt.settings.rejected_dir.glob("*.json")]


def _no_names_in(text: str, names: list[str]) -> None:
    for name in names:
        assert name not in text, "a file name reached the log"


# --------------------------------------------------------------------------- names


LONG_AND_ODD_NAMES = ["name_74_cjk_chars", "name_255_bytes_cjk", "name_255_bytes_ascii",
                      "name_not_utf8", "name_with_newline", "name_with_control_chars",
                      "name_patient_like", "name_with_traversal_text"]


@_both
def test_long_and_odd_names_are_claimed_recorded_and_reported(rt, ctx, caplog):
    caplog.set_level(logging.INFO)
    placed = {name: place(kind(name), ctx) for name in LONG_AND_ODD_NAMES}
    watcher = _watcher(rt)
    admissions = watcher.scan_once()
    assert len(admissions) == len(placed)
    assert not any(os.path.lexists(p) for pl in placed.values() for p in pl.paths)
    _process_all(rt)
    assert {k: _outcome(rt, p) for k, p in placed.items()} == {k: REPORT for k in placed}
    with rt.sessions() as s:
        stored = set(s.execute(select(Submission.original_name)).scalars())
    cjk74 = placed["name_74_cjk_chars"].original_names[0]
    assert cjk74 in stored and "a" * 251 + ".jpg" in stored
    assert "lesion_\ufffd\ufffd_latin1_\ufffd.jpg" in stored  # not UTF-8: replaced, still stored
    assert "lesion\ufffdsecond line.jpg" in stored  # control characters replaced
    assert all(len(name) <= 255 for name in stored)
    _no_names_in(caplog.text, ["皮皮皮皮", "膚膚膚膚", "a" * 40, "DOE^JANE", "second line",
                               "passwd"])
    assert not list((rt.settings.intake_dir / PROCESSING_DIR).iterdir())


def test_a_claim_left_by_an_older_version_is_taken_up(rt):
    processing = rt.settings.intake_dir / PROCESSING_DIR
    processing.mkdir()
    (processing / f"{'0' * 32}__old lesion.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=61)))
    [admission] = _watcher(rt).scan_once()
    with rt.sessions() as s:
        assert s.execute(select(Submission.original_name)).scalar_one() == "old lesion.jpg"
    assert admission.state == JobState.RECEIVED and not list(processing.iterdir())


# --------------------------------------------------------------------------- entry types

ODD_KINDS = ["fifo_named_jpg", "unix_socket_named_jpg", "dangling_symlink", "symlink_loop"]


def test_odd_entries_are_recorded_moved_and_never_opened(rt, ctx, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    placed = {name: place(kind(name), ctx) for name in ODD_KINDS}
    (tmp_path / "outside_folder").mkdir()
    os.symlink(tmp_path / "outside_folder", rt.settings.intake_dir / "link_to_folder.jpg")
    watcher = _watcher(rt)
    scan = threading.Thread(target=watcher.scan_once, daemon=True)
    scan.start()
    scan.join(30)
    assert not scan.is_alive(), "the scan blocked (a FIFO was opened?)"

    for name, pl in placed.items():
        assert _outcome(rt, pl) == "rejected:not_a_regular_file", name
    assert list(rt.settings.intake_dir.iterdir()) == [rt.settings.intake_dir / PROCESSING_DIR]
    assert not list((rt.settings.intake_dir / PROCESSING_DIR).iterdir())
    moved = {entry_type(p) for p in rt.settings.rejected_dir.iterdir() if p.suffix != ".json"}
    assert moved == {"fifo", "socket", "symlink"}
    sidecars = _sidecars(rt)
    assert len(sidecars) == 5 and {s["code"] for s in sidecars} == {"not_a_regular_file"}
    assert any("named pipe" in s["reason"] for s in sidecars)
    lines = [r for r in caplog.records if "not a regular file" in r.getMessage()]
    assert len(lines) == 5
    _no_names_in(caplog.text, ["fifo.jpg", "socket.jpg", "dangling.jpg", "loop.jpg",
                               "link_to_folder.jpg"])
    assert watcher.scan_once() == []  # recorded once, not on every scan


def test_folders_are_walked_whatever_their_name(rt, ctx):
    placed = {name: place(kind(name), ctx) for name in
              ["directory_named_jpg", "directory_named_jpg_with_image", "name_deeply_nested",
               "name_in_subfolder"]}
    assert len(_watcher(rt).scan_once()) == 3
    assert _outcome(rt, placed["directory_named_jpg"]) == LEFT_ALONE
    assert entry_type(placed["directory_named_jpg"].paths[0]) == "dir"


def test_a_symlink_to_a_regular_file_is_followed(rt, ctx):
    placed = place(kind("symlink_to_good_file"), ctx)
    [admission] = _watcher(rt).scan_once()
    with rt.sessions() as s:
        assert s.get(Job, admission.job_id).image.sha256 == placed.sha256
    assert not os.path.lexists(placed.paths[0])  # the link is gone ...
    assert (ctx.outside_dir / "symlink_target.jpg").is_file()  # ... its target is untouched


def test_hidden_and_partial_files_are_left_alone(rt, ctx):
    kinds = [k for k in KINDS if k.expect == LEFT_ALONE and k.name != "directory_named_jpg"]
    placed = {k.name: place(k, ctx) for k in kinds}
    watcher = _watcher(rt)
    assert watcher.scan_once() == [] and watcher.scan_once() == []
    assert {k: _outcome(rt, p) for k, p in placed.items()} == {k: LEFT_ALONE for k in placed}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file without read permission")
def test_a_file_without_read_permission_is_recorded_as_unreadable(rt, ctx):
    placed = place(kind("no_read_permission"), ctx)
    _watcher(rt).scan_once()
    assert _outcome(rt, placed) == "rejected:unreadable"


# --------------------------------------------------------------------------- size


def test_a_file_over_the_limit_is_rejected_by_stat_never_read(rt, ctx, monkeypatch):
    def never(*_a, **_k):
        raise AssertionError("a file over the limit was read")

    monkeypatch.setattr(watcher_module, "read_regular_file", never)
    placed = place(kind("too_large_sparse"), ctx)
    inode = placed.paths[0].stat().st_ino
    [admission] = _watcher(rt).scan_once()
    with rt.sessions() as s:
        job = s.get(Job, admission.job_id)
        assert (job.state, job.error_code) == ("rejected", "too_large_file")
        assert (job.image.sha256, job.image.size_bytes) == (None, ctx.max_file_bytes + 1)
    [kept] = [p for p in rt.settings.rejected_dir.iterdir() if p.suffix != ".json"]
    assert kept.stat().st_ino == inode  # the file itself, moved: never stored twice
    assert not [p for p in rt.settings.archive_dir.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- timing


def test_stability_is_measured_in_time_not_only_in_scans(rt):
    watcher = _watcher(rt, stable_scans=2, stable_seconds=0.8)
    (rt.settings.intake_dir / "lesion.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=62)))
    started = time.monotonic()
    for _ in range(4):
        assert watcher.scan_once() == []
    assert time.monotonic() - started < 0.8
    time.sleep(0.9)
    assert len(watcher.scan_once()) == 1


def test_a_stalled_writer_and_a_writer_that_appends_after_the_claim_give_complete_images(rt, ctx):
    """A 6 s pause mid-file with a 1 s stability window: the file is claimed half-written,
    found to end early, held, and taken once its writer finished."""
    watcher = _watcher(rt, stable_seconds=1.0, incomplete_grace_seconds=30)
    names = ["stalled_writer", "appended_after_claim", "trickle_writer"]
    started = time.monotonic()
    placed = {name: place(kind(name), ctx) for name in names}
    admissions = _scan_until(watcher, lambda a: len(a) >= len(names), timeout=40, interval=0.2)
    for pl in placed.values():
        pl.wait(5)
    assert time.monotonic() - started >= ctx.stall_s
    with rt.sessions() as s:
        archived = {s.get(Job, a.job_id).image.sha256 for a in admissions}
    assert archived == {pl.sha256 for pl in placed.values()}  # whole files, each once
    _process_all(rt)
    assert {k: _outcome(rt, p) for k, p in placed.items()} == {k: REPORT for k in names}
    assert watcher.scan_once() == []


def test_a_cut_file_is_held_then_judged_as_it_is(rt, ctx):
    placed = {name: place(kind(name), ctx) for name in
              ["dicom_cut_before_pixel_data", "dicom_jpeg_fragment_cut", "jpeg_missing_eoi"]}
    watcher = _watcher(rt, incomplete_grace_seconds=1.0)
    assert watcher.scan_once() == []  # claimed, ends early: held
    time.sleep(1.1)
    assert len(watcher.scan_once()) == 3
    _process_all(rt)
    assert {k: _outcome(rt, p) for k, p in placed.items()} == \
        {k: "rejected:truncated" for k in placed}
    reasons = {s["original_name"]: s["reason"] for s in _sidecars(rt)}
    assert "ends inside element (0008,0018) SOPInstanceUID" in reasons["cut_header.dcm"]
    assert "ends inside element (7FE0,0010) PixelData" in reasons["cut_fragment.dcm"]


# --------------------------------------------------------------------------- containment


def test_an_unexpected_error_on_one_file_is_recorded_as_its_rejection(rt, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    real_admit = rt.intake.admit_bytes

    def admit(data, door, metadata=None, original_name=None, **more):
        if original_name == "boom.jpg":
            raise KeyError(f"{PATIENT_NAME} {PATIENT_ID}")  # text that must go nowhere
        return real_admit(data, door, metadata, original_name, **more)

    monkeypatch.setattr(rt.intake, "admit_bytes", admit)
    folder = rt.settings.intake_dir
    (folder / "boom.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=63)))
    (folder / "fine.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=64)))
    watcher = _watcher(rt)
    admissions = watcher.scan_once()
    assert sorted(a.state.value for a in admissions) == ["received", "rejected"]
    [sidecar] = _sidecars(rt)
    assert sidecar["code"] == "internal_error" and "KeyError" in sidecar["reason"]
    assert (rt.settings.rejected_dir / sidecar["file"]).is_file()
    with rt.sessions() as s:
        errors = " ".join(e or "" for e in s.execute(select(Job.error)).scalars())
    for text in (caplog.text, errors, json.dumps(sidecar)):
        assert PATIENT_ID not in text and PATIENT_NAME not in text
    assert watcher.scan_once() == []


def test_a_file_that_cannot_be_claimed_is_recorded_once_and_left(rt, monkeypatch):
    real_rename, disk = os.rename, {"full": True}

    def rename(src, dst, *a, **k):
        if str(src).endswith("stuck.jpg"):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        if str(src).endswith("disk_full.jpg") and disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", rename)
    folder = rt.settings.intake_dir
    (folder / "stuck.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=65)))
    (folder / "fine.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=66)))
    (folder / "disk_full.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=68)))
    watcher = _watcher(rt)
    [fine] = watcher.scan_once()
    assert fine.state == JobState.RECEIVED
    assert watcher.scan_once() == []
    with rt.sessions() as s:
        codes = sorted(j.error_code or "" for j in s.execute(select(Job)).scalars())
    assert codes == ["", "unreadable"]  # fine.jpg queued; stuck.jpg recorded once
    assert (folder / "stuck.jpg").exists() and (folder / "disk_full.jpg").exists()
    disk["full"] = False
    [later] = watcher.scan_once()
    assert later.state == JobState.RECEIVED and not (folder / "disk_full.jpg").exists()
    assert not [p for p in (folder / PROCESSING_DIR).iterdir() if p.name.endswith(NAME_SUFFIX)]


# --------------------------------------------------------------------------- patient data


@_both
def test_dicom_identifiers_that_break_their_vr_are_refused_at_the_door(rt, ctx, caplog):
    caplog.set_level(logging.INFO)
    placed = place(kind("dicom_overlong_identifiers"), ctx)
    _watcher(rt).scan_once()
    _process_all(rt)
    assert _outcome(rt, placed) == "rejected:dicom_invalid"
    [sidecar] = _sidecars(rt)
    assert "AccessionNumber" in sidecar["reason"] and "16 characters" in sidecar["reason"]
    with rt.sessions() as s:
        errors = " ".join(e or "" for e in s.execute(select(Job.error)).scalars())
    for text in (caplog.text, errors, json.dumps(sidecar)):
        assert "A" * 20 not in text and "P" * 20 not in text
    assert not list(rt.settings.reports_dir.iterdir())


def test_caller_metadata_over_its_vr_never_reaches_the_database():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        ImageMetadata(accession_number="ACC-" + "9" * 96, patient_id=PATIENT_ID)
    assert "16 characters" in str(caught.value) and "9" * 20 not in str(caught.value)


@_both
def test_a_database_refusal_leaves_no_report_and_no_patient_data_in_the_error(
        rt, monkeypatch, caplog):
    """PostgreSQL refuses a value over its column (SQLite does not: there the refusal is
    simulated); the rendered PDF must not stay beside the failed job."""
    caplog.set_level(logging.INFO)
    job_id = rt.intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=67)), SourceDoor.API,
                                   ImageMetadata(patient_id=PATIENT_ID),
                                   "lesion.jpg").job_id
    too_long = ImageMetadata.model_construct(**{**ImageMetadata(patient_id=PATIENT_ID).model_dump(),
                                                "patient_name": PATIENT_NAME * 30})
    monkeypatch.setattr(ImageMetadata, "merged_over", lambda self, base: too_long)
    if rt.settings.database_url.startswith("sqlite"):
        from sqlalchemy.exc import DataError

        def refuse(*_a, **_k):
            raise DataError("UPDATE images SET ...", {}, Exception("value too long"))

        monkeypatch.setattr(pipeline.jobs, "complete", refuse)
    with pytest.raises(Exception) as caught:
        pipeline.process_job(rt, job_id)
    text = str(caught.value)
    if rt.settings.database_url.startswith("postgresql"):
        assert "StringDataRightTruncation" in text  # the real refusal, not a simulated one
    assert PATIENT_ID not in text and PATIENT_NAME not in text
    assert PATIENT_NAME not in describe_exception(caught.value)
    assert list(rt.settings.reports_dir.iterdir()) == []  # no PDF, no pending file
    with rt.sessions() as s:
        assert s.execute(select(Report)).first() is None
        assert s.get(Job, job_id).state != JobState.DONE.value
    assert PATIENT_NAME not in caplog.text


def test_engines_hide_bound_parameters():
    from worker.db.engine import make_engine

    assert make_engine("sqlite://").hide_parameters is True


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_database_error_on_postgresql_does_not_carry_the_values(rt):
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as caught, rt.sessions.begin() as s:
        s.add(Image(sha256="0" * 64, source_door="api", patient_id=PATIENT_ID,
                    accession_number="9" * 100))
    assert "StringDataRightTruncation" in str(caught.value)
    assert "9" * 20 not in str(caught.value) and PATIENT_ID not in str(caught.value)


# --------------------------------------------------------------------------- the corpus


def test_the_whole_corpus_through_the_folder_door(rt, ctx, caplog):
    """Every kind of the fault corpus, at once, through this watcher and the pipeline (no
    broker): each ends as the corpus expects, nothing is left in .processing, and no
    patient marker reaches the log or a sidecar."""
    from tests.faults.corpus import SENSITIVE_MARKERS, mismatches, place_all, wait_writers

    caplog.set_level(logging.INFO)
    watcher = _watcher(rt, stable_scans=2, stable_seconds=1.0, incomplete_grace_seconds=10.0)
    placed = place_all(ctx)
    deadline = time.monotonic() + 120
    while True:
        watcher.scan_once()
        _process_all(rt)
        if all(not t.is_alive() for p in placed.values() for t in p.writers) and \
                not mismatches(rt.engine, placed):
            break
        assert time.monotonic() < deadline, mismatches(rt.engine, placed)
        time.sleep(0.3)
    wait_writers(placed.values())
    assert mismatches(rt.engine, placed) == {}
    assert not list((rt.settings.intake_dir / PROCESSING_DIR).iterdir())
    sidecars = " ".join(p.read_text() for p in rt.settings.rejected_dir.glob("*.json"))
    for marker in SENSITIVE_MARKERS:
        assert marker not in caplog.text and marker not in sidecars
