"""The clinician workspace in a real Chromium (Debian's ``chromium`` driven by Playwright).

One server per module on a free port, over a home whose jobs went through the real
admission and pipeline (tiny model) or, where a test needs a given triage level, were
written as finished jobs (``tests.resultgen``). Screenshots of every page go to
``$TRIAGE_UI_SCREENSHOTS`` when set (else a temporary folder).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api  # [test] extra; the browser is Debian's chromium
from sqlalchemy import select
from typer.testing import CliRunner

from schemas import ImageMetadata, RetrainState, SourceDoor, TriageLevel
from tests.conftest import make_settings
from tests.imagegen import dicom_bytes, jpeg_bytes, lesion_rgb, truncated_dicom_bytes
from tests.modelgen import write_tiny_version
from tests.resultgen import insert_done_job
from worker.classify.export import ensure_export
from worker.cli.main import app as cli_app
from worker.db.migrate import upgrade
from worker.db.models import Job, RetrainRun
from worker.db.workspace import JobReview
from worker.doors.http_api import start_http_server
from worker.jobs import pipeline
from worker.jobs.runtime import build_runtime
from worker.store.versions import ModelStore
from worker.workspace.users import create_user
from worker.workspace.worklist import LEVEL_ORDER

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "correct-horse-battery"
RANK = {level.value: i for i, level in enumerate(LEVEL_ORDER)}


class Site:
    """The home, its jobs by name, the running server and the browser."""

    def __init__(self, home: Path, tiny_model_dir: Path) -> None:
        self.settings = make_settings(home, http_host="127.0.0.1", http_port=0)
        self.settings.ensure_folders()
        upgrade(self.settings.database_url)
        store = ModelStore(self.settings.model_store_dir, export=ensure_export)
        store.set_current(store.add_version(tiny_model_dir))
        self.rt = build_runtime(self.settings, send=lambda job_id: None)  # no broker: run jobs here
        self.sessions = self.rt.sessions
        self.jobs: dict[str, str] = {}
        self.server = start_http_server(self.settings, self.rt.intake)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def admit(self, name: str, data: bytes, file_name: str, metadata: ImageMetadata | None = None) -> str:
        job_id = self.rt.intake.admit_bytes(data, SourceDoor.API, metadata, file_name).job_id
        pipeline.process_job(self.rt, job_id)
        self.jobs[name] = job_id
        return job_id

    def finished(self, name: str, level: TriageLevel, seed: int, patient_id: str) -> str:
        data = jpeg_bytes(lesion_rgb((64, 80), seed=seed))
        self.jobs[name] = insert_done_job(self.sessions, self.settings, fmt="jpeg", triage=level, data=data,
                                          metadata=ImageMetadata(patient_id=patient_id))
        return self.jobs[name]

    def close(self) -> None:
        self.server.shutdown()
        self.rt.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir):
    s = Site(tmp_path_factory.mktemp("workspace") / "home", tiny_model_dir)
    s.admit("dicom", dicom_bytes(lesion_rgb((96, 128), seed=3),
                                 metadata={"PatientID": "P-ALPHA-7", "AccessionNumber": "ACC-ALPHA"}),
            "alpha.dcm")
    s.admit("jpeg", jpeg_bytes(lesion_rgb((96, 128), seed=4)), "left-forearm-mole.jpg",
            ImageMetadata(patient_id="P-BRAVO-2", body_site="left forearm"))
    s.admit("rejected", truncated_dicom_bytes(), "cut-off.dcm")
    for i, level in enumerate([TriageLevel.ROUTINE, TriageLevel.URGENT, TriageLevel.INDETERMINATE,
                               TriageLevel.SOON, TriageLevel.URGENT]):
        s.finished(f"{level.value}-{i}", level, seed=10 + i, patient_id=f"P-GEN-{i}")
    create_user(s.sessions, "clara", "clinician", PASSWORD)
    create_user(s.sessions, "victor", "viewer", PASSWORD)
    create_user(s.sessions, "dave", "clinician", PASSWORD)
    create_user(s.sessions, "ada", "admin", PASSWORD)
    s.first_password = create_user(s.sessions, "nina", "clinician")  # generated: change at first sign-in
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium"
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("TRIAGE_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sign_in(browser, site: Site, user: str, password: str = PASSWORD):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.goto(f"{site.url}/ui/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")
    page.wait_for_load_state()
    return page


def screenshot(page, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def cli(site: Site, *args: str):
    result = CliRunner().invoke(cli_app, [*args, "--home", str(site.settings.home)])
    assert result.exit_code == 0, result.output
    return result


def rows(page) -> list[tuple[str, str]]:
    return [(r.get_attribute("data-job-id"), r.get_attribute("data-triage"))
            for r in page.locator("#worklist tbody tr[data-job-id]").all()]


def test_sign_in_leads_to_the_worklist(browser, site, shots):
    page = sign_in(browser, site, "clara")
    assert page.url.endswith("/ui/worklist")
    assert page.get_by_role("heading", name="Worklist").is_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "mt_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["expires"] > 0
    screenshot(page, shots, "worklist")
    page.context.close()


def test_generated_password_must_be_changed_first(browser, site, shots):
    page = sign_in(browser, site, "nina", site.first_password)
    assert page.url.endswith("/ui/password")
    screenshot(page, shots, "password")
    page.goto(f"{site.url}/ui/worklist")  # every page leads back to the change form
    assert page.url.endswith("/ui/password")
    page.fill("#current_password", site.first_password)
    page.fill("#new_password", "nina-own-password-1")
    page.fill("#new_password_again", "nina-own-password-1")
    page.click("button:has-text('Change password')")
    page.wait_for_url("**/ui/worklist")
    page.context.close()
    assert sign_in(browser, site, "nina", "nina-own-password-1").url.endswith("/ui/worklist")


def test_worklist_order_levels_then_unreviewed_then_newest(browser, site):
    page = sign_in(browser, site, "clara")
    listed = rows(page)
    assert site.jobs["rejected"] not in [j for j, _ in listed]  # rejected files have their own list
    assert len(listed) == len(site.jobs) - 1
    ranks = [RANK.get(level, len(RANK)) for _, level in listed]
    assert ranks == sorted(ranks), listed
    ids = [j for j, _ in listed]
    assert ids.index(site.jobs["urgent-4"]) < ids.index(site.jobs["urgent-1"])  # newest first
    with site.sessions.begin() as s:  # reviewed goes after unreviewed within its level
        s.add(JobReview(job_id=site.jobs["urgent-4"], reviewed_by="clara"))
    page.reload()
    ids = [j for j, _ in rows(page)]
    assert ids.index(site.jobs["urgent-1"]) < ids.index(site.jobs["urgent-4"])
    rejected = page.locator(f"#rejected tr[data-job-id='{site.jobs['rejected']}']")
    assert "cut-off.dcm" in rejected.inner_text() and "truncated" in rejected.inner_text().lower()
    page.select_option("#level", "urgent")
    page.click("button:has-text('Apply')")
    assert {level for _, level in rows(page)} == {"urgent"}
    page.context.close()


@pytest.mark.parametrize("query, job", [("alpha-7", "dicom"), ("ACC-ALPHA", "dicom"),
                                        ("forearm-mole", "jpeg"), ("p-gen-3", "soon-3")])
def test_search_by_patient_accession_or_file_name(browser, site, query, job):
    page = sign_in(browser, site, "clara")
    page.fill("#q", query)
    page.click("button:has-text('Apply')")
    assert [j for j, _ in rows(page)] == [site.jobs[job]]
    page.context.close()


def test_job_page_shows_the_result_and_its_pdf(browser, site, shots):
    page = sign_in(browser, site, "clara")
    job_id = site.jobs["dicom"]
    page.click(f"tr[data-job-id='{job_id}'] a")
    page.wait_for_url(f"**/ui/jobs/{job_id}")
    text = page.inner_text("main")
    assert "P-ALPHA-7" in text and "ACC-ALPHA" in text and "alpha.dcm" in text
    assert re.search(r"Why: .*(threshold|below)", text)  # the sentence that explains the level
    assert page.locator("svg[role=img] title").count() >= 2  # rules and class probabilities
    assert page.evaluate("document.querySelector('img.lesion').naturalWidth") > 0
    screenshot(page, shots, "job")
    href = page.get_attribute("#report-link", "href")
    assert href == f"/ui/jobs/{job_id}/report.pdf"
    pdf = page.context.request.get(f"{site.url}{href}")
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    text = subprocess.run(["pdftotext", "-", "-"], input=pdf.body(), capture_output=True, check=True).stdout
    assert b"P-ALPHA-7" in text
    page.context.close()


def test_record_a_diagnosis_and_metrics_count_it(browser, site):
    page = sign_in(browser, site, "clara")
    job_id = site.jobs["jpeg"]
    page.goto(f"{site.url}/ui/jobs/{job_id}")
    page.click("button:has-text('Mark reviewed')")
    assert "Reviewed by clara" in page.inner_text("#review-state")
    before = json.loads(cli(site, "metrics", "--json").stdout)
    assert before == {}
    page.select_option("select[name=diagnosis]", "melanoma")
    page.select_option("select[name=source]", "histopathology")
    page.click("button:has-text('Record diagnosis')")
    assert "melanoma" in page.inner_text("#confirmed")
    after = json.loads(cli(site, "metrics", "--json").stdout)
    assert after["tiny-1"]["n"] == 1 and after["tiny-1"]["n_melanoma"] == 1
    page.context.close()


def test_a_viewer_cannot_record_a_diagnosis(browser, site, shots):
    page = sign_in(browser, site, "victor")
    job_id = site.jobs["dicom"]
    page.goto(f"{site.url}/ui/jobs/{job_id}")
    assert page.locator("form[action$='/diagnosis']").count() == 0
    assert page.locator("select[name=diagnosis]").count() == 0
    screenshot(page, shots, "job-viewer")
    token = page.get_attribute("input[name=csrf_token]", "value")  # the viewer's own valid token
    forged = page.context.request.post(f"{site.url}/ui/jobs/{job_id}/diagnosis", max_redirects=0, form={
        "csrf_token": token, "diagnosis": "nevus", "source": "clinical"})
    assert forged.status == 403
    assert page.context.request.post(f"{site.url}/ui/jobs/{job_id}/review", max_redirects=0,
                                     form={"csrf_token": token}).status == 403
    page.context.close()
    assert cli(site, "audit", "list", "--user", "victor", "--json").stdout.count('"forbidden"') == 2


def test_a_post_without_the_csrf_token_is_403(browser, site):
    page = sign_in(browser, site, "clara")
    job_id = site.jobs["soon-3"]
    url = f"{site.url}/ui/jobs/{job_id}/diagnosis"
    for form in ({"diagnosis": "nevus", "source": "clinical"},
                 {"diagnosis": "nevus", "source": "clinical", "csrf_token": "forged"}):
        assert page.context.request.post(url, form=form, max_redirects=0).status == 403
    with site.sessions() as s:
        assert s.get(JobReview, job_id) is None
    page.goto(f"{site.url}/ui/jobs/{job_id}")
    assert page.locator("#confirmed").count() == 0  # nothing was recorded
    # the sign-in form has its own token
    login = page.context.request.post(f"{site.url}/ui/login", max_redirects=0,
                                      form={"username": "clara", "password": PASSWORD})
    assert login.status == 403
    page.context.close()


def test_sign_in_is_throttled_after_failures(browser, site, shots):
    for _ in range(site.settings.ui_signin_max_failures):
        page = sign_in(browser, site, "dave", "wrong-password-xx")
        assert "Wrong user name or password" in page.inner_text("main")
        page.context.close()
    page = sign_in(browser, site, "dave")  # the right password, too late
    assert page.url.endswith("/ui/login")
    assert "Too many failed sign-ins" in page.inner_text("main")
    screenshot(page, shots, "login-throttled")
    page.context.close()


def test_site_and_models_pages(browser, site, shots):
    page = sign_in(browser, site, "clara")
    page.goto(f"{site.url}/ui/site")
    text = page.inner_text("main")
    assert re.search(r"\d+ of 30 confirmed melanomas, \d+ of 100 other lesions", text)
    assert "melanoma-triage calibrate" in text and "tiny-1" in page.inner_text("#metrics")
    assert page.locator("svg.chart").count() == 1
    screenshot(page, shots, "site")
    page.goto(f"{site.url}/ui/models")
    assert page.inner_text("#current-version") == "tiny-1"
    screenshot(page, shots, "models")
    page.context.close()


def test_the_audit_trail(browser, site):
    page = sign_in(browser, site, "clara")
    job_id = site.jobs["routine-0"]
    page.goto(f"{site.url}/ui/jobs/{job_id}")
    page.click("button:has-text('Mark reviewed')")
    page.context.request.get(f"{site.url}/ui/jobs/{job_id}/report.pdf")
    page.context.close()
    events = json.loads(cli(site, "audit", "list", "--job", job_id, "--json").stdout)
    assert [(e["user"], e["action"]) for e in events] == [
        ("clara", "view_job"), ("clara", "review"), ("clara", "view_job"), ("clara", "view_report")]
    assert all(e["client"] == "127.0.0.1" for e in events)
    signins = json.loads(cli(site, "audit", "list", "--user", "dave", "--since", "1h", "--json").stdout)
    assert [e["action"] for e in signins][-6:] == ["signin_failed"] * 5 + ["signin_throttled"]
    text = cli(site, "audit", "list", "--job", site.jobs["jpeg"]).stdout
    assert "diagnosis" in text and "P-BRAVO" not in text  # job ids, never patient ids
    with site.sessions() as s:
        assert s.scalar(select(Job.id).where(Job.id == job_id)) == job_id


def test_an_admin_adds_a_user_who_then_chooses_a_password(browser, site, shots):
    page = sign_in(browser, site, "clara")
    assert page.locator("nav >> text=Users").count() == 0
    assert page.context.request.get(f"{site.url}/ui/users").status == 403
    page.context.close()
    page = sign_in(browser, site, "ada")
    page.click("nav >> text=Users")
    page.fill("#name", "zoe")
    page.select_option("#role", "viewer")
    page.click("button:has-text('Add user')")
    password = page.inner_text("#shown-password code").strip()
    screenshot(page, shots, "users")
    assert "zoe" in page.inner_text("#users")
    page.context.close()
    page = sign_in(browser, site, "zoe", password)
    assert page.url.endswith("/ui/password")
    page.context.close()


def test_an_admin_approves_a_waiting_version_last(browser, site, shots, tmp_path_factory):
    """Runs last in this module: it changes the current version."""
    store = ModelStore(site.settings.model_store_dir, export=ensure_export)
    store.add_version(write_tiny_version(tmp_path_factory.mktemp("challenger") / "tiny-2", version="tiny-2",
                                         seed=1))
    with site.sessions.begin() as s:  # what a retraining with promotion_requires_approval leaves
        s.add(RetrainRun(trigger="manual", state=RetrainState.PENDING_APPROVAL.value, champion_version="tiny-1",
                         challenger_version="tiny-2", decision={"reasons": ["passed every gate (test)"]}))
    page = sign_in(browser, site, "clara")
    page.goto(f"{site.url}/ui/models")
    assert "tiny-2" in page.inner_text("#pending") and page.locator("#pending form").count() == 0
    forged = page.context.request.post(f"{site.url}/ui/models/tiny-2/approve", max_redirects=0, form={
        "csrf_token": page.get_attribute("input[name=csrf_token]", "value"), "reason": "forged"})
    assert forged.status == 403 and store.current_version() == "tiny-1"
    page.context.close()
    page = sign_in(browser, site, "ada")
    page.goto(f"{site.url}/ui/models")
    screenshot(page, shots, "models-pending")
    page.fill("#pending input[name=reason]", "reviewed the gate report")
    page.click("button:has-text('Approve tiny-2')")
    page.wait_for_url("**/ui/models?message=approved")
    assert page.inner_text("#current-version") == "tiny-2" and store.current_version() == "tiny-2"
    assert "ada (workspace)" in page.inner_text("#history") and "reviewed the gate report" in page.inner_text("#history")
    page.context.close()
    approvals = json.loads(cli(site, "audit", "list", "--user", "ada", "--json").stdout)
    assert approvals[-1]["action"] == "approve_model" and approvals[-1]["detail"]["version"] == "tiny-2"
