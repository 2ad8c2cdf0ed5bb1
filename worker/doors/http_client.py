"""The hospital side of the HTTP API: a URL and a token, no database or broker credentials.

Used by ``worker.client.TriageClient(url=..., token=...)``; usable on its own:

    with HttpJobsClient("https://triage.example.org", token) as api:
        job_id = api.submit(Path("lesion.dcm").read_bytes(), {"accession_number": "ACC1"}).job_id
        result = api.wait(job_id)             # {"state": "done", "triage": "urgent", ...}
        pdf = api.report_pdf(job_id)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx

from schemas import ImageMetadata, JobState


class ApiError(RuntimeError):
    """An answer other than a job: 401, 404, 409, 413, 503... with the server's reason."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True)
class Submission:
    """What ``POST /v1/jobs`` answered (same fields as ``worker.intake.admission.Admission``)."""

    job_id: str
    state: JobState
    duplicate: bool = False
    reason: str | None = None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return detail if isinstance(detail, str) else (json.dumps(detail) if detail else response.reason_phrase)


class HttpJobsClient:
    """One HTTP connection pool; reuse it for many images."""

    def __init__(self, url: str, token: str, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {token}"})

    def submit(self, data: bytes, metadata: ImageMetadata | dict | None = None,
               original_name: str | None = None, idempotency_key: str | None = None) -> Submission:
        """Upload one image; a rejected image is a Submission in state ``rejected`` with its reason."""
        if isinstance(metadata, dict):
            metadata = ImageMetadata.model_validate(metadata)
        fields = {"metadata": metadata.model_dump_json(exclude_none=True)} if metadata else {}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        files = {"file": (original_name or "image", data, "application/octet-stream")}
        response = self._http.post("/v1/jobs", data=fields, files=files, headers=headers)
        is_json = response.headers.get("content-type", "").startswith("application/json")
        body = response.json() if is_json else {}
        if response.status_code in (200, 201) or (response.status_code == 422 and "job_id" in body):
            return Submission(body["job_id"], JobState(body["state"]), bool(body.get("duplicate")),
                              body.get("detail"))
        raise ApiError(response.status_code, _detail(response))

    def job(self, job_id: str) -> dict:
        """``GET /v1/jobs/{job_id}``: state, times and, once done, the result."""
        return self._get(f"/v1/jobs/{job_id}").json()

    def report_pdf(self, job_id: str) -> bytes:
        return self._get(f"/v1/jobs/{job_id}/report.pdf").content

    def fhir_bundle(self, job_id: str) -> dict:
        return self._get(f"/v1/jobs/{job_id}/fhir").json()

    def wait(self, job_id: str, timeout: float = 300.0, poll: float = 1.0) -> dict:
        """Poll until the job is done, rejected or failed; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.job(job_id)
            if JobState(view["state"]).is_final:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {view['state']} after {timeout} s")
            time.sleep(poll)

    def _get(self, path: str) -> httpx.Response:
        response = self._http.get(path)
        if response.status_code != 200:
            raise ApiError(response.status_code, _detail(response))
        return response

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpJobsClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
