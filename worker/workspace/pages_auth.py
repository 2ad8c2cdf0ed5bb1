"""Sign-in, sign-out and the password change (forced after a generated password)."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from worker.workspace import audit
from worker.workspace.audit import AuditAction
from worker.workspace.browser_sessions import (
    SESSION_COOKIE,
    SIGNIN_CSRF_COOKIE,
    SignedIn,
    close_other_sessions,
    close_session,
    open_session,
)
from worker.workspace.throttle import signin_refused
from worker.workspace.users import MIN_PASSWORD_LENGTH, UserError, authenticate, change_password
from worker.workspace.web import (
    PREFIX,
    checked_form,
    client_address,
    cookie_secure,
    render,
    signed_in,
    workspace,
)

router = APIRouter()
_PLAIN_HTTP = ("Sign-in over plain HTTP from another machine is refused: the password and the session "
               "would cross the network unencrypted. Open the workspace through HTTPS (a TLS proxy in "
               "front of the HTTP API), or set TRIAGE_UI_SECURE_COOKIES=false on a trusted network.")


def _next(target: str | None) -> str:
    """Only a page of the workspace (no open redirect to another site)."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/worklist"


def _signin_page(request: Request, status_code: int = 200, message: str | None = None,
                 username: str = "", secure: bool | None = False) -> Response:
    token = request.cookies.get(SIGNIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, "login.html", status_code=status_code, signin_csrf=token, message=message,
                      username=username, next=_next(request.query_params.get("next")))
    response.set_cookie(SIGNIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=bool(secure),
                        path=PREFIX, max_age=3600)
    return response


@router.get("/")
def home() -> Response:
    return RedirectResponse(f"{PREFIX}/worklist", status_code=303)


@router.get("/login")
def login_page(request: Request) -> Response:
    secure = cookie_secure(workspace(request).settings, request)
    return _signin_page(request, message=_PLAIN_HTTP if secure is None else None, secure=secure)


@router.post("/login")
async def login(request: Request) -> Response:
    ws = workspace(request)
    form = await checked_form(request, request.cookies.get(SIGNIN_CSRF_COOKIE))
    name, password = str(form.get("username") or "").strip()[:64], str(form.get("password") or "")
    client = client_address(request)
    secure = cookie_secure(ws.settings, request)
    if secure is None:
        return _signin_page(request, 403, _PLAIN_HTTP, name)
    with ws.sessions.begin() as s:
        refused = signin_refused(s, name, client, ws.throttle_policy)
        if refused:
            audit.record(s, AuditAction.SIGNIN_THROTTLED, name or None, client=client)
    if refused:
        minutes = ws.settings.ui_signin_lockout_minutes
        return _signin_page(request, 429, f"Too many failed sign-ins. Try again in {minutes} minutes, "
                            "or ask an administrator to reset your password.", name, secure)
    user = authenticate(ws.sessions, name, password) if name and password else None
    with ws.sessions.begin() as s:
        if user is None:
            audit.record(s, AuditAction.SIGNIN_FAILED, name or None, client=client)
            token = None
        else:
            audit.record(s, AuditAction.SIGNIN, user.name, client=client)
            token = open_session(s, user.name, ws.session_policy)
    if token is None:
        return _signin_page(request, 401, "Wrong user name or password.", name, secure)
    target = f"{PREFIX}/password" if user.must_change_password else _next(str(form.get("next") or ""))
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax", secure=secure, path=PREFIX,
                        max_age=ws.settings.ui_session_max_hours * 3600)
    response.delete_cookie(SIGNIN_CSRF_COOKIE, path=PREFIX)
    return response


@router.post("/logout")
async def logout(request: Request, who: SignedIn = Depends(signed_in)) -> Response:
    await checked_form(request, who.csrf_token)
    ws = workspace(request)
    with ws.sessions.begin() as s:
        close_session(s, request.cookies.get(SESSION_COOKIE))
        audit.record(s, AuditAction.SIGNOUT, who.user, client=client_address(request))
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


@router.get("/password")
def password_page(request: Request, who: SignedIn = Depends(signed_in)) -> Response:
    return render(request, "password.html", message=None, forced=who.must_change_password,
                  min_length=MIN_PASSWORD_LENGTH)


@router.post("/password")
async def password_change(request: Request, who: SignedIn = Depends(signed_in)) -> Response:
    form = await checked_form(request, who.csrf_token)
    ws = workspace(request)
    new, again = str(form.get("new_password") or ""), str(form.get("new_password_again") or "")
    try:
        if new != again:
            raise UserError("the two new passwords differ")
        change_password(ws.sessions, who.user, str(form.get("current_password") or ""), new)
    except UserError as exc:
        return render(request, "password.html", status_code=400, message=str(exc),
                      forced=who.must_change_password, min_length=MIN_PASSWORD_LENGTH)
    with ws.sessions.begin() as s:
        close_other_sessions(s, who.user, request.cookies.get(SESSION_COOKIE))
        audit.record(s, AuditAction.PASSWORD_CHANGED, who.user, client=client_address(request))
    return RedirectResponse(f"{PREFIX}/worklist", status_code=303)
