"""Users, for admins: add one (the generated password is shown once, on the answer page),
disable one, reset a password. The same operations as ``melanoma-triage users``, audited."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from worker.workspace import audit
from worker.workspace.audit import AuditAction
from worker.workspace.browser_sessions import SignedIn
from worker.workspace.users import Role, UserError, create_user, disable_user, list_users, reset_password
from worker.workspace.web import checked_form, client_address, render, require, signed_in, workspace

router = APIRouter()


def _page(request: Request, status_code: int = 200, message: str | None = None,
          shown_password: tuple[str, str] | None = None) -> Response:
    return render(request, "users.html", status_code=status_code, users=list_users(workspace(request).sessions),
                  roles=[r.value for r in Role], message=message, shown_password=shown_password)


@router.get("/users")
def users_page(request: Request, who: SignedIn = Depends(signed_in)) -> Response:
    require(request, who, Role.ADMIN, "manage users")
    return _page(request)


@router.post("/users")
async def users_create(request: Request, who: SignedIn = Depends(signed_in)) -> Response:
    form = await checked_form(request, who.csrf_token)
    require(request, who, Role.ADMIN, "manage users")
    ws = workspace(request)
    name, role = str(form.get("name") or "").strip(), str(form.get("role") or "")
    try:
        password = create_user(ws.sessions, name, role)  # ValueError: not a role
    except (UserError, ValueError) as exc:
        return _page(request, 400, message=str(exc))
    with ws.sessions.begin() as s:
        audit.record(s, AuditAction.USER_CREATED, who.user, client=client_address(request), target=name, role=role)
    return _page(request, message=f"Added {name} ({role}).", shown_password=(name, password))


@router.post("/users/{name}/{action}")
async def users_change(request: Request, name: str, action: str, who: SignedIn = Depends(signed_in)) -> Response:
    await checked_form(request, who.csrf_token)
    require(request, who, Role.ADMIN, "manage users")
    ws = workspace(request)
    if action not in ("disable", "reset-password"):
        raise HTTPException(404, "no such action")
    if name == who.user and action == "disable":
        return _page(request, 400, message="You cannot disable yourself.")
    try:
        password = reset_password(ws.sessions, name) if action == "reset-password" else None
        if action == "disable":
            disable_user(ws.sessions, name)
    except UserError as exc:
        return _page(request, 400, message=str(exc))
    with ws.sessions.begin() as s:
        audit.record(s, AuditAction.PASSWORD_RESET if password else AuditAction.USER_DISABLED, who.user,
                     client=client_address(request), target=name)
    if password:
        return _page(request, message=f"New password for {name}.", shown_password=(name, password))
    return _page(request, message=f"Disabled {name}: their sessions have ended.")
