"""LiteRT export of a model-store version, and the TensorFlow-free runtime that serves it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.modelgen import write_tiny_version
from worker.classify.export import ensure_export
from worker.errors import ModelNotAvailable

import ai_edge_litert  # noqa: E402,F401  (the [serve] extra: a missing runtime fails, not skips)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from worker.classify.export import export_version

    vdir = write_tiny_version(tmp_path_factory.mktemp("store") / "tiny-1")
    export_version(vdir)
    return vdir


def _keras_sha(vdir) -> str:
    return json.loads((vdir / "model.json").read_text())["sha256"]


def test_export_records_hashes_and_matches_keras(exported):
    import keras

    from worker.classify.export import probe_batch
    from worker.classify.runtime_litert import LiteRTModel

    record = json.loads((exported / "serving.json").read_text())
    assert record["source_sha256"] == _keras_sha(exported)
    assert record["probe_max_abs_logit_delta"] < 1e-4
    model = LiteRTModel.from_version_dir(exported, _keras_sha(exported))
    x = probe_batch(model.input_size, n=3, seed=7)
    expected = np.asarray(keras.saving.load_model(exported / "model.keras", compile=False)(x))
    np.testing.assert_allclose(model.logits(x), expected, atol=1e-4)  # a batch of 3
    np.testing.assert_allclose(model.logits(x[0]), expected[:1], atol=1e-4)  # then one image


def test_export_is_idempotent(exported):
    from worker.classify.export import export_version

    before = (exported / "serving.json").read_bytes()
    export_version(exported)
    assert (exported / "serving.json").read_bytes() == before


def test_runtime_refuses_a_changed_or_foreign_export(exported, tmp_path):
    import shutil

    from worker.classify.runtime_litert import LiteRTModel

    with pytest.raises(ModelNotAvailable, match="different model.keras"):
        LiteRTModel.from_version_dir(exported, "0" * 64)
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    data = bytearray((copy / "model.tflite").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(ModelNotAvailable, match="sha256 mismatch"):
        LiteRTModel.from_version_dir(copy, _keras_sha(copy))


def test_serving_imports_no_tensorflow(exported):
    code = (
        "import sys; from worker.classify.runtime_litert import LiteRTModel; "
        f"m = LiteRTModel.from_version_dir({str(exported)!r}, {_keras_sha(exported)!r}); m.warm_up(); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


WORKER_JOB = """
import sys
from pathlib import Path
import worker.messaging.celery_worker, worker.messaging.tasks  # what `celery -A worker.messaging.celery_worker:app` imports
from schemas import SourceDoor
from tests.imagegen import dicom_bytes, jpeg_bytes, lesion_rgb
from worker.jobs import pipeline
from worker.jobs.runtime import build_runtime
from worker.settings import Settings

rt = build_runtime(Settings(home=Path(sys.argv[1])), send=lambda job_id: None)
assert rt.models.warm(), "model not warmed"
for name, data in [("a.jpg", jpeg_bytes(lesion_rgb((1200, 1600)))),
                   ("b.dcm", dicom_bytes(lesion_rgb((450, 600), seed=3)))]:
    job_id = rt.intake.admit_bytes(data, SourceDoor.API, original_name=name).job_id
    assert pipeline.process_job(rt, job_id) == "done"
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "tf_keras"})
assert not heavy, f"a serving worker imported {heavy}"
rt.close()
"""


def test_a_worker_process_handling_jobs_never_imports_tensorflow(tmp_path, tiny_model_dir):
    """The serving path end to end (warm-up, decode, classify, PDF, database) in a fresh
    process, as a prefork child runs it: TensorFlow and Keras stay out."""
    from pathlib import Path

    from worker.db.migrate import upgrade
    from worker.settings import Settings
    from worker.store.versions import ModelStore

    settings = Settings(home=tmp_path / "home")
    settings.ensure_folders()
    upgrade(settings.database_url)
    store = ModelStore(settings.model_store_dir, export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))  # exported on the way in
    assert (store.version_dir("tiny-1") / "model.tflite").is_file()
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", WORKER_JOB, str(settings.home)], check=True,
                   timeout=300, cwd=root)
