"""The worklist and the job page: read a result, view its report, mark it reviewed, record
the confirmed diagnosis. Opening a job, its report, a review and a diagnosis are audited."""

from __future__ import annotations

from io import BytesIO

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response

from schemas import CLASS_NAMES, JobState, TriageLevel, TruthSource
from schemas.classes import DISPLAY_NAMES
from worker.db.models import Job
from worker.storage.blobs import is_db_location, read_location
from worker.retrain.truth import LabelError
from worker.workspace import audit
from worker.workspace.audit import AuditAction
from worker.workspace.browser_sessions import SignedIn
from worker.workspace.job_detail import load_job, mark_reviewed, record_diagnosis, recorded_by
from worker.workspace.users import Role
from worker.workspace.web import PREFIX, checked_form, client_address, render, require, signed_in, workspace
from worker.workspace.worklist import LEVEL_ORDER, Filters, rejected_rows, worklist_rows

router = APIRouter()
#: Longest side of the image shown on the job page (the report and the archive keep the original).
IMAGE_SIDE = 640
DIAGNOSES = [(c, DISPLAY_NAMES.get(c, c)) for c in CLASS_NAMES]
SOURCES = [s.value for s in TruthSource]
#: Job states the worklist filter offers (rejected files have their own list).
STATES = [s.value for s in JobState if s is not JobState.REJECTED]


@router.get("/worklist")
def worklist(request: Request, who: SignedIn = Depends(signed_in)) -> Response:
    ws = workspace(request)
    filters = Filters.parse(request.query_params)
    with ws.sessions() as s:
        rows, more = worklist_rows(s, filters)
        rejected = rejected_rows(s, filters)
    return render(request, "worklist.html", rows=rows, more=more, rejected=rejected, filters=filters,
                  levels=[lv.value for lv in LEVEL_ORDER], states=STATES, query=request.query_params)


def _job_or_404(request: Request, job_id: str):
    ws = workspace(request)
    with ws.sessions() as s:
        detail = load_job(s, ws.store, job_id) if len(job_id) <= 32 else None
    if detail is None:
        raise HTTPException(404, "no such job")
    return detail


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, who: SignedIn = Depends(signed_in)) -> Response:
    detail = _job_or_404(request, job_id)
    with workspace(request).sessions.begin() as s:
        audit.record(s, AuditAction.VIEW_JOB, who.user, job_id, client_address(request))
    return render(request, "job.html", d=detail, diagnoses=DIAGNOSES, sources=SOURCES,
                  may_record=who.may(Role.CLINICIAN), TriageLevel=TriageLevel,
                  message=request.query_params.get("message"))


@router.get("/jobs/{job_id}/report.pdf")
def job_report(request: Request, job_id: str, who: SignedIn = Depends(signed_in)) -> Response:
    ws = workspace(request)
    with ws.sessions() as s:
        job = s.get(Job, job_id) if len(job_id) <= 32 else None
        path = job.report.path if job is not None and job.report is not None else None
    if path is None:
        raise HTTPException(404, "this job has no report")
    with ws.sessions.begin() as s:
        audit.record(s, AuditAction.VIEW_REPORT, who.user, job_id, client_address(request))
    headers = {"Content-Security-Policy": "frame-ancestors 'self'"}
    if is_db_location(path):  # TRIAGE_STORAGE=database: from the blobs table, on any host
        try:
            pdf = read_location(path, ws.sessions.kw["bind"])
        except FileNotFoundError:
            raise HTTPException(404, "this job's report is not in storage") from None
        headers["Content-Disposition"] = f'inline; filename="{job_id}.pdf"'
        return Response(pdf, media_type="application/pdf", headers=headers)
    return FileResponse(path, media_type="application/pdf", filename=f"{job_id}.pdf",
                        content_disposition_type="inline", headers=headers)


def _thumbnail_png(archive_path: str, max_bytes: int, max_pixels: int, bind=None) -> bytes:
    from PIL import Image as PILImage

    from worker.imaging import DecodeLimits, decode_bytes
    rgb = decode_bytes(read_location(archive_path, bind), DecodeLimits(max_bytes=max_bytes, max_pixels=max_pixels)).rgb
    img = PILImage.fromarray(rgb)
    img.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
    buf = BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@router.get("/jobs/{job_id}/image.png")
async def job_image(request: Request, job_id: str, who: SignedIn = Depends(signed_in)) -> Response:
    """The lesion as the job page shows it (decoded from the archive, at most 640 px)."""
    ws = workspace(request)
    with ws.sessions() as s:
        job = s.get(Job, job_id) if len(job_id) <= 32 else None
        path = job.image.archive_path if job is not None else None
    if not path or job.state == JobState.REJECTED.value:
        raise HTTPException(404, "no image to show for this job")
    try:
        png = await run_in_threadpool(_thumbnail_png, path, ws.settings.max_file_bytes,
                                      ws.settings.max_image_pixels, ws.sessions.kw["bind"])
    except Exception:  # a moved archive or a file the decoder refuses: the page says so
        raise HTTPException(404, "the archived image cannot be shown") from None
    return Response(png, media_type="image/png")


@router.post("/jobs/{job_id}/review")
async def job_review(request: Request, job_id: str, who: SignedIn = Depends(signed_in)) -> Response:
    await checked_form(request, who.csrf_token)
    require(request, who, Role.CLINICIAN, "mark a job reviewed", job_id)
    _job_or_404(request, job_id)
    with workspace(request).sessions.begin() as s:
        mark_reviewed(s, job_id, who.user)
        audit.record(s, AuditAction.REVIEW, who.user, job_id, client_address(request))
    return RedirectResponse(f"{PREFIX}/jobs/{job_id}?message=reviewed", status_code=303)


@router.post("/jobs/{job_id}/diagnosis")
async def job_diagnosis(request: Request, job_id: str, who: SignedIn = Depends(signed_in)) -> Response:
    form = await checked_form(request, who.csrf_token)
    require(request, who, Role.CLINICIAN, "record a diagnosis", job_id)
    _job_or_404(request, job_id)
    diagnosis, source = str(form.get("diagnosis") or ""), str(form.get("source") or "")
    try:
        with workspace(request).sessions.begin() as s:
            added = record_diagnosis(s, job_id, diagnosis, source, recorded_by(who.user))
            audit.record(s, AuditAction.DIAGNOSIS, who.user, job_id, client_address(request),
                         diagnosis=diagnosis, source=source, added=added)
    except LabelError as exc:
        raise HTTPException(400, str(exc)) from None
    return RedirectResponse(f"{PREFIX}/jobs/{job_id}?message={'recorded' if added else 'unchanged'}",
                            status_code=303)
