"""End to end, as staff use it: ``melanoma-triage run`` as a real process tree (watcher,
Celery worker process, beat), images copied into intake/, PDFs read back with pdftotext.

Parametrised over the embedded defaults (SQLite + filesystem broker) and production
components (PostgreSQL + Redis, real connections)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from schemas import TriageLevel
from tests.imagegen import dicom_bytes, jpeg_bytes, lesion_rgb, truncated_dicom_bytes
from worker.classify.export import ensure_export
from worker.db.models import Image, Job, Prediction, Report
from worker.store.versions import ModelStore

pytestmark = pytest.mark.integration


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _pdftotext(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture(params=["embedded", "redis+postgres"])
def backend_env(request) -> dict[str, str]:
    if request.param == "embedded":
        return {}
    return {
        "TRIAGE_DATABASE_URL": request.getfixturevalue("postgres_url"),
        "TRIAGE_BROKER_URL": request.getfixturevalue("redis_url"),
    }


def test_run_turns_intake_drops_into_reports_and_rejections(tmp_path, tiny_model_dir, backend_env):
    home = tmp_path / "home"
    store = ModelStore(home / "model_store", export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    env = dict(os.environ, TRIAGE_POLL_INTERVAL_S="0.2", TRIAGE_WORKER_CONCURRENCY="1",
               TRIAGE_STABLE_SECONDS="1", TRIAGE_INCOMPLETE_GRACE_SECONDS="3",
               **backend_env)
    log_path = tmp_path / "run.log"  # a file, not a pipe: an unread pipe would block the tree
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--home", str(home)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        intake = home / "intake"
        _wait_for(intake.is_dir, 60, "the intake folder")
        dicom = dicom_bytes(lesion_rgb(seed=7), metadata={"PatientID": "PAT-E2E-42",
                                                          "AccessionNumber": "ACC-E2E-1"})
        (intake / "lesion one.dcm.part").write_bytes(dicom)
        (intake / "lesion one.dcm.part").rename(intake / "lesion one.dcm")
        (intake / "photo.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=8)))
        (intake / "broken.dcm").write_bytes(truncated_dicom_bytes())
        (intake / "again.dcm").write_bytes(dicom)  # same content: one job, a duplicate

        reports = home / "reports"
        pdfs = _wait_for(lambda: sorted(reports.glob("*.pdf")) if len(list(reports.glob("*.pdf"))) >= 2
                         else None, 180, "two PDF reports")
        sidecars = _wait_for(lambda: list((home / "rejected").glob("*__broken.dcm.json")), 60,
                             "the rejection sidecar")
    except AssertionError:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        print(log_path.read_text()[-20000:])
        raise
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    out = log_path.read_text()
    assert proc.returncode == 0, out[-5000:]
    assert "melanoma-triage stopped." in out

    dicom_pdf = [p for p in pdfs if p.name.startswith("ACC-E2E-1_")]
    assert len(dicom_pdf) == 1
    text = _pdftotext(dicom_pdf[0])
    assert "PAT-E2E-42" in text and "ACC-E2E-1" in text

    db_url = backend_env.get("TRIAGE_DATABASE_URL", f"sqlite:///{home / 'triage.db'}")
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Job.state, Job.error_code, Prediction.triage_level, Prediction.model_version,
                   Report.path, Image.patient_id)
            .join(Image, Image.id == Job.image_id)
            .outerjoin(Prediction, Prediction.job_id == Job.id)
            .outerjoin(Report, Report.job_id == Job.id)
        ).all()
    engine.dispose()
    assert sorted(r.state for r in rows) == ["done", "done", "rejected"]  # 4 drops, 3 jobs
    for row in rows:
        if row.state == "done":
            assert row.model_version == "tiny-1"
            assert TriageLevel(row.triage_level).wording.split(" - ")[0] in _pdftotext(Path(row.path))
    done_dicom = next(r for r in rows if r.patient_id == "PAT-E2E-42")
    assert done_dicom.path == str(dicom_pdf[0])
    info = json.loads(sidecars[0].read_text())
    assert info["code"].startswith("dicom_") or info["code"] == "truncated"
    assert info["reason"]
    assert not [p for p in (home / "intake").rglob("*") if p.is_file()]  # nothing left behind
    assert sorted(os.listdir(tmp_path)) == ["home", "run.log"]  # everything under --home
