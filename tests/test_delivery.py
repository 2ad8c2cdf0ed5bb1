"""deliver_results end to end against real peers: dcmtk's storescp for DICOM, a local HTTP
server for the signed webhook; retries, dead letters, resend, idempotency, the CLI."""

from __future__ import annotations

import json

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydicom import dcmread
from sqlalchemy import create_engine
from typer.testing import CliRunner

from schemas import TriageLevel
from tests.conftest import make_settings
from tests.resultgen import RecordingHTTPServer, StoreSCP, free_port, insert_done_job
from worker.db import deliveries
from worker.db.deliveries import Delivery
from worker.db.models import Base
from worker.results.cli import app as deliveries_app
from worker.results.delivery_status import delivery_status, format_delivery_status
from worker.results.delivery import backoff_s, deliver_results, display_url, dicom_outbox, resend
from worker.results.webhook import SIGNATURE_HEADER, verify_signature

SECRET = "webhook-test-secret"


def settings_with(base, **overrides):
    values = dict(delivery_backoff_s=0.01, delivery_backoff_max_s=0.05, delivery_timeout_s=5,
                  delivery_attempts=3)
    values.update(overrides)
    return make_settings(base.home, **values)


def test_deliveries_table_matches_its_migration(migrated_settings):
    engine = create_engine(migrated_settings.database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert [d for d in diff if "deliveries" in str(d)] == []


def test_dicom_results_reach_storescp_once(tmp_path, migrated_settings, sessions):
    with StoreSCP(tmp_path / "pacs") as scp:
        settings = settings_with(migrated_settings, dicom_destinations=scp.destination)
        job_id = insert_done_job(sessions, settings, "dicom")
        outcomes = deliver_results(settings, sessions, job_id)
        assert [(o.kind, o.destination, o.state, o.attempts) for o in outcomes] == [
            ("dicom", scp.destination, "sent", 1)]
        received = [dcmread(p) for p in scp.received()]
        assert sorted(ds.SOPClassUID for ds in received) == [
            "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.88.33"]
        assert {ds.StudyInstanceUID for ds in received} == {"1.2.826.0.1.3680043.8.498.1"}
        # Again: the sent row is not sent twice.
        assert deliver_results(settings, sessions, job_id)[0].attempts == 1
        assert len(scp.received()) == 2
    assert sorted(p.name for p in dicom_outbox(settings, job_id).iterdir()) == ["report.dcm", "sr.dcm"]


def test_dead_destination_becomes_a_dead_letter_then_resend_works(tmp_path, migrated_settings, sessions):
    port = free_port()  # nobody listens here yet
    destination = f"PACS@127.0.0.1:{port}"
    settings = settings_with(migrated_settings, dicom_destinations=destination)
    job_id = insert_done_job(sessions, settings, "jpeg")
    delays: list[float] = []
    outcome, = deliver_results(settings, sessions, job_id, sleep=delays.append)
    assert (outcome.state, outcome.attempts) == ("dead", 3)
    assert delays == [0.01, 0.02]  # backoff doubles between the three attempts
    assert "no association" in outcome.last_error and "P-JPEG-7" not in outcome.last_error

    with sessions() as s:
        info = delivery_status(s)
    assert info["deliveries"]["dead"] == 1
    assert destination in format_delivery_status(info)

    with StoreSCP(tmp_path / "pacs", port=port) as scp:
        results = resend(settings, sessions, job_id=job_id, sleep=delays.append)
        assert [(o.state, o.attempts) for o in results[job_id]] == [("sent", 1)]
        assert len(scp.received()) == 3  # photograph, SR, PDF


def test_urgent_result_fires_a_signed_webhook(migrated_settings, sessions):
    with RecordingHTTPServer(statuses=(500, 200)) as hook:
        settings = settings_with(migrated_settings, webhook_url=hook.url, webhook_secret=SECRET)
        urgent = insert_done_job(sessions, settings, "dicom", triage=TriageLevel.URGENT, melanoma=0.91)
        outcome, = deliver_results(settings, sessions, urgent)
        assert (outcome.kind, outcome.state, outcome.attempts) == ("webhook", "sent", 2)
        assert outcome.destination == display_url(hook.url) and "/hooks" not in outcome.destination
        headers, body = hook.requests[-1]
        assert verify_signature(SECRET, body, headers[SIGNATURE_HEADER.lower()])
        assert not verify_signature("wrong", body, headers[SIGNATURE_HEADER.lower()])
        payload = json.loads(body)
        assert payload == {
            "event": "result.urgent", "event_id": f"{urgent}/result.urgent", "job_id": urgent,
            "triage": "urgent", "melanoma_probability": 0.91, "model_version": "tiny-test-1",
            "accession_number": "ACC0001", "finished_at": payload["finished_at"]}
        assert "Doe" not in body.decode() and "TEST-0001" not in body.decode()

        routine = insert_done_job(sessions, settings, "png", triage=TriageLevel.ROUTINE, melanoma=0.01,
                                  predicted_class="nevus")
        assert deliver_results(settings, sessions, routine) == []  # no webhook for routine
        assert len(hook.requests) == 2


def test_webhook_without_secret_is_a_dead_letter_at_once(migrated_settings, sessions):
    with RecordingHTTPServer() as hook:
        settings = settings_with(migrated_settings, webhook_url=hook.url)
        job_id = insert_done_job(sessions, settings, "dicom")
        outcome, = deliver_results(settings, sessions, job_id)
        assert (outcome.state, outcome.attempts) == ("dead", 1)
        assert "SECRET" in outcome.last_error and hook.requests == []


def test_results_return_to_the_calling_ae(tmp_path, migrated_settings, sessions):
    from worker.db.integration import DicomInstance

    with StoreSCP(tmp_path / "camera") as camera:
        settings = settings_with(migrated_settings, dicom_return_to_caller=True,
                                 dicom_known_peers=f"OTHER@127.0.0.1:1,{camera.destination}")
        job_id = insert_done_job(sessions, settings, "dicom")
        with sessions.begin() as s:
            s.add(DicomInstance(sop_instance_uid="1.2.3.4.5", job_id=job_id, calling_ae_title="PACS",
                                sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.7"))
        outcome, = deliver_results(settings, sessions, job_id)
        assert (outcome.destination, outcome.state) == (camera.destination, "sent")
        assert len(camera.received()) == 2


def test_job_not_done_delivers_nothing(migrated_settings, sessions):
    assert deliver_results(migrated_settings, sessions, "no-such-job") == []


def test_backoff_is_capped(migrated_settings):
    settings = make_settings(migrated_settings.home, delivery_backoff_s=2, delivery_backoff_max_s=10)
    assert [backoff_s(settings, n) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]


def test_display_url_hides_credentials_and_paths():
    assert display_url("https://user:pw@ehr.example.org:8443/fhir?token=x").startswith(
        "https://ehr.example.org:8443/#")
    assert display_url("https://ehr.example.org") == "https://ehr.example.org"


def test_cli_list_and_resend(tmp_path, migrated_settings, sessions, monkeypatch):
    port = free_port()
    destination = f"PACS@127.0.0.1:{port}"
    monkeypatch.setenv("TRIAGE_DICOM_DESTINATIONS", destination)
    monkeypatch.setenv("TRIAGE_DELIVERY_ATTEMPTS", "1")
    monkeypatch.setenv("TRIAGE_HOME", str(migrated_settings.home))  # settings_for() sets it
    settings = settings_with(migrated_settings, dicom_destinations=destination, delivery_attempts=1)
    job_id = insert_done_job(sessions, settings, "dicom")
    deliver_results(settings, sessions, job_id)
    runner = CliRunner()
    home = ["--home", str(settings.home)]

    result = runner.invoke(deliveries_app, ["list", "--state", "dead", *home])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.splitlines()[0])
    assert (row["job_id"], row["kind"], row["state"]) == (job_id, "dicom", "dead")

    assert runner.invoke(deliveries_app, ["resend", *home]).exit_code != 0  # needs a selector
    with StoreSCP(tmp_path / "pacs", port=port):
        result = runner.invoke(deliveries_app, ["resend", "--all-dead", *home])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["state"] == "sent"
    with sessions() as s:
        assert deliveries.counts_by_state(s)["sent"] == 1
        assert s.query(Delivery).count() == 1


@pytest.mark.integration
def test_dead_letter_and_resend_on_postgresql(tmp_path, postgres_url):
    from worker.db.engine import make_engine, make_session_factory
    from worker.db.migrate import upgrade

    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    port = free_port()
    settings = make_settings(tmp_path / "home", database_url=postgres_url, delivery_attempts=2,
                             delivery_backoff_s=0.01, dicom_destinations=f"PACS@127.0.0.1:{port}")
    settings.ensure_folders()
    try:
        job_id = insert_done_job(sessions, settings, "dicom")
        outcome, = deliver_results(settings, sessions, job_id, sleep=lambda s: None)
        assert (outcome.state, outcome.attempts) == ("dead", 2)
        with StoreSCP(tmp_path / "pacs", port=port):
            assert resend(settings, sessions, job_id=job_id)[job_id][0].state == "sent"
    finally:
        engine.dispose()


def test_load_finished_job_reads_the_reported_prediction_in_one_query(migrated_settings, sessions):
    from datetime import timedelta

    from sqlalchemy import event

    from tests.resultgen import probabilities
    from worker.db.integration import DicomInstance
    from worker.db.models import Job, Prediction, Report, utcnow
    from worker.results.finished_job import load_finished_job

    job_id = insert_done_job(sessions, migrated_settings, "dicom", triage=TriageLevel.ROUTINE,
                             melanoma=0.01, predicted_class="nevus")
    with sessions.begin() as s:
        # A later reported prediction (a rerun) wins; a still later shadow one never does.
        for offset, version, shadow, level in ((1, "rerun-2", False, TriageLevel.URGENT),
                                               (2, "shadow-3", True, TriageLevel.SOON)):
            s.add(Prediction(job_id=job_id, model_version=version, shadow=shadow,
                             predicted_class="melanoma", triage_level=level.value, image_usable=True,
                             created_at=utcnow() + timedelta(minutes=offset),
                             **{f"p_{n}": p for n, p in probabilities(0.9).items()}))
        for uid, ae, minutes in (("1.2.3.2", "LATER", 2), ("1.2.3.1", "FIRST", 1), ("1.2.3.3", None, 0)):
            s.add(DicomInstance(sop_instance_uid=uid, job_id=job_id, calling_ae_title=ae,
                                sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.7",
                                received_at=utcnow() + timedelta(minutes=minutes)))
    statements: list[str] = []
    engine = sessions.kw["bind"]
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        with sessions() as s:
            job = load_finished_job(s, job_id)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert len([q for q in statements if q.lstrip().upper().startswith("SELECT")]) == 1
    assert (job.model_version, job.triage, job.melanoma_probability) == ("rerun-2", TriageLevel.URGENT, 0.9)
    assert job.calling_ae_title == "FIRST"
    assert job.metadata.patient_id == "TEST-0001" and job.source_format == "dicom"
    assert job.report_path.exists() and job.finished_at.tzinfo is not None

    with sessions.begin() as s:
        s.query(Report).filter_by(job_id=job_id).delete()
    with sessions() as s:
        assert load_finished_job(s, job_id) is None  # no report: not finished
    other = insert_done_job(sessions, migrated_settings, "jpeg")
    with sessions.begin() as s:
        s.get(Job, other).state = "running"
    with sessions() as s:
        assert load_finished_job(s, other) is None
    with sessions.begin() as s:
        s.get(Job, other).state = "done"
        s.query(Prediction).filter_by(job_id=other).update({"shadow": True})
    with sessions() as s:
        assert load_finished_job(s, other) is None  # only a shadow prediction
