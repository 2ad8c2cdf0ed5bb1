"""What every page of the workspace uses: its context, the signed-in person, role and CSRF
checks, rendering (the app itself: ``worker.workspace.application``).

Every page needs a signed-in session (else: the sign-in page); every POST needs the form's
``csrf_token`` (else: 403), and the role its action needs (else: 403, recorded). Responses
are never cached and may not be framed; the pages run no script.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta

import jinja2
from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import FormData

from worker.settings import Settings
from worker.store.versions import ModelStore
from worker.workspace import audit
from worker.workspace.browser_sessions import SESSION_COOKIE, SessionPolicy, SignedIn, find_session
from worker.workspace.throttle import ThrottlePolicy
from worker.workspace.users import Role

PREFIX = "/ui"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


@dataclass
class Workspace:
    """What every page handler needs (``request.app.state.workspace``)."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ModelStore
    templates: jinja2.Environment

    @property
    def session_policy(self) -> SessionPolicy:
        return SessionPolicy(idle=timedelta(minutes=self.settings.ui_session_idle_minutes),
                             lifetime=timedelta(hours=self.settings.ui_session_max_hours))

    @property
    def throttle_policy(self) -> ThrottlePolicy:
        return ThrottlePolicy(self.settings.ui_signin_max_failures,
                              timedelta(minutes=self.settings.ui_signin_lockout_minutes))


class NotSignedIn(Exception):
    """The request has no live session: answered with the sign-in page."""


class PasswordChangeDue(Exception):
    """The user signed in with a generated password: every page leads to the change form."""


def workspace(request: Request) -> Workspace:
    return request.app.state.workspace


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cookie_secure(settings: Settings, request: Request) -> bool | None:
    """Whether the session cookie is Secure; None: sign-in refused (plain http from another
    machine under ``auto``: the browser would send the password and the cookie in clear)."""
    mode = settings.ui_secure_cookies
    if mode in ("true", "false"):
        return mode == "true"
    if request.url.scheme == "https":
        return True
    return False if _loopback(client_address(request)) else None


def signed_in(request: Request) -> SignedIn:
    """Dependency: the person behind the request (NotSignedIn otherwise)."""
    ws = workspace(request)
    with ws.sessions.begin() as s:
        who = find_session(s, request.cookies.get(SESSION_COOKIE), ws.session_policy)
    if who is None:
        raise NotSignedIn()
    if who.must_change_password and request.url.path not in (f"{PREFIX}/password", f"{PREFIX}/logout"):
        raise PasswordChangeDue()
    request.state.who = who
    return who


def forbidden(request: Request, who: SignedIn, what: str, job_id: str | None = None) -> HTTPException:
    """A 403 for an action the role does not allow, recorded in the audit trail."""
    with workspace(request).sessions.begin() as s:
        audit.record(s, audit.AuditAction.FORBIDDEN, who.user, job_id, client_address(request),
                     what=what, role=who.role.value)
    return HTTPException(403, f"your role ({who.role.value}) does not allow this: {what}")


def require(request: Request, who: SignedIn, role: Role, what: str, job_id: str | None = None) -> None:
    if not who.may(role):
        raise forbidden(request, who, what, job_id)


async def checked_form(request: Request, expected: str | None) -> FormData:
    """The POSTed form when its ``csrf_token`` is the expected one; 403 otherwise."""
    form = await request.form(max_files=0, max_fields=20, max_part_size=64 * 1024)
    sent = form.get("csrf_token")
    if not expected or not isinstance(sent, str) or not secrets.compare_digest(sent.encode(), expected.encode()):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
    return form


def render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    ws = workspace(request)
    who = getattr(request.state, "who", None)
    html = ws.templates.get_template(name).render(
        prefix=PREFIX, who=who, csrf_token=who.csrf_token if who else context.pop("signin_csrf", ""),
        path=request.url.path, Role=Role, **context)
    return HTMLResponse(html, status_code=status_code)
