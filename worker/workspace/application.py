"""The workspace's ASGI app, mounted at ``/ui`` by the HTTP API (``worker.doors.http_api``)."""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from urllib.parse import quote, urlencode

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker

from worker.settings import Settings
from worker.store.versions import ModelStore
from worker.workspace import pages_auth, pages_jobs, pages_site, pages_users
from worker.workspace.access_log import redact_workspace_queries
from worker.workspace.web import SECURITY_HEADERS, PREFIX, NotSignedIn, PasswordChangeDue, Workspace, render


def _utc(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes that were stored as UTC."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _templates() -> jinja2.Environment:
    folder = Path(str(resources.files("worker.workspace") / "templates"))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda p: "–" if p is None else f"{100 * p:.1f} %"
    env.filters["when"] = lambda ts: "–" if ts is None else _utc(ts).strftime("%Y-%m-%d %H:%M UTC")
    env.filters["urlencode_page"] = lambda params, page: urlencode({**dict(params), "page": page})
    return env


def create_workspace_app(settings: Settings, sessions: sessionmaker[Session]) -> FastAPI:
    """The ``/ui`` app over the HTTP API's database sessions."""
    redact_workspace_queries()  # the search carries patient ids: never in the access log
    app = FastAPI(title="melanoma-triage clinician workspace", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.workspace = Workspace(settings, sessions, ModelStore(settings.model_store_dir), _templates())
    app.mount("/static", StaticFiles(directory=str(resources.files("worker.workspace") / "statics")),
              name="static")
    for module in (pages_auth, pages_jobs, pages_site, pages_users):
        app.include_router(module.router)

    @app.exception_handler(NotSignedIn)
    async def _sign_in_first(request: Request, _: NotSignedIn) -> Response:
        if request.method != "GET":
            return HTMLResponse("Signed out: sign in again.", status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(PasswordChangeDue)
    async def _change_password_first(request: Request, _: PasswordChangeDue) -> Response:
        return RedirectResponse(f"{PREFIX}/password", status_code=303)

    @app.exception_handler(HTTPException)
    async def _error_page(request: Request, exc: HTTPException) -> Response:
        return render(request, "error.html", status_code=exc.status_code, status=exc.status_code,
                      detail=exc.detail)

    @app.middleware("http")
    async def _headers(request: Request, call_next) -> Response:
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    return app
