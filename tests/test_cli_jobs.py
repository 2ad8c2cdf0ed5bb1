"""``melanoma-triage jobs list|show`` (issue 19): find a job by the name its file came with,
see it whole with every submission (re-sends included) and its deliveries; empty listings
say so (``jobs list``, ``deliveries list``)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from schemas import ImageMetadata, SourceDoor
from tests.imagegen import jpeg_bytes, lesion_rgb
from worker.cli.jobs import parse_since
from worker.cli.main import app
from worker.jobs import pipeline
from worker.jobs.runtime import build_runtime


@pytest.fixture
def home(migrated_settings, store_with_tiny_model):
    """A home with three jobs: two done (one re-sent under another name), one queued."""
    rt = build_runtime(migrated_settings, send=lambda job_id: None)
    intake = rt.intake
    ids = {}
    try:
        ids["mole"] = intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=41)), SourceDoor.INTAKE,
                                         ImageMetadata(patient_id="P-41", accession_number="A-41"),
                                         "Mole Back 41.jpg").job_id
        ids["arm"] = intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=42)), SourceDoor.HTTP,
                                        None, "arm_42.jpg").job_id
        for key in ("mole", "arm"):
            assert pipeline.process_job(rt, ids[key]) == "done"
        resent = intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=41)), SourceDoor.INTAKE,
                                    None, "copy of mole.jpg")
        assert resent.duplicate and resent.job_id == ids["mole"]
        ids["waiting"] = intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=43)), SourceDoor.INTAKE,
                                            None, "waiting.jpg").job_id
    finally:
        rt.close()
    return migrated_settings.home, ids


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_jobs_list_filters_by_name_state_and_triage(home):
    path, ids = home
    everything = json.loads(_run("jobs", "list", "--home", str(path), "--json").stdout)
    assert {r["job_id"] for r in everything} == set(ids.values())
    by_name = json.loads(_run("jobs", "list", "--name", "MOLE", "--home", str(path), "--json").stdout)
    assert [r["job_id"] for r in by_name] == [ids["mole"]]
    assert by_name[0]["original_name"] == "Mole Back 41.jpg"  # its first arrival's name
    assert by_name[0]["patient_id"] == "P-41" and by_name[0]["report_path"].endswith(".pdf")
    also = json.loads(_run("jobs", "list", "--name", "copy of", "--home", str(path), "--json").stdout)
    assert [r["job_id"] for r in also] == [ids["mole"]]  # any submission's name finds it
    queued = json.loads(_run("jobs", "list", "--state", "queued", "--home", str(path), "--json").stdout)
    assert [r["job_id"] for r in queued] == [ids["waiting"]]
    level = everything[[r["job_id"] for r in everything].index(ids["arm"])]["triage"]
    by_triage = json.loads(_run("jobs", "list", "--triage", level, "--home", str(path), "--json").stdout)
    assert ids["arm"] in {r["job_id"] for r in by_triage}
    assert ids["waiting"] not in {r["job_id"] for r in by_triage}
    table = _run("jobs", "list", "--home", str(path)).stdout
    assert "arm_42.jpg" in table and table.splitlines()[0].startswith("JOB")


def test_empty_listings_say_so(home):
    path, _ids = home
    result = _run("jobs", "list", "--name", "nothing-like-this", "--home", str(path))
    assert result.exit_code == 0 and result.stdout.strip() == "no jobs match"
    assert _run("jobs", "list", "--since", "2099-01-01", "--home", str(path), "--json").stdout.strip() == "[]"
    deliveries = _run("deliveries", "list", "--home", str(path))
    assert deliveries.exit_code == 0 and deliveries.stdout == ""
    assert "no deliveries" in deliveries.stderr


def test_jobs_show_by_name_prints_the_job_whole_with_its_resend(home):
    path, ids = home
    result = _run("jobs", "show", "Mole Back 41.jpg", "--home", str(path))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith(f"job {ids['mole']}: done")
    for words in ("original name  Mole Back 41.jpg", "patient id     P-41", "accession      A-41",
                  "class call", "probabilities:", "melanoma", "submissions (2;",
                  "copy of mole.jpg  (re-send)", "deliveries: none", ".pdf"):
        assert words in text, words
    as_json = json.loads(_run("jobs", "show", ids["mole"][:8], "--home", str(path), "--json").stdout)
    assert as_json["job_id"] == ids["mole"] and len(as_json["submissions"]) == 2
    assert [s["duplicate"] for s in as_json["submissions"]] == [False, True]
    assert abs(sum(as_json["probabilities"].values()) - 1) < 1e-3


def test_jobs_show_says_when_nothing_or_several_match(home):
    path, ids = home
    missing = _run("jobs", "show", "no-such-name.jpg", "--home", str(path))
    assert missing.exit_code == 1 and "no job has that id or original file name" in missing.stderr
    several = _run("jobs", "show", ".jpg", "--home", str(path))
    assert several.exit_code == 1 and "jobs match" in several.stderr


def test_since_reads_durations_and_dates():
    now = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("1d", now) == now - timedelta(days=1)
    assert parse_since("2026-12-05") == datetime(2026, 12, 5, tzinfo=timezone.utc)
