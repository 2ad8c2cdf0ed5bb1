"""One job through the plain pipeline modules (no broker): decode, classify, report, persist."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from sqlalchemy import select, update

from schemas import CLASS_NAMES, JobState, SourceDoor, TriageLevel
from tests import imagegen
from tests.imagegen import dicom_bytes, jpeg_bytes, lesion_rgb, truncated_dicom_bytes
from worker.jobs import pipeline
from worker.messaging.celery_worker import create_worker_app
from worker.db.models import Image, Job, Prediction, Report
from worker.jobs.runtime import build_runtime


@pytest.fixture
def rt(migrated_settings, store_with_tiny_model):
    runtime = build_runtime(migrated_settings, send=lambda job_id: None)  # no broker here
    yield runtime
    runtime.close()


def _admit(rt, data, metadata=None, name="x.dcm"):
    return rt.intake.admit_bytes(data, SourceDoor.API, metadata, name).job_id


def test_dicom_becomes_prediction_report_and_identifiers(rt):
    data = dicom_bytes(lesion_rgb(seed=2), metadata={"PatientID": "P-77", "AccessionNumber": "A-9"})
    job_id = _admit(rt, data)
    assert pipeline.process_job(rt, job_id) == "done"
    with rt.sessions() as s:
        job = s.get(Job, job_id)
        pred = s.execute(select(Prediction).where(Prediction.job_id == job_id)).scalar_one()
        report = s.execute(select(Report).where(Report.job_id == job_id)).scalar_one()
        image = s.get(Image, job.image_id)
    assert job.state == "done" and job.attempts == 1 and job.finished_at is not None
    assert pred.model_version == "tiny-1"
    probs = pred.probabilities()
    assert set(probs) == set(CLASS_NAMES) and abs(sum(probs.values()) - 1) < 1e-4
    assert (image.patient_id, image.accession_number, image.source_format) == ("P-77", "A-9", "dicom")
    assert report.path.endswith(f"A-9_{job_id}.pdf")
    text = subprocess.run(["pdftotext", report.path, "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "P-77" in text and TriageLevel(pred.triage_level).wording.split(" - ")[0] in text


def test_caller_metadata_wins_over_dicom_tags(rt):
    from schemas import ImageMetadata

    data = dicom_bytes(lesion_rgb(seed=5), metadata={"PatientID": "FROM-FILE"})
    job_id = _admit(rt, data, ImageMetadata(patient_id="FROM-CALLER", laterality="R"))
    pipeline.process_job(rt, job_id)
    with rt.sessions() as s:
        image = s.get(Job, job_id).image
        assert (image.patient_id, image.laterality) == ("FROM-CALLER", "R")
        assert image.study_date is not None  # still read from the file


def test_undecodable_image_is_rejected_with_reason_and_sidecar(rt):
    job_id = _admit(rt, truncated_dicom_bytes(), name="cut.dcm")
    assert pipeline.process_job(rt, job_id) == "rejected"
    with rt.sessions() as s:
        job = s.get(Job, job_id)
    assert job.state == "rejected" and job.error
    sidecar = rt.settings.rejected_dir / f"{job_id}__cut.dcm.json"
    assert json.loads(sidecar.read_text())["code"] == job.error_code
    assert pipeline.process_job(rt, job_id) == "skipped"  # never retried


@pytest.mark.parametrize("make, code", [
    (imagegen.dicom_without_pixels, "dicom_no_pixel_data"),
    (imagegen.dicom_monochrome16, "dicom_unsupported"),
    (imagegen.dicom_multiframe, "dicom_unsupported"),
    (imagegen.bomb_png_bytes, "decompression_bomb"),
    (imagegen.truncated_jpeg_bytes, "truncated"),
    (imagegen.corrupt_dicom_bytes, "dicom_invalid"),
])
def test_every_bad_input_ends_as_a_recorded_rejection(rt, make, code):
    job_id = _admit(rt, make(), name=f"bad {code}.bin")
    assert pipeline.process_job(rt, job_id) == "rejected"
    with rt.sessions() as s:
        job = s.get(Job, job_id)
    assert (job.state, job.error_code) == ("rejected", code) and job.error
    kept = rt.settings.rejected_dir / f"{job_id}__bad_{code}.bin"
    assert kept.exists() and json.loads(kept.with_name(kept.name + ".json").read_text())["code"] == code


def test_finished_job_is_not_processed_twice(rt):
    job_id = _admit(rt, jpeg_bytes(lesion_rgb(seed=6)), name="a.jpg")
    assert pipeline.process_job(rt, job_id) == "done"
    assert pipeline.process_job(rt, job_id) == "skipped"
    with rt.sessions() as s:
        assert len(s.execute(select(Prediction).where(Prediction.job_id == job_id)).all()) == 1


def test_attempts_cap_stops_a_poisonous_job(rt):
    job_id = _admit(rt, jpeg_bytes(lesion_rgb(seed=9)), name="poison.jpg")
    with rt.sessions.begin() as s:  # as if workers died on it max_attempts times
        s.execute(update(Job).where(Job.id == job_id).values(
            state=JobState.RUNNING.value, attempts=rt.settings.max_attempts))
    assert pipeline.process_job(rt, job_id) == "skipped"
    with rt.sessions() as s:
        job = s.get(Job, job_id)
    assert (job.state, job.error_code) == ("failed", "attempts_exhausted")


def test_shadow_candidate_is_recorded_but_never_reported(rt, tmp_path):
    from tests.modelgen import write_tiny_version
    from worker.store import admin
    from worker.retrain.truth import add_label, triage_metrics

    store = rt.models.store
    store.add_version(write_tiny_version(tmp_path / "tiny-2", version="tiny-2", seed=1))
    admin.set_shadow(store, rt.sessions, "tiny-2", "test", "compare before promotion")
    job_id = _admit(rt, dicom_bytes(lesion_rgb(seed=40)))
    assert pipeline.process_job(rt, job_id) == "done"
    with rt.sessions() as s:
        preds = s.execute(select(Prediction).where(Prediction.job_id == job_id)).scalars().all()
        assert sorted((p.model_version, p.shadow) for p in preds) == [("tiny-1", False), ("tiny-2", True)]
        report = s.execute(select(Report).where(Report.job_id == job_id)).scalar_one()
    text = subprocess.run(["pdftotext", report.path, "-"], capture_output=True, text=True).stdout
    assert "tiny-1" in text and "tiny-2" not in text
    with rt.sessions.begin() as s:
        add_label(s, job_id, "melanoma", "histopathology", "test")
    with rt.sessions() as s:
        assert set(triage_metrics(s)) == {"tiny-1", "tiny-2 (shadow)"}
    admin.set_shadow(store, rt.sessions, None, "test", "done comparing")
    assert store.shadow_version() is None


def test_an_unexpected_error_fails_the_job_once_with_a_sidecar(rt, migrated_settings, monkeypatch):
    from worker.messaging.queues import PROCESS_TASK

    def broken(*_a, **_k):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(pipeline, "render_report", broken)
    app = create_worker_app(migrated_settings)
    app._triage_runtime = rt  # the task runs here, in this process, on this runtime
    job_id = _admit(rt, jpeg_bytes(lesion_rgb(seed=41)), name="crash me.jpg")
    assert app.tasks[PROCESS_TASK].apply(args=[job_id]).get() == "failed"
    with rt.sessions() as s:
        job = s.get(Job, job_id)
    assert (job.state, job.error_code) == ("failed", "internal_error")
    sidecar = json.loads((rt.settings.rejected_dir / f"{job_id}__crash_me.jpg.json").read_text())
    assert sidecar["state"] == "failed" and "RuntimeError" in sidecar["reason"]


def test_the_report_is_placed_only_after_the_database_accepted_the_job(rt, monkeypatch):
    real_complete = pipeline.jobs.complete
    seen = {}

    def complete(session, job_id, metadata, facts, result, usable, report_path, *a, **k):
        seen["placed before commit"] = os.path.exists(report_path)
        seen["pending"] = [p.name for p in rt.settings.reports_dir.iterdir()]
        return real_complete(session, job_id, metadata, facts, result, usable, report_path,
                             *a, **k)

    monkeypatch.setattr(pipeline.jobs, "complete", complete)
    job_id = _admit(rt, jpeg_bytes(lesion_rgb(seed=42)), name="order.jpg")
    assert pipeline.process_job(rt, job_id) == "done"
    assert seen["placed before commit"] is False
    assert len(seen["pending"]) == 1 and seen["pending"][0].endswith(".pending")
    with rt.sessions() as s:
        report = s.execute(select(Report).where(Report.job_id == job_id)).scalar_one()
    assert [p.name for p in rt.settings.reports_dir.iterdir()] == [os.path.basename(report.path)]


def test_a_refused_commit_leaves_no_report_behind(rt, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    def refuse(*_a, **_k):
        raise IntegrityError("UPDATE images ...", {}, Exception("refused"))

    monkeypatch.setattr(pipeline.jobs, "complete", refuse)
    job_id = _admit(rt, jpeg_bytes(lesion_rgb(seed=43)), name="refused.jpg")
    with pytest.raises(IntegrityError):
        pipeline.process_job(rt, job_id)
    assert list(rt.settings.reports_dir.iterdir()) == []
