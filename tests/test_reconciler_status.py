"""The reconciler's selection of stale jobs, and ``status`` on the embedded broker."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from typer.testing import CliRunner

from schemas import SourceDoor
from tests.imagegen import jpeg_bytes, lesion_rgb
from worker.celery_app import create_app, process_sender
from worker.cli import app as cli_app
from worker.db import jobs
from worker.db.engine import make_engine, make_session_factory
from worker.intake.admission import Intake
from worker.reconciler import reconcile
from worker.status import collect_status


def _intake(settings, send):
    return Intake(settings, make_session_factory(make_engine(settings.database_url)), send)


def test_reconciler_picks_only_stale_jobs(migrated_settings):
    lost: list[str] = []
    intake = _intake(migrated_settings, lambda job_id: lost.append(job_id))
    queued = intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=1)), SourceDoor.API).job_id

    def down(job_id):
        raise ConnectionError("broker down")

    never_sent = _intake(migrated_settings, down).admit_bytes(
        jpeg_bytes(lesion_rgb(seed=2)), SourceDoor.API).job_id
    now = datetime.now(timezone.utc)
    grace, stale = timedelta(seconds=30), timedelta(seconds=600)
    with intake.sessions() as s:
        assert jobs.jobs_to_reconcile(s, now, grace, stale) == []
        assert jobs.jobs_to_reconcile(s, now + timedelta(seconds=31), grace, stale) == [never_sent]
        assert sorted(jobs.jobs_to_reconcile(s, now + timedelta(seconds=601), grace, stale)) == \
            sorted([queued, never_sent])
    resent: list[str] = []
    intake.send = resent.append
    assert reconcile(intake.sessions, intake.enqueue, grace, stale, now=now + timedelta(seconds=31)) == 1
    assert resent == [never_sent]
    with intake.sessions() as s:
        assert jobs.counts_by_state(s)["queued"] == 2


def test_status_counts_jobs_and_the_embedded_queue(migrated_settings, monkeypatch):
    monkeypatch.setenv("TRIAGE_HOME", str(migrated_settings.home))  # restored afterwards
    app = create_app(migrated_settings)
    intake = _intake(migrated_settings, process_sender(app))
    for seed in (3, 4, 5):
        intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=seed)), SourceDoor.API)
    info = collect_status(migrated_settings)
    assert info["jobs"]["queued"] == 3
    assert info["queue_depth"] == 3  # the messages really are in the filesystem broker
    result = CliRunner().invoke(cli_app, ["status", "--home", str(migrated_settings.home), "--json"])
    assert result.exit_code == 0, result.output
    assert '"queued": 3' in result.output
