"""The clinician workspace without a browser: users and their passwords, the users and audit
commands, cookies and sessions, the plain-HTTP rule, the worklist query (also on PostgreSQL)."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from schemas import ImageMetadata, TriageLevel
from tests.conftest import make_settings
from tests.imagegen import jpeg_bytes, lesion_rgb
from tests.resultgen import insert_done_job
from worker.cli.main import app as cli_app
from worker.db.engine import make_engine, make_session_factory
from worker.db.migrate import upgrade
from worker.db.models import Submission
from worker.db.workspace import JobReview, WorkspaceSession, WorkspaceUser
from worker.doors.http_api import start_http_server
from worker.intake.admission import Intake
from worker.workspace import users
from worker.workspace.cli import parse_since
from worker.workspace.pages_auth import _next
from worker.workspace.site_summary import readiness
from worker.workspace.application import create_workspace_app
from worker.workspace.worklist import Filters, worklist_rows

PASSWORD = "a-good-long-password"


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(cli_app, list(args), input=stdin)


def test_users_create_prints_the_generated_password_last_and_forces_a_change(settings, sessions):
    home = str(settings.home)
    created = run("users", "create", "ann", "--role", "clinician", "--home", home)
    assert created.exit_code == 0, created.output
    password = created.stdout.strip().splitlines()[-1]
    assert len(password) >= users.MIN_PASSWORD_LENGTH and " " not in password
    info = users.authenticate(sessions, "ann", password)
    assert info is not None and info.role is users.Role.CLINICIAN and info.must_change_password
    with sessions() as s:
        stored = s.get(WorkspaceUser, "ann").password_hash
    assert stored.startswith("$argon2id$") and password not in stored
    given = run("users", "create", "ben", "--role", "viewer", "--password-stdin", "--home", home,
                stdin=PASSWORD + "\n")
    assert given.exit_code == 0 and PASSWORD not in given.output
    assert users.authenticate(sessions, "ben", PASSWORD).must_change_password is False
    assert run("users", "create", "ben", "--role", "admin", "--home", home).exit_code == 1  # taken
    assert run("users", "create", "cy", "--role", "nurse", "--home", home).exit_code == 2  # no such role
    short = run("users", "create", "cy", "--role", "viewer", "--password-stdin", "--home", home, stdin="short\n")
    assert short.exit_code == 1 and "at least" in short.output
    listed = run("users", "list", "--home", home)
    assert re.search(r"ann\s+clinician\s+active\s+\(password change due\)", listed.stdout)
    assert "$argon2" not in listed.stdout


def test_disable_and_reset_password_end_sessions(settings, sessions):
    home = str(settings.home)
    users.create_user(sessions, "dee", "admin", PASSWORD)
    with sessions.begin() as s:
        s.add(WorkspaceSession(token_sha256="x" * 64, user_name="dee", csrf_token="c",
                               expires_at=datetime.now(timezone.utc) + timedelta(hours=1)))
    reset = run("users", "reset-password", "dee", "--home", home)
    new = reset.stdout.strip().splitlines()[-1]
    assert users.authenticate(sessions, "dee", PASSWORD) is None
    assert users.authenticate(sessions, "dee", new).must_change_password
    with sessions() as s:
        assert s.get(WorkspaceSession, "x" * 64) is None
    assert run("users", "disable", "dee", "--home", home).exit_code == 0
    assert users.authenticate(sessions, "dee", new) is None
    assert "disabled" in run("users", "list", "--home", home).stdout
    assert run("users", "disable", "nobody", "--home", home).exit_code == 1
    actions = run("audit", "list", "--json", "--home", home).stdout
    assert actions.count('"user_created"') == 0 and actions.count('"password_reset"') == 1
    assert actions.count('"user_disabled"') == 1 and new not in actions


def test_parse_since():
    now = datetime(2026, 12, 5, 12, tzinfo=timezone.utc)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=timezone.utc)


def test_next_page_stays_in_the_workspace():
    assert _next("/ui/jobs/abc") == "/ui/jobs/abc"
    for bad in ("https://evil.example/", "//evil.example/ui/", "/v1/jobs", "/ui\\..", None, ""):
        assert _next(bad) == "/ui/worklist"


def _signin(client, name: str = "eve", password: str = PASSWORD) -> httpx.Response:
    page = client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post("/ui/login", data={"username": name, "password": password, "csrf_token": token},
                       follow_redirects=False)


@pytest.fixture
def served(tmp_path):
    """A real server on 127.0.0.1 (the loopback rule of ``ui_secure_cookies=auto``)."""
    def start(**overrides):
        st = make_settings(tmp_path / "home", http_host="127.0.0.1", http_port=0, **overrides)
        st.ensure_folders()
        upgrade(st.database_url)
        engine = make_engine(st.database_url)
        ses = make_session_factory(engine)
        users.create_user(ses, "eve", "viewer", PASSWORD)
        server = start_http_server(st, Intake(st, ses, lambda job_id: None))
        started.append((server, engine))
        return httpx.Client(base_url=f"http://127.0.0.1:{server.port}"), ses

    started: list = []
    yield start
    for server, engine in started:
        server.shutdown()
        engine.dispose()


def test_session_cookie_attributes_and_expiry(served):
    client, ses = served(ui_session_idle_minutes=5)
    answer = _signin(client)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/worklist"
    cookie = answer.headers["set-cookie"]
    assert "mt_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http on this machine, under auto
    assert client.get("/ui/worklist").status_code == 200
    page = client.get("/ui/worklist")
    assert page.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in page.headers[
        "content-security-policy"]
    with ses.begin() as s:  # unused for longer than the idle limit
        s.execute(update(WorkspaceSession).values(last_seen_at=datetime.now(timezone.utc) - timedelta(minutes=6)))
    gone = client.get("/ui/worklist", follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"].startswith("/ui/login?next=")
    client.close()


def _mounted(tmp_path, **overrides):
    """The workspace under /ui of an app of its own (TestClient: any client address and scheme)."""
    from fastapi import FastAPI

    st = make_settings(tmp_path / "home", **overrides)
    st.ensure_folders()
    upgrade(st.database_url)
    engine = make_engine(st.database_url)
    ses = make_session_factory(engine)
    if not users.list_users(ses):
        users.create_user(ses, "eve", "viewer", PASSWORD)
    app = FastAPI()
    app.mount("/ui", create_workspace_app(st, ses))
    return app, engine


def TestClient(app, base_url: str):
    """Starlette's test client: a client address and a scheme a real socket cannot give.
    Imported here, quietly: it warns about httpx at import."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient as Client
    return Client(app, base_url=base_url)


def test_search_terms_never_reach_the_access_log(served, caplog):
    client, _ = served()
    _signin(client)
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        assert client.get("/ui/worklist", params={"q": "PATIENT-SECRET-42"}).status_code == 200
        client.get("/ui/login")
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/ui/worklist?[query not logged]" in line for line in lines), lines
    assert not any("PATIENT-SECRET-42" in line for line in lines)
    client.close()


def test_secure_cookies_when_configured(tmp_path):
    app, engine = _mounted(tmp_path, ui_secure_cookies="true")
    with TestClient(app, base_url="https://127.0.0.1") as client:
        cookie = _signin(client).headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
    engine.dispose()


def test_plain_http_from_another_machine_is_refused_under_auto(tmp_path):
    app, engine = _mounted(tmp_path)
    with TestClient(app, base_url="http://ward-pc.example") as client:  # client address: "testclient"
        page = client.get("/ui/login")
        assert "plain HTTP" in page.text
        answer = _signin(client)
        assert answer.status_code == 403 and "mt_session" not in answer.headers.get("set-cookie", "")
    with TestClient(app, base_url="https://ward-pc.example") as client:  # behind TLS: Secure cookie
        answer = _signin(client)
        assert answer.status_code == 303 and "Secure" in answer.headers["set-cookie"]
    engine.dispose()


def _worklist_fixture(settings, sessions) -> dict[str, str]:
    jobs = {}
    for i, (name, level) in enumerate([("routine", TriageLevel.ROUTINE), ("urgent-old", TriageLevel.URGENT),
                                       ("soon", TriageLevel.SOON), ("urgent-new", TriageLevel.URGENT),
                                       ("indeterminate", TriageLevel.INDETERMINATE)]):
        jobs[name] = insert_done_job(sessions, settings, fmt="jpeg", triage=level,
                                     data=jpeg_bytes(lesion_rgb((40, 40), seed=100 + i)),
                                     metadata=ImageMetadata(patient_id=f"PID_{i}%", accession_number=f"ACC{i}"))
    with sessions.begin() as s:
        s.add(Submission(job_id=jobs["soon"], door="folder", original_name="Back_Mole.JPG"))
        s.add(JobReview(job_id=jobs["urgent-new"], reviewed_by="ann"))
    return jobs


def _order(sessions, **filters) -> list[str]:
    with sessions() as s:
        rows, more = worklist_rows(s, Filters(**filters))
    assert not more
    return [r.job_id for r in rows]


def _check_worklist(settings, sessions) -> None:
    jobs = _worklist_fixture(settings, sessions)
    names = {v: k for k, v in jobs.items()}
    assert [names[j] for j in _order(sessions)] == ["urgent-old", "urgent-new", "soon", "indeterminate", "routine"]
    assert [names[j] for j in _order(sessions, reviewed=False, level=TriageLevel.URGENT)] == ["urgent-old"]
    assert [names[j] for j in _order(sessions, query="back_mole")] == ["soon"]
    assert [names[j] for j in _order(sessions, query="pid_3%")] == ["urgent-new"]  # % and _ are literal
    assert _order(sessions, query="PID_%_") == []
    assert [names[j] for j in _order(sessions, query="acc4")] == ["indeterminate"]
    today = datetime.now(timezone.utc).date()
    assert len(_order(sessions, received_from=today, received_to=today)) == 5
    assert _order(sessions, received_to=today - timedelta(days=1)) == []


def test_worklist_order_filters_and_search_on_sqlite(settings, sessions):
    _check_worklist(settings, sessions)


@pytest.mark.integration
def test_worklist_order_filters_and_search_on_postgresql(tmp_path, postgres_url):
    st = make_settings(tmp_path / "home", database_url=postgres_url)
    st.ensure_folders()
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        _check_worklist(st, make_session_factory(engine))
        with make_session_factory(engine)() as s:
            assert readiness(s).sentence == "0 of 30 confirmed melanomas, 0 of 100 other lesions"
    finally:
        engine.dispose()


def test_rate_chart_and_urgent_series(settings, sessions):
    from worker.db.models import Prediction
    from worker.workspace.charts import bar, rate_chart
    from worker.workspace.site_summary import urgent_series

    chart = rate_chart([("d1", 0.10, 20), ("d2", 0.30, 10), ("d3", 0.0, 5)], reference=0.12)
    ys = [y for _, y, *_ in chart.points]
    assert ys[1] < chart.reference_y < ys[0] < ys[2]  # higher rate, higher on the page
    assert chart.path.startswith("M40.0,") and chart.path.count("L") == 2
    assert bar("p", 0.31, 0.3).alert and not bar("p", 0.29, 0.3).alert and bar("top", 0.1, 0.2, alert_below=True).alert
    job_ids = [insert_done_job(sessions, settings, fmt="jpeg", triage=level,
                               data=jpeg_bytes(lesion_rgb((40, 40), seed=200 + i)))
               for i, level in enumerate([TriageLevel.URGENT, TriageLevel.ROUTINE, TriageLevel.ROUTINE,
                                          TriageLevel.URGENT])]
    now = datetime.now(timezone.utc)
    with sessions.begin() as s:  # two days a week apart, and one 40 days ago
        for job_id, days in zip(job_ids, (0, 0, 7, 40)):
            s.execute(update(Prediction).where(Prediction.job_id == job_id)
                      .values(created_at=now - timedelta(days=days)))
    with sessions() as s:
        series = urgent_series(s)
    assert [(rate, n) for _, rate, n in series] == [(1.0, 1), (0.0, 1), (0.5, 2)]
    assert all(re.match(r"\d{4}-W\d\d$", label) for label, _, _ in series)  # 40 days: per week
