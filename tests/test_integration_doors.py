"""Issue 11 end to end: both doors, a real Celery worker on Redis and PostgreSQL, and a
real PACS (dcmtk's storescp). A dermoscopy DICOM sent with dcmtk's storescu comes back as
an Encapsulated PDF and an SR in the input's study, both valid per dciodvfy; an HTTP upload
with a token becomes a job whose report and FHIR bundle can be fetched."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from celery.contrib.testing.worker import start_worker
from pydicom import dcmread
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from schemas import DeliveryState, JobState
from tests.conftest import REDIS_URL, make_settings
from tests.imagegen import dicom_bytes, jpeg_bytes, lesion_rgb
from tests.resultgen import StoreSCP
from worker.classify.export import ensure_export
from worker.messaging.celery_app import process_sender
from worker.messaging.celery_worker import create_worker_app
from worker.db import deliveries
from worker.db.migrate import upgrade
from worker.db.models import Job
from worker.doors.dicom_receiver import start_dicom_receiver
from worker.doors.http_api import start_http_server
from worker.doors.tokens import create_token
from worker.intake.admission import open_intake
from worker.messaging.queues import DELIVER_QUEUE, TRIAGE_QUEUE
from worker.results.fhir import fhir_outbox
from worker.store.versions import ModelStore

pytestmark = pytest.mark.integration
# dcmtk and dicom3tools are part of the test setup (scripts/setup.sh): fail, never skip.
assert all(shutil.which(t) for t in ("storescu", "storescp", "dciodvfy")), \
    "dcmtk and dicom3tools are installed by scripts/setup.sh"

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
DERMOSCOPY = "1.2.840.10008.5.1.4.1.1.77.1.7"
#: Its own Redis database: a parallel run of another worker test must not take our messages.
DOORS_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/13"


@pytest.fixture
def redis_db():
    import redis

    client = redis.Redis.from_url(DOORS_REDIS_URL)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - same rule as conftest's redis_url
        pytest.fail(f"Redis is required for integration tests and is unreachable: {exc}")
    client.flushdb()
    yield DOORS_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def hospital(tmp_path, postgres_url, redis_db, tiny_model_dir):
    """Receiver, HTTP API and a worker consuming "triage" and "deliver"; a PACS to send to."""
    with StoreSCP(tmp_path / "pacs") as pacs:
        settings = make_settings(
            tmp_path / "home", database_url=postgres_url, broker_url=redis_db,
            dicom_host="127.0.0.1", dicom_port=0, http_host="127.0.0.1", http_port=0,
            dicom_destinations=pacs.destination, delivery_backoff_s=0.1, delivery_timeout_s=10,
            delivery_attempts=2, min_free_disk_bytes=0)
        settings.ensure_folders()
        upgrade(settings.database_url)
        store = ModelStore(settings.model_store_dir, export=ensure_export)
        store.set_current(store.add_version(tiny_model_dir))
        app = create_worker_app(settings)
        intake = open_intake(settings, process_sender(app))
        receiver = start_dicom_receiver(settings, intake)
        http = start_http_server(settings, intake)
        try:
            with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30,
                              queues=[TRIAGE_QUEUE, DELIVER_QUEUE]):
                yield settings, intake, receiver.port, http.port, pacs
        finally:
            http.shutdown()
            receiver.shutdown()
            intake.close()


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.strip().startswith("Error")]


def test_dicom_and_http_doors_end_to_end_through_a_real_worker(hospital, tmp_path):
    settings, intake, dicom_port, http_port, pacs = hospital
    study_uid, sop_uid = generate_uid(), generate_uid()
    source = tmp_path / "dermoscopy.dcm"
    source.write_bytes(dicom_bytes(
        lesion_rgb(seed=31), JPEGBaseline8Bit, "YBR_FULL_422", sop_class=DERMOSCOPY,
        metadata={"StudyInstanceUID": study_uid, "SeriesInstanceUID": generate_uid(),
                  "SOPInstanceUID": sop_uid, "PatientID": "DOORS-1"}))

    # DICOM in: storescu proposing JPEG baseline for the file's own SOP class.
    sent = subprocess.run(["storescu", "-R", "-xy", "-aet", "CAMERA", "-aec", settings.dicom_ae_title,
                           "127.0.0.1", str(dicom_port), str(source)],
                          capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    # HTTP in, meanwhile: a token, an upload, the job id back.
    token = create_token(intake.sessions, "integration-test")
    base = f"http://127.0.0.1:{http_port}"
    headers = {"Authorization": f"Bearer {token}"}
    answer = httpx.post(f"{base}/v1/jobs", headers=headers, timeout=30,
                        files={"file": ("lesion.jpg", jpeg_bytes(lesion_rgb(seed=32)), "image/jpeg")},
                        data={"metadata": json.dumps({"patient_id": "DOORS-2"})})
    assert answer.status_code == 201, answer.text
    http_job = answer.json()["job_id"]

    # DICOM out: the PDF and the SR reach the PACS, in the input's study (the HTTP job's
    # results, a new study of their own, may arrive there too, before or after them).
    def in_study() -> list[Path]:
        found = []
        for p in pacs.received():
            try:
                if dcmread(p).StudyInstanceUID == study_uid:
                    found.append(p)
            except Exception:  # noqa: BLE001 - storescp is still writing it: the next look
                continue
        return found

    received = _wait(lambda: len(in_study()) >= 2 and in_study(), 120, "the result objects at storescp")
    datasets = {dcmread(p).SOPClassUID: (p, dcmread(p)) for p in received}
    assert set(datasets) == {ENCAPSULATED_PDF, COMPREHENSIVE_SR}
    for path, ds in datasets.values():
        assert ds.StudyInstanceUID == study_uid
        assert ds.PatientID == "DOORS-1"
        assert _dciodvfy_errors(path) == [], path.name
    with intake.sessions() as s:
        (dicom_job,) = [j.id for j in s.query(Job).all() if j.id != http_job]
        rows = deliveries.for_job(s, dicom_job)
        assert [(r.kind, r.destination, r.state) for r in rows] == [
            ("dicom", pacs.destination, DeliveryState.SENT.value)]

    # HTTP out: the job is done; its report and FHIR bundle can be fetched.
    job = _wait(lambda: (j := httpx.get(f"{base}/v1/jobs/{http_job}", headers=headers).json())
                ["state"] in {s.value for s in JobState if s.is_final} and j, 120, "the HTTP job")
    assert job["state"] == JobState.DONE.value and job["triage"]
    report = httpx.get(f"{base}/v1/jobs/{http_job}/report.pdf", headers=headers)
    assert report.status_code == 200 and report.content.startswith(b"%PDF")
    bundle = httpx.get(f"{base}/v1/jobs/{http_job}/fhir", headers=headers).json()
    assert bundle["resourceType"] == "Bundle"
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {"DiagnosticReport", "Observation"}
    # The deliver task ran for both jobs: each has its FHIR outbox copy.
    _wait(lambda: all((fhir_outbox(settings) / f"{j}.json").exists() for j in (dicom_job, http_job)),
          60, "the FHIR outbox copies")
