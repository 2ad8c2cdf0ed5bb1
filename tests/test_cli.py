"""The command line as a hospital integrator uses it, and the import-time contract of the
worker modules (TensorFlow must never be imported before Celery forks)."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from tests.imagegen import dicom_bytes, lesion_rgb
from worker.cli import app


def test_enqueue_command_records_metadata_that_wins_over_tags(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TRIAGE_HOME", str(home))
    image = tmp_path / "lesion.dcm"
    image.write_bytes(dicom_bytes(lesion_rgb(seed=31), metadata={"PatientID": "FROM-TAG"}))
    runner = CliRunner()
    bad = runner.invoke(app, ["enqueue", str(image), "--laterality", "Q", "--home", str(home)])
    assert bad.exit_code != 0 and "laterality" in bad.output
    ok = runner.invoke(app, ["enqueue", str(image), "--patient-id", "CLI-1", "--accession", "A1",
                             "--laterality", "l", "--body-site", "left forearm", "--home", str(home)])
    assert ok.exit_code == 0, ok.output
    first = json.loads(ok.output.strip().splitlines()[-1])
    assert first["state"] == "received" and not first["duplicate"]
    again = runner.invoke(app, ["enqueue", str(image), "--home", str(home)])
    second = json.loads(again.output.strip().splitlines()[-1])
    assert second["job_id"] == first["job_id"] and second["duplicate"]

    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{home / 'triage.db'}")
    with engine.connect() as conn:
        caller = conn.execute(text("select caller_metadata from images")).scalar_one()
    engine.dispose()
    assert json.loads(caller) == {"patient_id": "CLI-1", "accession_number": "A1",
                                  "laterality": "L", "body_site": "left forearm"}


def test_worker_modules_do_not_import_tensorflow():
    code = ("import sys, worker.celery_app, worker.tasks, worker.client, worker.cli, schemas; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_schemas_import_without_celery_or_sqlalchemy():
    code = ("import sys, schemas; "
            "print(sorted(m for m in ('celery', 'sqlalchemy', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_predict_walks_folders_and_reports_rejections(tmp_path, tiny_model_dir):
    from tests.imagegen import jpeg_bytes
    from worker.model_store import ModelStore

    store = ModelStore(tmp_path / "store")
    store.set_current(store.add_version(tiny_model_dir))
    images = tmp_path / "images"
    (images / "clinic").mkdir(parents=True)
    (images / "clinic" / "a.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=50)))
    (images / "b.dcm").write_bytes(dicom_bytes(lesion_rgb(seed=51)))
    (images / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(app, ["predict", str(images), "--store", str(store.root)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images.rglob("*") if p.is_file())
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert by_name["notes.txt"]["error"] == "not_an_image"
    for name in ("a.jpg", "b.dcm"):
        assert by_name[name]["model_version"] == "tiny-1" and by_name[name]["triage"]
        assert abs(sum(by_name[name]["probabilities"].values()) - 1) < 1e-6
