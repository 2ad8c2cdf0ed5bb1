"""``melanoma-triage db migrate-to URL``: a populated SQLite pilot home copied into the real
PostgreSQL with database storage, checked, re-run after an interruption, and then used."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from schemas import DeliveryKind, SourceDoor
from tests.conftest import make_settings
from tests.imagegen import jpeg_bytes, lesion_rgb, truncated_dicom_bytes
from worker.cli.main import app
from worker.db import deliveries
from worker.db.engine import make_engine, make_session_factory
from worker.db.models import Blob, GroundTruth, Image, Job, ModelEvent, Report
from worker.db.workspace import AuditEvent, WorkspaceUser
from worker.doors.tokens import create_token, verify_token
from worker.jobs import pipeline
from worker.jobs.runtime import build_runtime
from worker.results.delivery import deliver_results
from worker.retrain.truth import add_label
from worker.storage.blobs import StoredFile, blob_index
from worker.store.admin import record_seed
from worker.store.versions import ModelStore
from worker.workspace import audit
from worker.workspace.audit import AuditAction
from worker.workspace.users import create_user


@pytest.fixture
def pilot(migrated_settings, store_with_tiny_model, monkeypatch):
    """A pilot home on the embedded defaults: two reports, a rejection, truth, a delivery row,
    a model event, a token, a user and an audit entry."""
    monkeypatch.setenv("TRIAGE_HOME", str(migrated_settings.home))
    rt = build_runtime(migrated_settings, send=lambda job_id: None)
    record_seed(store_with_tiny_model, rt.sessions)
    done = []
    for seed in (1, 2):
        job_id = rt.intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=seed)), SourceDoor.API, None,
                                       f"lesion-{seed}.jpg").job_id
        assert pipeline.process_job(rt, job_id) == "done"
        deliver_results(migrated_settings, rt.sessions, job_id)  # the FHIR outbox file
        done.append(job_id)
    cut = rt.intake.admit_bytes(truncated_dicom_bytes(), SourceDoor.API, None, "cut.dcm").job_id
    assert pipeline.process_job(rt, cut) == "rejected"
    token = create_token(rt.sessions, "his")
    create_user(rt.sessions, "dr-a", "clinician", "a-long-enough-password-1")
    with rt.sessions.begin() as s:
        add_label(s, done[0], "melanoma", "histopathology", "dr-a")
        deliveries.ensure(s, done[0], DeliveryKind.DICOM, "PACS@127.0.0.1:1")
        audit.record(s, AuditAction.VIEW_JOB, "dr-a", done[0], "127.0.0.1")
    rt.close()
    return migrated_settings, done, cut, token


def _count(sessions, model) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_pilot_home_migrates_checks_reruns_and_runs_on_the_result(pilot, postgres_url, tmp_path):
    settings, done, cut, token = pilot
    runner = CliRunner()
    result = runner.invoke(app, ["db", "migrate-to", postgres_url, "--home", str(settings.home), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["problems"] == []
    assert summary["files"]["images"] == 3 and summary["files"]["reports"] == 2
    assert summary["files"]["rejected"] == 2 and summary["files"]["outbox"] == 2
    assert summary["files"]["model_store"] > 0
    for name in ("jobs", "images", "submissions", "predictions", "reports", "ground_truth",
                 "model_events", "api_tokens", "ui_users", "audit_events", "deliveries"):
        counts = summary["tables"][name]
        assert counts["source"] == counts["target"] > 0, name

    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    try:
        with sessions() as s:
            report = s.execute(select(Report).where(Report.job_id == done[0])).scalar_one()
            image = s.get(Job, done[0]).image
        assert report.path.startswith("db:reports/") and image.archive_path.startswith("db:archive/")
        assert StoredFile(report.path, engine).read_bytes().startswith(b"%PDF")
        assert verify_token(sessions, token) == "his"

        # An interruption: rows and files of the last batches lost. Running again completes it.
        with sessions.begin() as s:
            s.execute(delete(AuditEvent))
            s.execute(delete(GroundTruth))
            s.execute(delete(Blob).where(Blob.key.startswith("rejected/")))
        again = runner.invoke(app, ["db", "migrate-to", postgres_url, "--home", str(settings.home), "--json"])
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["ok"]
        assert _count(sessions, AuditEvent) == 1 and _count(sessions, GroundTruth) == 1
        assert len(blob_index(engine, "rejected/")) == 2
        assert _count(sessions, Image) == 3 and _count(sessions, ModelEvent) == 1  # nothing twice
        assert _count(sessions, WorkspaceUser) == 1

        # A file changed behind the copy is a problem, and the command fails.
        with sessions.begin() as s:
            s.get(Blob, report.path[3:]).sha256 = "0" * 64
        bad = runner.invoke(app, ["db", "migrate-to", postgres_url, "--home", str(settings.home), "--json"])
        assert bad.exit_code == 1 and "reports" in " ".join(json.loads(bad.stdout)["problems"])
        with sessions.begin() as s:
            blob = s.get(Blob, report.path[3:])
            import hashlib
            blob.sha256 = hashlib.sha256(blob.data).hexdigest()

        # A new host on the migrated database: its model comes from the database, old reports
        # are read from it, and a new image is triaged into it.
        host = make_settings(tmp_path / "new-host", database_url=postgres_url, storage="database")
        host.ensure_folders()
        rt = build_runtime(host, send=lambda job_id: None)
        try:
            job_id = rt.intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=7)), SourceDoor.API, None, "n.jpg").job_id
            assert pipeline.process_job(rt, job_id) == "done"
            assert ModelStore(host.model_store_dir).current_version() == "tiny-1"
            dup = rt.intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=1)), SourceDoor.API, None, "again.jpg")
            assert dup.duplicate and dup.job_id == done[0]  # the pilot's history is there
        finally:
            rt.close()
    finally:
        engine.dispose()


def test_migrate_to_refuses_a_url_that_is_not_postgresql(pilot, tmp_path):
    settings, *_ = pilot
    result = CliRunner().invoke(app, ["db", "migrate-to", f"sqlite:///{tmp_path}/x.db",
                                      "--home", str(settings.home)])
    assert result.exit_code == 2 and "PostgreSQL" in result.output
