"""One picture, one answer (issue 19): the same JPEG gives the same triage and melanoma
probability within 0.002 whether it is dropped as a file, wrapped in DICOM by dcmtk's
``img2dcm`` and sent with ``storescu``, or uploaded over HTTP. Each door runs in its own home
(the same bytes twice in one home would be one job) with the shipped model, through the
real folder watcher, DICOM receiver and HTTP API; the jobs run through the pipeline.

The picture is a camera-sized JPEG (1,600 x 1,200): it used to be decoded at a reduced
scale as a file but at full size, by another decoder, inside DICOM (0.192 against 0.2015)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from tests.conftest import make_settings
from tests.imagegen import jpeg_bytes, lesion_rgb
from worker.db.models import Job, Prediction
from worker.doors.dicom_receiver import start_dicom_receiver
from worker.doors.http_api import start_http_server
from worker.doors.tokens import create_token
from worker.intake.watcher import IntakeWatcher
from worker.jobs import pipeline
from worker.jobs.runtime import build_runtime
from worker.process.home import prepare

assert all(shutil.which(t) for t in ("img2dcm", "storescu")), "dcmtk is part of the test setup"

TOLERANCE = 0.002


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> tuple[bytes, bytes]:
    """(the JPEG, that JPEG wrapped in DICOM by img2dcm)."""
    folder = tmp_path_factory.mktemp("picture")
    rgb = np.asarray(PILImage.fromarray(lesion_rgb(seed=19)).resize((1600, 1200),
                                                                    PILImage.BICUBIC))
    jpeg = jpeg_bytes(rgb, quality=90)
    (folder / "lesion.jpg").write_bytes(jpeg)
    subprocess.run(["img2dcm", str(folder / "lesion.jpg"), str(folder / "lesion.dcm")],
                   check=True, capture_output=True, timeout=60)
    return jpeg, (folder / "lesion.dcm").read_bytes()


def _runtime(home: Path):
    settings = make_settings(home, dicom_host="127.0.0.1", dicom_port=0, http_host="127.0.0.1",
                             http_port=0, min_free_disk_bytes=0, stable_seconds=0.3)
    prepare(settings)  # folders, schema, the shipped model
    return build_runtime(settings, send=lambda job_id: None)


def _answer(rt, timeout: float = 30) -> tuple[str, float, dict]:
    """Process the home's one job; its triage level, P(melanoma) and probabilities."""
    deadline = time.monotonic() + timeout
    while True:
        with rt.sessions() as s:
            ids = s.scalars(select(Job.id)).all()
        if ids or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [job_id] = ids
    assert pipeline.process_job(rt, job_id) == "done"
    with rt.sessions() as s:
        pred = s.execute(select(Prediction).where(Prediction.job_id == job_id)).scalar_one()
        return pred.triage_level, pred.p_melanoma, pred.probabilities()


def _by_folder(tmp_path: Path, jpeg: bytes):
    rt = _runtime(tmp_path / "folder")
    try:
        watcher = IntakeWatcher(rt.intake, rt.settings.intake_dir, 2)
        (rt.settings.intake_dir / "lesion.jpg").write_bytes(jpeg)
        deadline = time.monotonic() + 20
        while not watcher.scan_once():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        return _answer(rt)
    finally:
        rt.close()


def _by_dicom(tmp_path: Path, dicom: bytes):
    rt = _runtime(tmp_path / "dicom")
    receiver = start_dicom_receiver(rt.settings, rt.intake)
    try:
        source = tmp_path / "wrapped.dcm"
        source.write_bytes(dicom)
        sent = subprocess.run(["storescu", "-xy", "-aec", rt.settings.dicom_ae_title, "127.0.0.1",
                               str(receiver.port), str(source)],
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        return _answer(rt)
    finally:
        receiver.shutdown()
        rt.close()


def _by_http(tmp_path: Path, jpeg: bytes):
    rt = _runtime(tmp_path / "http")
    http = start_http_server(rt.settings, rt.intake)
    try:
        token = create_token(rt.intake.sessions, "parity")
        answer = httpx.post(f"http://127.0.0.1:{http.port}/v1/jobs", timeout=30,
                            headers={"Authorization": f"Bearer {token}"},
                            files={"file": ("lesion.jpg", jpeg, "image/jpeg")},
                            data={"metadata": json.dumps({})})
        assert answer.status_code == 201, answer.text
        return _answer(rt)
    finally:
        http.shutdown()
        rt.close()


def test_the_same_picture_gives_the_same_answer_by_every_door(tmp_path, picture):
    jpeg, dicom = picture
    answers = {"folder": _by_folder(tmp_path, jpeg), "dicom": _by_dicom(tmp_path, dicom),
               "http": _by_http(tmp_path, jpeg)}
    levels = {door: a[0] for door, a in answers.items()}
    assert len(set(levels.values())) == 1, levels
    for door in ("dicom", "http"):
        for cls, p in answers["folder"][2].items():
            assert abs(answers[door][2][cls] - p) <= TOLERANCE, (door, cls, p, answers[door][2][cls])
