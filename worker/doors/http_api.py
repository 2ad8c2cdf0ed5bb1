"""The HTTP door (FastAPI): submit an image, follow its job, fetch its report.

Routes (OpenAPI at ``/openapi.json``, browsable at ``/docs``):

* ``POST /v1/jobs`` multipart ``file`` + optional ``metadata`` (JSON object, the keys of
  ``schemas.ImageMetadata``), optional ``Idempotency-Key`` header -> 201 new job, 200
  existing job (same content, or same key and same request), 409 same key with another
  request, 413 too large, 422 not an image (recorded as a rejected job, like any other
  door's rejection) or invalid metadata, 503 disk under the floor or backlog at its limit;
* ``GET /v1/jobs/{job_id}``, ``/v1/jobs/{job_id}/report.pdf``, ``/v1/jobs/{job_id}/fhir``;
* ``GET /healthz`` and ``GET /metrics``: no token, no patient data.

Every ``/v1`` route needs ``Authorization: Bearer <token>`` (``melanoma-triage tokens``).
A ``submit`` token submits and reads only its own jobs (another job is 404 to it); a
``read`` token reads every job and submits none (403); an ``admin`` token does both.
An upload larger than ``max_file_bytes`` is refused with 413 before it is read to the end,
so it is not archived or recorded: we never held the image.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas import ImageMetadata, JobState, RejectionReason, SourceDoor
from worker.messaging.celery_app import broker_connection_check
from worker.messaging.celery_app import create_app as create_celery_app
from worker.db.integration import IdempotencyKey
from worker.db.models import Image, Job
from worker.doors.capacity import refusal
from worker.doors.health import check_health
from worker.doors.job_view import job_links, job_view
from worker.doors.metrics import render_metrics
from worker.doors.tokens import Caller, may_read, record_owner, verify_caller
from worker.intake.admission import Intake
from worker.settings import Settings
from worker.storage.blobs import is_db_location, read_location
from worker.workspace.application import create_workspace_app

log = logging.getLogger(__name__)

#: Room for the multipart framing and the metadata field around the file itself.
MULTIPART_OVERHEAD = 256 * 1024
MAX_METADATA_BYTES = 64 * 1024
_UPLOAD_PATH = "/v1/jobs"
_TOO_LARGE_FLAG = "upload_too_large"


class UploadSizeLimit:
    """Pure ASGI guard: a declared or streamed body over the limit never reaches the parser.

    A Content-Length over the limit is answered 413 at once; a chunked body is counted
    and cut off (the handler sees a disconnect and answers 413).
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != _UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _too_large(self.max_body)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    scope.setdefault("state", {})[_TOO_LARGE_FLAG] = True
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"the upload is larger than the limit of {limit} bytes",
                         "code": RejectionReason.TOO_LARGE_FILE.value}, status_code=413)


@dataclass(frozen=True)
class Submitted:
    status_code: int
    body: dict


def request_fingerprint(data: bytes, metadata: ImageMetadata) -> str:
    """What an Idempotency-Key is bound to: the file and the metadata sent with it."""
    h = hashlib.sha256(data)
    h.update(b"\0" + metadata.model_dump_json(exclude_none=True).encode())
    return h.hexdigest()


class HttpDoor:
    """The plain, blocking work behind the routes (run in the threadpool)."""

    def __init__(self, settings: Settings, intake: Intake) -> None:
        self.settings = settings
        self.intake = intake
        self.sessions = intake.sessions
        self.celery = create_celery_app(settings)  # for the broker health check only

    def submit(self, data: bytes, metadata: ImageMetadata, original_name: str | None,
               token_name: str, key: str | None) -> Submitted:
        fingerprint = request_fingerprint(data, metadata)
        if key is not None:
            replay = self._replay(token_name, key, fingerprint)
            if replay is not None:
                return replay
        why = refusal(self.settings, self.sessions)
        if why is not None:
            log.warning("upload refused: %s", why)
            return Submitted(503, {"detail": why})
        admission = self.intake.admit_bytes(data, SourceDoor.HTTP, metadata, original_name)
        if key is not None:
            try:
                with self.sessions.begin() as s:
                    s.add(IdempotencyKey(token_name=token_name, key=key, request_sha256=fingerprint,
                                         job_id=admission.job_id))
            except IntegrityError:  # the same key raced in from another request
                replay = self._replay(token_name, key, fingerprint)
                if replay is not None:
                    return replay
        with self.sessions() as s:  # the state now (queued once sent), and why if rejected
            job = s.get(Job, admission.job_id)
            state, code = job.state, job.error_code
        body = {"job_id": admission.job_id, "state": state,
                "duplicate": admission.duplicate, "links": job_links(admission.job_id)}
        if admission.state == JobState.REJECTED:
            body.update(code=code, detail=admission.reason)
            return Submitted(413 if code == RejectionReason.TOO_LARGE_FILE.value else 422, body)
        return Submitted(200 if admission.duplicate else 201, body)

    def _replay(self, token_name: str, key: str, fingerprint: str) -> Submitted | None:
        with self.sessions() as s:
            row = s.execute(select(IdempotencyKey).where(
                IdempotencyKey.token_name == token_name, IdempotencyKey.key == key)).scalar_one_or_none()
            if row is None:
                return None
            if row.request_sha256 != fingerprint:
                return Submitted(409, {"detail": "this Idempotency-Key was used with another request",
                                       "job_id": row.job_id})
            state = s.get(Job, row.job_id).state
        return Submitted(200, {"job_id": row.job_id, "state": state, "duplicate": True,
                               "links": job_links(row.job_id)})


_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "The image: DICOM (Part 10), JPEG or PNG"},
            "metadata": {"type": "string", "description": "JSON object with the keys of "
                         "ImageMetadata; it wins over the file's own tags"},
        },
    }}},
}


def report_response(location: str, job_id: str, bind) -> Response:
    """The PDF at ``location``: a file, or (``TRIAGE_STORAGE=database``) a blob, on any host."""
    if not is_db_location(location):
        return FileResponse(location, media_type="application/pdf", filename=f"{job_id}.pdf")
    try:
        pdf = read_location(location, bind)
    except FileNotFoundError:
        raise HTTPException(404, "the report is not in storage") from None
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{job_id}.pdf"'})


def _token_checks(door: HttpDoor, bearer: HTTPBearer):
    """The route dependencies of the token scopes: ``submitter`` (a token that may submit:
    its name) and ``job_reader`` (a token that may read the path's job)."""

    def caller(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
        found = verify_caller(door.sessions, credentials.credentials) if credentials else None
        if found is None:
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
        return found

    def submitter(who: Caller = Depends(caller)) -> str:
        if not who.scope.may_submit:
            raise HTTPException(403, f"a {who.scope.value} token cannot submit images")
        return who.name

    def job_reader(job_id: str, who: Caller = Depends(caller)) -> Caller:
        if not may_read(door.sessions, who, job_id):  # 404, not 403: no probing for job ids
            raise HTTPException(404, "no such job")
        return who

    return submitter, job_reader


def create_http_app(settings: Settings, intake: Intake) -> FastAPI:
    """The ASGI app; ``intake`` decides where admitted jobs are sent."""
    door = HttpDoor(settings, intake)
    app = FastAPI(title="melanoma-triage", version="1",
                  description="Dermoscopy triage: submit an image, follow its job, fetch its report. "
                              "Decision support only: a clinician makes the decision.")
    app.state.door = door
    bearer = HTTPBearer(auto_error=False, description="Token from `melanoma-triage tokens create`")

    submitter, job_reader = _token_checks(door, bearer)

    @app.post("/v1/jobs", status_code=201, openapi_extra={"requestBody": _UPLOAD_BODY},
              responses={200: {"description": "An existing job"}, 409: {"description": "Key reused"},
                         413: {"description": "Too large"}, 422: {"description": "Rejected"},
                         503: {"description": "Out of disk space or backlog at its limit"}})
    async def submit_job(
        request: Request,
        name: str = Depends(submitter),
        idempotency_key: str | None = Header(None, alias="Idempotency-Key", min_length=1, max_length=255),
    ) -> JSONResponse:
        """Submit one image; the answer holds its ``job_id``."""
        upload = await _read_upload(request, settings.max_file_bytes)
        if isinstance(upload, Response):
            return upload
        data, metadata, filename = upload
        result = await run_in_threadpool(door.submit, data, metadata, filename, name, idempotency_key)
        if "job_id" in result.body:
            await run_in_threadpool(record_owner, door.sessions, result.body["job_id"], name)
        headers = {"Location": job_links(result.body["job_id"])["self"]} if "job_id" in result.body else {}
        if result.status_code == 503:
            headers["Retry-After"] = "60"
        return JSONResponse(result.body, status_code=result.status_code, headers=headers)

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str, _: Caller = Depends(job_reader)) -> dict:
        """State, times and, once done, triage, probabilities and model version."""
        with door.sessions() as s:
            view = job_view(s, job_id)
        if view is None:
            raise HTTPException(404, "no such job")
        return view

    @app.get("/v1/jobs/{job_id}/report.pdf", response_class=FileResponse)
    def get_report(job_id: str, _: Caller = Depends(job_reader)) -> Response:
        """The PDF triage report of a done job."""
        with door.sessions() as s:
            job = s.get(Job, job_id)
            path = job.report.path if job is not None and job.report is not None else None
            state = job.state if job is not None else None
        if path is None:
            raise HTTPException(404, "no such job" if state is None else f"no report: the job is {state}")
        return report_response(path, job_id, door.sessions.kw["bind"])

    @app.get("/v1/jobs/{job_id}/fhir")
    def get_fhir(job_id: str, _: Caller = Depends(job_reader)) -> JSONResponse:
        """The FHIR R4 Bundle (DiagnosticReport, Observations, Device) of a done job."""
        bundle = fhir_bundle(door, job_id)
        if bundle is None:
            raise HTTPException(404, "no FHIR bundle for this job")
        return JSONResponse(bundle, media_type="application/fhir+json")

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Database, broker and model; 503 when any is not ok."""
        health = check_health(settings, door.sessions, lambda: broker_connection_check(door.celery))
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    @app.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """Prometheus text format."""
        return Response(render_metrics(settings, door.sessions),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    app.mount("/ui", create_workspace_app(settings, door.sessions))  # the clinician workspace
    app.add_middleware(UploadSizeLimit, max_body=settings.max_file_bytes + MULTIPART_OVERHEAD)
    return app


_Upload = tuple[bytes, ImageMetadata, str | None]


async def _read_upload(request: Request, max_bytes: int) -> _Upload | Response:
    """The file, the metadata and the file name of a multipart upload, or the error answer."""
    try:
        # metadata may come as a field or as a small file part (curl -F metadata=@meta.json)
        form = await request.form(max_files=2, max_fields=1, max_part_size=MAX_METADATA_BYTES)
    except ClientDisconnect:
        if request.scope.get("state", {}).get(_TOO_LARGE_FLAG):
            return _too_large(max_bytes)
        raise
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return _unprocessable("multipart field 'file' (the image) is required", "missing_file")
        if upload.size is not None and upload.size > max_bytes:
            return _too_large(max_bytes)
        raw = form.get("metadata")
        if isinstance(raw, UploadFile):
            raw = (await raw.read(MAX_METADATA_BYTES + 1)).decode("utf-8", "replace")
        metadata = parse_metadata(raw)
        if isinstance(metadata, str):
            return _unprocessable(f"invalid metadata: {metadata}", "invalid_metadata")
        return await upload.read(), metadata, upload.filename
    finally:
        await form.close()


def _unprocessable(detail: str, code: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=422)


def parse_metadata(raw: str | None) -> ImageMetadata | str:
    """The metadata field as ImageMetadata, or why it is refused.

    Lengths are checked against the images table here: SQLite would store an over-long
    value that PostgreSQL refuses only when the worker finishes the job.
    """
    if not raw or not raw.strip():
        return ImageMetadata()
    if len(raw) > MAX_METADATA_BYTES:
        return f"more than {MAX_METADATA_BYTES} bytes"
    try:
        metadata = ImageMetadata.model_validate_json(raw)
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'metadata'}: {e['msg']}"
                         for e in exc.errors(include_input=False))
    columns = Image.__table__.columns
    for field, value in metadata.model_dump(exclude_none=True).items():
        length = getattr(columns[field].type, "length", None) if field in columns else None
        if length is not None and isinstance(value, str) and len(value) > length:
            return f"{field}: longer than {length} characters"
    return metadata


def fhir_bundle(door: HttpDoor, job_id: str) -> dict | None:
    """The job's FHIR R4 Bundle (a collection) from ``worker.results.fhir``; None until done."""
    from worker.results.fhir import fhir_bundle_for_job  # fhir.resources loads only when asked

    return fhir_bundle_for_job(door.sessions, door.settings, job_id)


class HttpServer:
    """A uvicorn server running in a thread; ``shutdown()`` stops it and waits."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket) -> None:
        self._server = server
        self._thread = thread
        self._sock = sock
        self.port: int = sock.getsockname()[1]

    def shutdown(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def start_http_server(settings: Settings, intake: Intake, startup_timeout: float = 15.0) -> HttpServer:
    """Serve the API on ``http_host:http_port`` in a background thread; returns once it listens."""
    sock = _bind(settings.http_host, settings.http_port)
    config = uvicorn.Config(create_http_app(settings, intake), log_config=None, access_log=True,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the HTTP API did not start")
        time.sleep(0.02)
    handle = HttpServer(server, thread, sock)
    log.info("HTTP API listening on %s:%d", settings.http_host, handle.port)
    return handle


def run_http(settings: Settings) -> int:
    """Serve the API in this thread until SIGINT/SIGTERM (``melanoma-triage serve``)."""
    from worker.messaging.celery_app import process_sender
    from worker.intake.admission import open_intake

    intake = open_intake(settings, process_sender(create_celery_app(settings)))
    try:
        config = uvicorn.Config(create_http_app(settings, intake), host=settings.http_host,
                                port=settings.http_port, log_config=None, timeout_graceful_shutdown=10)
        uvicorn.Server(config).run()
    finally:
        intake.close()
    return 0
