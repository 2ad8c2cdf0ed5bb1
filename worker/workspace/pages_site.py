"""The site page (is the flag working here, and can the site calibrate?) and the models page
(versions, change log, approvals: admins only approve)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from worker.errors import TriageError
from worker.workspace import audit
from worker.workspace.audit import AuditAction
from worker.workspace.browser_sessions import SignedIn
from worker.workspace.models_summary import approve, models_summary
from worker.workspace.site_summary import site_summary
from worker.workspace.users import Role
from worker.workspace.web import PREFIX, checked_form, client_address, render, require, signed_in, workspace

router = APIRouter()


@router.get("/site")
async def site_page(request: Request, who: SignedIn = Depends(signed_in)) -> Response:
    ws = workspace(request)
    summary = await run_in_threadpool(site_summary, ws.sessions, ws.store)
    return render(request, "site.html", s=summary)


@router.get("/models")
def models_page(request: Request, who: SignedIn = Depends(signed_in)) -> Response:
    ws = workspace(request)
    return render(request, "models.html", m=models_summary(ws.sessions, ws.store),
                  may_approve=who.may(Role.ADMIN), message=request.query_params.get("message"))


@router.post("/models/{version}/approve")
async def models_approve(request: Request, version: str, who: SignedIn = Depends(signed_in)) -> Response:
    form = await checked_form(request, who.csrf_token)
    require(request, who, Role.ADMIN, "approve a model version")
    ws = workspace(request)
    reason = str(form.get("reason") or "").strip()
    if not reason:
        raise HTTPException(400, "an approval needs a reason")
    try:
        change = await run_in_threadpool(approve, ws.sessions, ws.store, version, who.user, reason)
    except TriageError as exc:
        raise HTTPException(409, str(exc)) from None
    with ws.sessions.begin() as s:
        audit.record(s, AuditAction.APPROVE_MODEL, who.user, client=client_address(request),
                     version=change.version, previous_version=change.previous_version)
    return RedirectResponse(f"{PREFIX}/models?message=approved", status_code=303)
