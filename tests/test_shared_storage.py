"""TRIAGE_STORAGE=database against the real PostgreSQL: two "hosts" with separate homes share
nothing but the database. Host A admits (and serves over HTTP), host B triages; no file of one
home is read by the other."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import select

from schemas import JobState, SourceDoor
from tests.conftest import make_settings
from tests.imagegen import jpeg_bytes, lesion_rgb, truncated_dicom_bytes
from worker.classify.export import ensure_export
from worker.db.engine import make_engine, make_session_factory
from worker.db.migrate import upgrade
from worker.db.models import Blob, Image, Job, Report
from worker.doors.http_api import start_http_server
from worker.doors.tokens import create_token
from worker.intake.admission import Intake
from worker.jobs import pipeline
from worker.jobs.runtime import build_runtime
from worker.results.fhir import fhir_bundle_for_job
from worker.storage import model_sync
from worker.storage.blobs import StoredFile, blob_index
from worker.store.versions import ModelStore


def _files(folder) -> list:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")] if folder.exists() else []


@pytest.fixture
def hosts(tmp_path, postgres_url, tiny_model_dir):
    """Settings of host A (doors, with the model store it seeded) and host B (an empty home)."""
    a = make_settings(tmp_path / "a", database_url=postgres_url, storage="database",
                      http_host="127.0.0.1", http_port=0)
    b = make_settings(tmp_path / "b", database_url=postgres_url, storage="database",
                      reports_export_dir=tmp_path / "b-export")
    for s in (a, b):
        s.ensure_folders()
    upgrade(postgres_url)
    store = ModelStore(a.model_store_dir, export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    engine = make_engine(postgres_url)
    model_sync.publish(a.model_store_dir, engine)
    yield a, b, engine
    engine.dispose()


def test_host_b_triages_what_host_a_admitted_and_a_serves_the_report(hosts):
    a, b, engine = hosts
    sessions = make_session_factory(engine)
    token = create_token(sessions, "his")
    server = start_http_server(a, Intake(a, sessions, lambda job_id: None))
    rt = build_runtime(b, send=lambda job_id: None)
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
        r = http.post("/v1/jobs", files={"file": ("lesion.jpg", jpeg_bytes(lesion_rgb(seed=3)), "image/jpeg")},
                      data={"metadata": json.dumps({"accession_number": "ACC-22"})})
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        assert pipeline.process_job(rt, job_id) == "done"  # host B: its model came from the database

        with sessions() as s:
            image = s.get(Job, job_id).image
            report = s.execute(select(Report).where(Report.job_id == job_id)).scalar_one()
        assert image.archive_path.startswith("db:archive/") and report.path.startswith("db:reports/")
        # Nothing on the disk of either host but B's model cache and the export copy.
        assert _files(a.archive_dir) == [] and _files(b.archive_dir) == []
        assert _files(a.reports_dir) == [] and _files(b.reports_dir) == []
        assert [p.name for p in _files(b.reports_export_dir)] == [report.path.rsplit("/", 1)[1]]
        assert not list((b.home / "spool").glob("*"))  # the pending PDF is gone
        assert ModelStore(b.model_store_dir).current_version() == "tiny-1"

        pdf = http.get(f"/v1/jobs/{job_id}/report.pdf")  # host A serves B's report
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        assert pdf.content == StoredFile(report.path, engine).read_bytes()
        bundle = fhir_bundle_for_job(sessions, a, job_id)
        assert bundle is not None and bundle["type"] == "collection"
    finally:
        server.shutdown()
        rt.close()


def test_rejection_is_kept_in_the_database(hosts):
    a, b, engine = hosts
    rt = build_runtime(b, send=lambda job_id: None)
    try:
        intake = Intake(a, make_session_factory(engine), lambda job_id: None)
        job_id = intake.admit_bytes(truncated_dicom_bytes(), SourceDoor.API, None, "cut.dcm").job_id
        assert pipeline.process_job(rt, job_id) == "rejected"
        keys = blob_index(engine, f"rejected/{job_id}__")
        assert sorted(keys) == [f"rejected/{job_id}__cut.dcm", f"rejected/{job_id}__cut.dcm.json"]
        with make_session_factory(engine)() as s:
            sidecar = json.loads(s.get(Blob, f"rejected/{job_id}__cut.dcm.json").data)
            job = s.get(Job, job_id)
        assert sidecar["code"] == job.error_code and job.state == JobState.REJECTED.value
        assert rt.storage.has_rejection(job_id) and not rt.storage.has_rejection("0" * 32)
        assert _files(a.rejected_dir) == [] and _files(b.rejected_dir) == []
    finally:
        rt.close()


def test_a_report_refused_by_the_database_leaves_no_blob(hosts, monkeypatch):
    """The report blob is written in the transaction of the job's result rows."""
    a, b, engine = hosts
    rt = build_runtime(b, send=lambda job_id: None)
    try:
        job_id = rt.intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=9)), SourceDoor.API, None, "x.jpg").job_id

        def refuse(*args, **kwargs):
            raise RuntimeError("the database refused the rows")

        original = rt.storage.place_report

        def place_then_refuse(session, pending, location):
            original(session, pending, location)
            session.flush()
            refuse()

        monkeypatch.setattr(rt.storage, "place_report", place_then_refuse)
        with pytest.raises(RuntimeError):
            pipeline.process_job(rt, job_id)
        assert blob_index(engine, "reports/") == {}
        monkeypatch.undo()
        with rt.sessions.begin() as s:  # the next attempt may start at once (no live lease)
            s.get(Job, job_id).lease_expires_at = None
        assert pipeline.process_job(rt, job_id) == "done"
        assert len(blob_index(engine, "reports/")) == 1
    finally:
        rt.close()


def test_a_pointer_change_on_one_host_reaches_the_other_hosts_cache(hosts):
    a, b, engine = hosts
    model_sync.pull(b.model_store_dir, engine)
    assert ModelStore(b.model_store_dir).current_version() == "tiny-1"
    (a.model_store_dir / "CURRENT").write_text("")  # an operator emptied the pointer on A
    assert model_sync.publish(a.model_store_dir, engine) == 1
    # B's own stale copy is never published over A's change.
    assert model_sync.publish(b.model_store_dir, engine) == 0
    model_sync.pull(b.model_store_dir, engine)
    assert ModelStore(b.model_store_dir).current_version() is None
