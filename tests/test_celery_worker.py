"""A real Celery worker (in a thread) against the real Redis broker and PostgreSQL."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import func, select

from schemas import JobState, SourceDoor
from tests.conftest import make_settings
from tests.imagegen import dicom_bytes, garbage_bytes, lesion_rgb, truncated_dicom_bytes
from worker.classify.export import ensure_export
from worker.jobs import reconciler
from worker.messaging.celery_worker import create_worker_app
from worker.client import TriageClient, enqueue
from worker.db.migrate import upgrade
from worker.db.models import Job, Prediction, Submission
from worker.messaging.queues import PROCESS_TASK, TRIAGE_QUEUE
from worker.store.versions import ModelStore

pytestmark = pytest.mark.integration


@pytest.fixture
def prod_settings(tmp_path, postgres_url, redis_url, tiny_model_dir):
    settings = make_settings(tmp_path / "home", database_url=postgres_url, broker_url=redis_url)
    settings.ensure_folders()
    upgrade(settings.database_url)
    store = ModelStore(settings.model_store_dir, export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    return settings


@pytest.fixture
def worker(prod_settings):
    app = create_worker_app(prod_settings)
    with start_worker(app, pool="solo", perform_ping_check=False, queues=[TRIAGE_QUEUE],
                      shutdown_timeout=30):
        yield app


def _state(client: TriageClient, job_id: str) -> str:
    with client.intake.sessions() as s:
        return s.get(Job, job_id).state


def _wait_final(client: TriageClient, job_id: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(client, job_id)
        if JobState(state).is_final:
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {state} after {timeout}s")


def test_hospital_enqueue_runs_on_a_real_worker(prod_settings, worker):
    data = dicom_bytes(lesion_rgb(seed=21), metadata={"PatientID": "FILE-ID"})
    job_id = enqueue(data, {"patient_id": "HIS-123", "accession_number": "HIS-ACC"},
                     settings=prod_settings)
    with TriageClient(prod_settings) as client:
        assert _wait_final(client, job_id) == "done"
        with client.intake.sessions() as s:
            job = s.get(Job, job_id)
            assert job.image.patient_id == "HIS-123"  # caller wins over the file's tag
            assert job.report.path.endswith(f"HIS-ACC_{job_id}.pdf")
            assert s.scalar(select(func.count()).select_from(Prediction)) == 1
        again = client.submit(data, door=SourceDoor.API)
        assert again.duplicate and again.job_id == job_id
        bad = client.submit(truncated_dicom_bytes(), original_name="cut.dcm")
        junk = client.submit(garbage_bytes(), original_name="junk.bin")
        assert _wait_final(client, bad.job_id) == "rejected"
        assert junk.state == JobState.REJECTED
        with client.intake.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Job)) == 3
            assert s.scalar(select(func.count()).select_from(Submission)) == 4
        assert (prod_settings.rejected_dir / f"{bad.job_id}__cut.dcm.json").exists()


def test_a_message_the_broker_lost_is_recovered_by_the_reconciler(prod_settings, worker):
    with TriageClient(prod_settings) as client:
        client.intake.send = lambda job_id: None  # the broker "accepted" and then lost it
        job_id = client.submit(dicom_bytes(lesion_rgb(seed=22))).job_id
        assert _state(client, job_id) == "queued"
        time.sleep(1.5)
        assert _state(client, job_id) == "queued"  # nobody will ever deliver it
        client.intake.send = lambda j: worker.send_task(PROCESS_TASK, args=[j], queue=TRIAGE_QUEUE)
        later = datetime.now(timezone.utc) + timedelta(seconds=prod_settings.stale_after_s + 1)
        sent = reconciler.reconcile(client.intake.sessions, client.intake.enqueue,
                                    timedelta(seconds=30), timedelta(seconds=prod_settings.stale_after_s),
                                    now=later)
        assert sent == 1
        assert _wait_final(client, job_id) == "done"


def test_a_job_waits_for_a_model_instead_of_failing(prod_settings, worker):
    store = ModelStore(prod_settings.model_store_dir, export=ensure_export)
    version = store.current_version()
    (store.root / "CURRENT").unlink()  # an operator emptied the pointer
    with TriageClient(prod_settings) as client:
        job_id = client.submit(dicom_bytes(lesion_rgb(seed=23))).job_id
        time.sleep(4)
        with client.intake.sessions() as s:
            job = s.get(Job, job_id)
            assert job.state in ("queued", "running") and job.attempts <= 1
        store.set_current(version)
        assert _wait_final(client, job_id, timeout=120) == "done"


def test_a_retrain_message_delivered_twice_runs_once(prod_settings):
    """Acknowledged on receipt (a retraining outlives Redis's visibility timeout), and its
    task id claimed in the database: the same message again does nothing."""
    from worker.db.models import RetrainRun
    from worker.db.task_claims import claim_once
    from worker.messaging.queues import RETRAIN_TASK
    from worker.messaging.tasks import runtime_for

    app = create_worker_app(prod_settings)
    task = app.tasks[RETRAIN_TASK]
    assert task.acks_late is False
    sessions = runtime_for(app).sessions
    assert claim_once(sessions, "retrain-message-1", RETRAIN_TASK)  # its first delivery
    assert task.apply(args=["schedule"], task_id="retrain-message-1").get() == "duplicate"
    assert not claim_once(sessions, "retrain-message-1", RETRAIN_TASK)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(RetrainRun)) == 0
