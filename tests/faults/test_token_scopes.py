"""Token scopes of the HTTP API (issue 18): before, any token read every patient's report,
so a camera's upload token was a key to all of them. Real uvicorn on a free port, httpx as
the peer, the real migrations."""

from __future__ import annotations

import json

import httpx
import pytest
from alembic import command
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from tests.test_http_api import Api, jpeg
from worker.db.migrate import alembic_config, upgrade
from worker.doors.tokens import create_token


@pytest.fixture
def api(tmp_path):
    a = Api(tmp_path)
    yield a
    a.close()


def _client(api: Api, token: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {token}"})


def _submit(client: httpx.Client, seed: int) -> str:
    r = client.post("/v1/jobs", files={"file": ("lesion.jpg", jpeg(seed), "image/jpeg")})
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def test_a_submit_token_reads_only_its_own_jobs(api):
    camera_a = _client(api, create_token(api.sessions, "camera-a"))  # default scope: submit
    camera_b = _client(api, create_token(api.sessions, "camera-b", "submit"))
    try:
        mine, theirs = _submit(camera_a, 1), _submit(camera_b, 2)
        assert camera_a.get(f"/v1/jobs/{mine}").status_code == 200
        for path in (f"/v1/jobs/{theirs}", f"/v1/jobs/{theirs}/report.pdf", f"/v1/jobs/{theirs}/fhir"):
            r = camera_a.get(path)
            assert r.status_code == 404, (path, r.status_code)  # as if it did not exist
    finally:
        camera_a.close()
        camera_b.close()


def test_a_read_token_reads_every_job_and_submits_none(api):
    camera = _client(api, create_token(api.sessions, "camera"))
    viewer = _client(api, create_token(api.sessions, "viewer", "read"))
    try:
        job = _submit(camera, 3)
        assert viewer.get(f"/v1/jobs/{job}").status_code == 200
        r = viewer.post("/v1/jobs", files={"file": ("lesion.jpg", jpeg(4), "image/jpeg")})
        assert r.status_code == 403
        assert len(api.sent) == 1  # nothing admitted for the refused upload
    finally:
        camera.close()
        viewer.close()


def test_an_admin_token_does_both(api):
    camera = _client(api, create_token(api.sessions, "camera"))
    admin = _client(api, create_token(api.sessions, "ops", "admin"))
    try:
        other = _submit(camera, 5)
        own = _submit(admin, 6)
        assert admin.get(f"/v1/jobs/{other}").status_code == 200
        assert admin.get(f"/v1/jobs/{own}").status_code == 200
    finally:
        camera.close()
        admin.close()


def test_tokens_made_before_scopes_keep_admin_rights(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    command.upgrade(alembic_config(url), "0005")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO api_tokens (name, token_sha256, created_at) "
                          "VALUES ('old-his', 'abc', '2026-01-01 00:00:00')"))
    upgrade(url)  # 0006 and on
    with engine.connect() as conn:
        assert conn.execute(text("SELECT scope FROM api_tokens")).scalar_one() == "admin"
    engine.dispose()


def test_tokens_create_with_a_scope_and_list_shows_scopes(tmp_path):
    from worker.cli.main import app

    home = tmp_path / "home"
    runner = CliRunner()
    for name, extra in (("cam", []), ("viewer", ["--scope", "read"]), ("ops", ["--scope", "admin"])):
        out = runner.invoke(app, ["tokens", "create", name, *extra, "--home", str(home)])
        assert out.exit_code == 0, out.output
    assert runner.invoke(app, ["tokens", "create", "x", "--scope", "root", "--home", str(home)]).exit_code != 0
    listed = json.loads(runner.invoke(app, ["tokens", "list", "--json", "--home", str(home)]).stdout)
    assert {t["name"]: t["scope"] for t in listed} == {"cam": "submit", "viewer": "read", "ops": "admin"}
    lines = runner.invoke(app, ["tokens", "list", "--home", str(home)]).stdout.splitlines()
    assert {tuple(line.split()[:2]) for line in lines} == {("cam", "submit"), ("ops", "admin"),
                                                            ("viewer", "read")}
