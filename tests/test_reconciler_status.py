"""The reconciler's selection of stale jobs, job leases and heartbeats (SQLite, no broker),
and ``status`` on the embedded broker."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from schemas import SourceDoor
from tests.imagegen import jpeg_bytes, lesion_rgb
from worker.messaging.celery_app import create_app, process_sender
from worker.cli.main import app as cli_app
from worker.db import jobs
from worker.db.engine import make_engine, make_session_factory
from worker.db.models import Job, Prediction
from worker.intake.admission import Intake
from worker.jobs.reconciler import reconcile
from worker.cli.status import collect_status


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


# --------------------------------------------------------------------------- leases


def _job(intake, seed: int) -> str:
    return intake.admit_bytes(jpeg_bytes(lesion_rgb(seed=seed)), SourceDoor.API).job_id


def _row(sessions, job_id: str) -> Job:
    with sessions() as s:
        return s.get(Job, job_id)


def _expire_lease(sessions, job_id: str) -> None:
    """As if the attempt's worker died and its lease ran out just now."""
    import time

    with sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            lease_expires_at=datetime.now(timezone.utc)))
    time.sleep(0.01)


def test_a_live_lease_turns_a_duplicate_delivery_away_and_an_expired_one_is_taken_over(migrated_settings):
    intake = _intake(migrated_settings, lambda job_id: None)
    job_id = _job(intake, 11)
    with intake.sessions.begin() as s:
        first = jobs.start_attempt(s, job_id, max_attempts=3)
    assert first.attempt == 1
    with intake.sessions.begin() as s:  # the same message again, while the first attempt runs
        assert jobs.start_attempt(s, job_id, max_attempts=3) is None
    assert _row(intake.sessions, job_id).attempts == 1  # a turned-away delivery costs nothing
    _expire_lease(intake.sessions, job_id)  # the first attempt's worker died
    with intake.sessions.begin() as s:
        second = jobs.start_attempt(s, job_id, max_attempts=3)
    assert second.attempt == 2
    with intake.sessions.begin() as s:  # the dead attempt's heartbeat, had it come back
        assert not jobs.renew_lease(s, job_id, first.attempt)
        assert jobs.renew_lease(s, job_id, second.attempt)


def test_only_the_current_attempt_may_complete(migrated_settings):
    from schemas import CLASS_NAMES, ImageMetadata, PredictionResult, TriageLevel

    intake = _intake(migrated_settings, lambda job_id: None)
    job_id = _job(intake, 12)
    with intake.sessions.begin() as s:
        jobs.start_attempt(s, job_id, max_attempts=3)
    _expire_lease(intake.sessions, job_id)
    with intake.sessions.begin() as s:
        jobs.start_attempt(s, job_id, max_attempts=3)
    probs = {name: 1 / len(CLASS_NAMES) for name in CLASS_NAMES}
    result = PredictionResult(probabilities=probs, melanoma_probability=probs["melanoma"],
                              predicted_class=CLASS_NAMES[0], triage=list(TriageLevel)[-1],
                              model_version="v")
    args = (ImageMetadata(), {}, result, True, "/r.pdf", "0" * 64)
    with intake.sessions.begin() as s:
        assert not jobs.complete(s, job_id, *args, attempt=1)  # superseded: writes nothing
    with intake.sessions.begin() as s:
        assert jobs.complete(s, job_id, *args, attempt=2)
    with intake.sessions.begin() as s:
        assert not jobs.complete(s, job_id, *args, attempt=2)  # finished: never twice
    with intake.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 1
        assert s.get(Job, job_id).lease_expires_at is None


def test_a_dead_workers_job_is_sent_again_once_per_expired_lease(migrated_settings):
    sent: list[str] = []
    intake = _intake(migrated_settings, sent.append)
    job_id = _job(intake, 13)
    sent.clear()
    with intake.sessions.begin() as s:
        jobs.start_attempt(s, job_id, max_attempts=3)
    grace, stale = timedelta(seconds=30), timedelta(seconds=600)
    assert reconcile(intake.sessions, intake.enqueue, grace, stale) == 0  # lease live
    _expire_lease(intake.sessions, job_id)
    assert reconcile(intake.sessions, intake.enqueue, grace, stale) == 1
    assert reconcile(intake.sessions, intake.enqueue, grace, stale) == 0  # not again
    assert sent == [job_id]
    row = _row(intake.sessions, job_id)
    assert (row.state, row.sent_count) == ("queued", 2)


def _age(sessions, job_ids, seconds: float) -> None:
    """Move a job's clock back: as if ``seconds`` had passed since its last send."""
    with sessions.begin() as s:
        for job in s.scalars(select(Job).where(Job.id.in_(job_ids))):
            job.last_sent_at -= timedelta(seconds=seconds)
            job.updated_at -= timedelta(seconds=seconds)


def test_a_queued_job_is_resent_at_most_once_per_period_with_backoff(migrated_settings):
    sent: list[str] = []
    intake = _intake(migrated_settings, sent.append)
    ids = [_job(intake, 20 + i) for i in range(3)]  # a backlog: all waiting in the broker
    sent.clear()
    grace, stale = timedelta(seconds=30), timedelta(seconds=600)

    def passes(n: int = 3) -> list[int]:  # beat runs a pass every few seconds
        return [reconcile(intake.sessions, intake.enqueue, grace, stale) for _ in range(n)]

    assert passes() == [0, 0, 0]
    _age(intake.sessions, ids, 601)
    assert passes() == [3, 0, 0]  # once per period, not once per pass
    _age(intake.sessions, ids, 700)
    assert passes() == [0, 0, 0]  # after a resend the period doubles (1200 s)
    _age(intake.sessions, ids, 501)
    assert passes() == [3, 0, 0]
    assert sorted(sent) == sorted(ids * 2)
    assert {_row(intake.sessions, j).sent_count for j in ids} == {3}


def test_concurrent_reconcilers_send_a_job_once(migrated_settings):
    sent: list[str] = []
    intake = _intake(migrated_settings, sent.append)
    job_id = _job(intake, 14)
    sent.clear()
    with intake.sessions.begin() as s:
        jobs.start_attempt(s, job_id, max_attempts=3)
    _expire_lease(intake.sessions, job_id)
    now = datetime.now(timezone.utc)
    grace, stale = timedelta(seconds=30), timedelta(seconds=600)
    with intake.sessions() as s:
        seen_by_both = jobs.jobs_to_reconcile(s, now, grace, stale)
    assert seen_by_both == [job_id]
    claims = []
    for _ in range(2):  # both passes found the job; the conditional UPDATE lets one send
        with intake.sessions.begin() as s:
            claims.append(jobs.claim_resend(s, job_id, now, grace, stale))
    assert claims == [True, False]


def test_a_job_that_kills_its_worker_every_time_ends_failed(migrated_settings):
    intake = _intake(migrated_settings, lambda job_id: None)
    job_id = _job(intake, 15)
    for attempt in (1, 2, 3):
        with intake.sessions.begin() as s:
            assert jobs.start_attempt(s, job_id, max_attempts=3).attempt == attempt
        _expire_lease(intake.sessions, job_id)  # ... and its worker died each time
    with intake.sessions.begin() as s:
        assert jobs.start_attempt(s, job_id, max_attempts=3) is None
    row = _row(intake.sessions, job_id)
    assert (row.state, row.error_code) == ("failed", "attempts_exhausted")


def test_the_heartbeat_renews_the_lease_and_notices_a_takeover(migrated_settings):
    import time

    from worker.jobs.heartbeat import JobHeartbeat, LeaseLost

    intake = _intake(migrated_settings, lambda job_id: None)
    job_id = _job(intake, 16)
    with intake.sessions.begin() as s:
        item = jobs.start_attempt(s, job_id, max_attempts=3, lease=timedelta(seconds=0.6))
    with JobHeartbeat(intake.sessions, job_id, item.attempt, lease_s=0.6, max_s=60) as lease:
        time.sleep(1.5)  # longer than the lease: only renewals keep it
        row = _row(intake.sessions, job_id)
        assert jobs.lease_is_live(row)
        lease.check()
        _expire_lease(intake.sessions, job_id)  # as if it were cut off, and another took over:
        with intake.sessions.begin() as s:
            assert jobs.start_attempt(s, job_id, max_attempts=3).attempt == 2
        time.sleep(0.5)
        with pytest.raises(LeaseLost):
            lease.check()


def test_the_heartbeat_stops_past_the_time_limit(migrated_settings):
    import time

    from worker.jobs.heartbeat import JobHeartbeat, LeaseLost

    intake = _intake(migrated_settings, lambda job_id: None)
    job_id = _job(intake, 17)
    with intake.sessions.begin() as s:
        item = jobs.start_attempt(s, job_id, max_attempts=3, lease=timedelta(seconds=0.3))
    with JobHeartbeat(intake.sessions, job_id, item.attempt, lease_s=0.3, max_s=0.5) as lease:
        time.sleep(1.2)
        assert lease.lost.is_set()
        with pytest.raises(LeaseLost):
            lease.check()
    assert not jobs.lease_is_live(_row(intake.sessions, job_id))
