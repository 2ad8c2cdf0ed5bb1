"""The deliver task's wiring (queue, time limit, sent after a job is done) and the sweep
that re-sends deliver messages the broker lost. No services: SQLite and no worker."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from schemas import DeliveryKind, DeliveryState
from tests.conftest import make_settings
from tests.resultgen import FINISHED, insert_done_job
from worker.messaging import tasks
from worker.messaging.celery_worker import create_worker_app
from worker.db import deliveries
from worker.db.deliveries import Delivery
from worker.messaging.queues import (
    DELIVER_QUEUE,
    DELIVER_TASK,
    MAINTENANCE_QUEUE,
    PROCESS_TASK,
    REDELIVER_TASK,
)
from worker.results.delivery import backoff_s
from worker.results.fhir import fhir_outbox
from worker.results.redelivery import WINDOW_PERIODS, delivery_time_limit_s, jobs_to_redeliver, redeliver


def test_time_limit_covers_every_retry_of_every_destination(settings):
    busy = make_settings(settings.home, dicom_destinations="PACS@pacs:104,ARCHIVE@arch:11112",
                         fhir_endpoint="https://fhir.example/r4", webhook_url="https://hook.example/x",
                         delivery_attempts=5, delivery_timeout_s=30, delivery_backoff_s=2)
    per_destination = 5 * 30 + sum(backoff_s(busy, a) for a in range(1, 5))
    assert delivery_time_limit_s(busy) > 4 * per_destination
    assert delivery_time_limit_s(settings) >= 300  # nothing configured: the outbox only


def test_deliver_task_has_its_queue_and_time_limit(settings):
    app = create_worker_app(settings)
    task = app.tasks[DELIVER_TASK]
    assert task.time_limit == delivery_time_limit_s(settings) > task.soft_time_limit
    assert app.amqp.router.route({}, DELIVER_TASK)["queue"].name == DELIVER_QUEUE
    sweep = app.conf.beat_schedule["redeliver-results"]
    assert sweep["task"] == REDELIVER_TASK and sweep["options"]["queue"] == MAINTENANCE_QUEUE
    assert sweep["options"]["expires"] == sweep["schedule"] == settings.reconcile_interval_s


def test_a_done_job_is_handed_to_the_deliver_queue(migrated_settings, monkeypatch):
    app = create_worker_app(migrated_settings)
    sent: list[str] = []
    monkeypatch.setattr(tasks, "deliver_sender", lambda _app, **_kw: sent.append)
    for state in ("done", "rejected", "skipped"):
        monkeypatch.setattr(tasks.pipeline, "process_job", lambda _rt, _job, s=state: s)
        assert app.tasks[PROCESS_TASK](f"job-{state}") == state
    assert sent == ["job-done"]

    def broker_down(_job_id: str) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks, "deliver_sender", lambda _app, **_kw: broker_down)
    monkeypatch.setattr(tasks.pipeline, "process_job", lambda _rt, _job: "done")
    assert app.tasks[PROCESS_TASK]("job-x") == "done"  # the sweep sends it later


def test_sweep_finds_lost_deliver_messages_once_they_are_overdue(migrated_settings, sessions):
    settings = migrated_settings
    limit = timedelta(seconds=delivery_time_limit_s(settings))
    job_id = insert_done_job(sessions, settings, "dicom")
    with sessions() as s:
        assert jobs_to_redeliver(s, settings, FINISHED + timedelta(seconds=30)) == []  # in flight
        assert jobs_to_redeliver(s, settings, FINISHED + limit + timedelta(seconds=1)) == [job_id]
        # Only a few sweeps see it: a backlog does not multiply the messages every period.
        window = timedelta(seconds=WINDOW_PERIODS * settings.reconcile_interval_s)
        assert jobs_to_redeliver(s, settings, FINISHED + limit + window - timedelta(seconds=1)) == [job_id]
        assert jobs_to_redeliver(s, settings, FINISHED + limit + window + timedelta(seconds=1)) == []
    # deliver_results ran (it writes the outbox first, also with no destination configured).
    outbox = fhir_outbox(settings)
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / f"{job_id}.json").write_text("{}")
    with sessions() as s:
        assert jobs_to_redeliver(s, settings, FINISHED + limit + timedelta(seconds=1)) == []


def test_sweep_resends_a_pending_delivery_whose_task_died(migrated_settings, sessions):
    settings = migrated_settings
    job_id = insert_done_job(sessions, settings, "dicom")
    with sessions.begin() as s:
        row = deliveries.ensure(s, job_id, DeliveryKind.DICOM, "PACS@127.0.0.1:104")
        row_id = row.id
        s.execute(update(Delivery).where(Delivery.id == row_id).values(updated_at=FINISHED))
    limit = timedelta(seconds=delivery_time_limit_s(settings))
    sent: list[str] = []
    assert redeliver(sessions, settings, sent.append, now=FINISHED + timedelta(seconds=60)) == 0
    assert redeliver(sessions, settings, sent.append, now=FINISHED + limit + timedelta(seconds=1)) == 1
    assert sent == [job_id]
    with sessions.begin() as s:
        s.execute(update(Delivery).where(Delivery.id == row_id).values(state=DeliveryState.SENT.value))
    with sessions() as s:  # sent rows, and a job that has rows, are left alone
        assert jobs_to_redeliver(s, settings, FINISHED + limit + timedelta(seconds=1)) == []
