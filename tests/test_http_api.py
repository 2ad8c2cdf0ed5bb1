"""The HTTP API through a real uvicorn on a free port (httpx as the peer), the token
commands, and ``worker.client`` in HTTP mode."""

from __future__ import annotations

import hashlib
import json
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from typer.testing import CliRunner

from schemas import CLASS_NAMES, ImageMetadata, JobState, PredictionResult, SourceDoor, TriageLevel
from tests.conftest import make_settings
from worker.client import TriageClient, enqueue
from worker.db import jobs
from worker.db.engine import make_engine, make_session_factory
from worker.db.migrate import upgrade
from worker.db.models import Image, Job, Submission
from worker.doors.http_api import start_http_server
from worker.doors.http_client import ApiError
from worker.doors.tokens import create_token, revoke_token
from worker.intake.admission import Intake


def jpeg(seed: int = 0, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buf = BytesIO()
    PILImage.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


class Api:
    """A server on a free port with its own home; ``sent`` holds the job ids sent to the broker."""

    def __init__(self, tmp_path: Path, **overrides) -> None:
        self.settings = make_settings(tmp_path / "home", http_host="127.0.0.1", http_port=0, **overrides)
        self.settings.ensure_folders()
        upgrade(self.settings.database_url)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = make_session_factory(self.engine)
        self.sent: list[str] = []
        self.token = create_token(self.sessions, "test-his")
        self.server = start_http_server(self.settings, Intake(self.settings, self.sessions, self.sent.append))
        self.url = f"http://127.0.0.1:{self.server.port}"
        self.http = httpx.Client(base_url=self.url, timeout=30,
                                 headers={"Authorization": f"Bearer {self.token}"})

    def post(self, data: bytes, metadata: dict | str | None = None, name: str = "lesion.jpg",
             **kw) -> httpx.Response:
        fields = {}
        if metadata is not None:
            fields["metadata"] = metadata if isinstance(metadata, str) else json.dumps(metadata)
        return self.http.post("/v1/jobs", files={"file": (name, data, "image/jpeg")}, data=fields, **kw)

    def close(self) -> None:
        self.http.close()
        self.server.shutdown()
        self.engine.dispose()


@pytest.fixture
def api(tmp_path):
    a = Api(tmp_path)
    yield a
    a.close()


def test_no_or_bad_token_is_401(api):
    for headers in ({}, {"Authorization": "Bearer mt_not-a-token"}, {"Authorization": "Basic abc"}):
        r = httpx.post(f"{api.url}/v1/jobs", files={"file": ("a.jpg", jpeg())}, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{api.url}/v1/jobs/x").status_code == 401
    revoke_token(api.sessions, "test-his")
    assert api.post(jpeg()).status_code == 401


def test_upload_creates_a_job_in_the_jobs_table(api):
    r = api.post(jpeg(), {"accession_number": "ACC-1", "laterality": "l"})
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    assert r.json()["state"] == "queued"  # admitted, then sent
    assert api.sent == [job_id]
    with api.sessions() as s:
        job = s.get(Job, job_id)
        image = s.get(Image, job.image_id)
        assert job.state == JobState.QUEUED.value
        assert image.source_door == SourceDoor.HTTP.value
        assert image.caller_metadata == {"accession_number": "ACC-1", "laterality": "L"}
        assert s.execute(select(Submission.original_name)).scalar_one() == "lesion.jpg"
    view = api.http.get(f"/v1/jobs/{job_id}").json()
    assert view["state"] == "queued" and view["job_id"] == job_id and "triage" not in view
    # The same content again is the same job: 200, no second message.
    again = api.post(jpeg())
    assert again.status_code == 200 and again.json()["job_id"] == job_id
    assert again.json()["duplicate"] is True and api.sent == [job_id]


def test_idempotency_key(api):
    first = api.post(jpeg(1), headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 201
    replay = api.post(jpeg(1), headers={"Idempotency-Key": "order-42"})
    assert replay.status_code == 200 and replay.json()["job_id"] == first.json()["job_id"]
    other = api.post(jpeg(2), headers={"Idempotency-Key": "order-42"})
    assert other.status_code == 409
    with api.sessions() as s:
        assert s.query(Job).count() == 1  # the conflicting upload was not admitted


def test_not_an_image_is_422_and_recorded(api):
    r = api.post(b"%PDF-1.4 this is not an image", name="letter.pdf")
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "not_an_image" and "not a JPEG, PNG or DICOM" in body["detail"]
    with api.sessions() as s:
        job = s.get(Job, body["job_id"])
        assert job.state == JobState.REJECTED.value and job.error_code == "not_an_image"
    assert list(api.settings.rejected_dir.glob(f"{body['job_id']}__*.json"))
    assert api.sent == []
    view = api.http.get(f"/v1/jobs/{body['job_id']}").json()
    assert view["state"] == "rejected" and view["error_code"] == "not_an_image"


def test_invalid_metadata_is_422_and_nothing_admitted(api):
    for metadata in ("{not json", {"laterality": "sideways"}, {"unknown_key": 1},
                     {"patient_id": "x" * 65}):
        r = api.post(jpeg(), metadata)
        assert r.status_code == 422, metadata
        assert r.json()["code"] == "invalid_metadata"
    assert api.post(jpeg(), {"patient_id": "x" * 64}).status_code == 201
    missing = api.http.post("/v1/jobs", data={"metadata": "{}"}, files={"other": ("a", b"x")})
    assert missing.status_code == 422 and missing.json()["code"] == "missing_file"


def test_too_large_is_413(tmp_path):
    api = Api(tmp_path, max_file_bytes=20_000)
    try:
        big = jpeg(size=256)
        assert 20_000 < len(big) < 256 * 1024
        assert api.post(big).status_code == 413  # file part over the limit
        huge = b"\xff\xd8\xff" + bytes(400_000)
        assert api.post(huge).status_code == 413  # declared body over the limit: not read

        def chunks():
            yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n"
            for _ in range(40):
                yield bytes(16_384)

        chunked = api.http.post("/v1/jobs", content=chunks(),
                                headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert chunked.status_code == 413  # streamed without a length and cut off
        with api.sessions() as s:
            assert s.query(Job).count() == 0
    finally:
        api.close()


def test_backlog_at_limit_is_503(tmp_path):
    api = Api(tmp_path, max_backlog=1)
    try:
        assert api.post(jpeg(1)).status_code == 201
        r = api.post(jpeg(2))
        assert r.status_code == 503 and r.headers["retry-after"]
    finally:
        api.close()


def _finish(api: Api, job_id: str, tmp_path: Path) -> bytes:
    pdf = b"%PDF-1.4\n% a report\n"
    report = tmp_path / "report.pdf"
    report.write_bytes(pdf)
    probabilities = {name: 0.0 for name in CLASS_NAMES}
    probabilities.update(melanoma=0.8, nevus=0.2)
    result = PredictionResult(model_version="v-test", probabilities=probabilities,
                              melanoma_probability=0.8, predicted_class="melanoma",
                              triage=TriageLevel.URGENT)
    with api.sessions.begin() as s:
        assert jobs.complete(s, job_id, ImageMetadata(), {}, result, True, str(report),
                             hashlib.sha256(pdf).hexdigest())
    return pdf


def test_done_job_shows_result_and_report(api, tmp_path):
    job_id = api.post(jpeg()).json()["job_id"]
    assert api.http.get(f"/v1/jobs/{job_id}/report.pdf").status_code == 404
    assert api.http.get(f"/v1/jobs/{job_id}/fhir").status_code == 404  # not done yet
    pdf = _finish(api, job_id, tmp_path)
    view = api.http.get(f"/v1/jobs/{job_id}").json()
    assert view["state"] == "done" and view["triage"] == "urgent"
    assert view["model_version"] == "v-test" and view["probabilities"]["melanoma"] == 0.8
    assert view["finished_at"] and view["created_at"]
    report = api.http.get(f"/v1/jobs/{job_id}/report.pdf")
    assert report.status_code == 200 and report.content == pdf
    assert report.headers["content-type"] == "application/pdf"
    assert api.http.get("/v1/jobs/nope").status_code == 404
    assert api.http.get("/v1/jobs/nope/fhir").status_code == 404
    fhir = api.http.get(f"/v1/jobs/{job_id}/fhir")
    assert fhir.status_code == 200 and fhir.headers["content-type"].startswith("application/fhir+json")
    assert fhir.json()["resourceType"] == "Bundle"
    metrics = httpx.get(f"{api.url}/metrics").text
    assert 'triage_jobs{state="done"} 1.0' in metrics
    assert 'triage_results_total{triage_level="urgent"} 1.0' in metrics
    assert "triage_urgent_rate 1.0" in metrics
    assert 'triage_stage_latency_seconds{quantile="0.5",stage="total"}' in metrics


def test_healthz_reports_each_check(api):
    r = httpx.get(f"{api.url}/healthz")
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and checks["broker"]["ok"]  # SQLite, filesystem broker
    assert not checks["model"]["ok"]  # this home has no model
    assert r.status_code == 503 and r.json()["status"] == "unavailable"


def test_openapi_is_published(api):
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/report.pdf",
            "/v1/jobs/{job_id}/fhir", "/healthz", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(body["schema"]["properties"]) == {"file", "metadata"}


def test_client_in_http_mode(api, tmp_path):
    path = tmp_path / "lesion.jpg"
    path.write_bytes(jpeg(7))
    job_id = enqueue(path, {"body_site": "back"}, url=api.url, token=api.token)
    assert api.sent == [job_id]
    with TriageClient(url=api.url, token=api.token) as client:
        again = client.submit(path)
        assert again.job_id == job_id and again.duplicate
        rejected = client.submit(b"plain text, no image")
        assert rejected.state == JobState.REJECTED and "not a JPEG" in rejected.reason
        assert client.job(job_id)["state"] == "queued"
    with pytest.raises(ApiError) as err:
        enqueue(path, url=api.url, token="mt_wrong")
    assert err.value.status_code == 401


def test_tokens_commands(tmp_path):
    from worker.cli.main import app

    home = tmp_path / "fresh-home"
    runner = CliRunner()
    created = runner.invoke(app, ["tokens", "create", "ris", "--home", str(home)])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("mt_") and " " not in token
    assert runner.invoke(app, ["tokens", "create", "ris", "--home", str(home)]).exit_code == 1
    listed = runner.invoke(app, ["tokens", "list", "--home", str(home), "--json"])
    assert json.loads(listed.stdout)[0]["name"] == "ris" and token not in listed.stdout
    engine = make_engine(make_settings(home).database_url)
    try:
        from worker.doors.tokens import verify_token

        sessions = make_session_factory(engine)
        assert verify_token(sessions, token) == "ris"
        stored = (home / "triage.db").read_bytes()
        assert token.encode() not in stored  # only the hash is kept
        assert runner.invoke(app, ["tokens", "revoke", "ris", "--home", str(home)]).exit_code == 0
        assert verify_token(sessions, token) is None
    finally:
        engine.dispose()


@pytest.mark.integration
def test_on_postgresql_and_redis(tmp_path, postgres_url, redis_url):
    """Production services: tokens, idempotency keys and length limits as PostgreSQL enforces them."""
    api = Api(tmp_path, database_url=postgres_url, broker_url=redis_url)
    try:
        key = "k" * 255
        first = api.post(jpeg(3), {"patient_id": "p" * 64}, headers={"Idempotency-Key": key})
        assert first.status_code == 201, first.text
        again = api.post(jpeg(3), {"patient_id": "p" * 64}, headers={"Idempotency-Key": key})
        assert again.json()["job_id"] == first.json()["job_id"]
        assert api.post(jpeg(4), headers={"Idempotency-Key": key}).status_code == 409
        assert api.post(b"not an image").status_code == 422
        health = httpx.get(f"{api.url}/healthz").json()["checks"]
        assert health["database"]["ok"] and health["broker"]["ok"]
    finally:
        api.close()
