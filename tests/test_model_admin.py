"""Model store administration: promote, rollback, their database record, the lease lock, and
hot reload through a real Celery worker (integration)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from schemas import ModelAction
from tests.modelgen import write_tiny_version
from worker.classify.export import ensure_export
from worker.cli.main import app as cli_app
from worker.db.engine import make_engine, make_session_factory
from worker.db.lease import DbLease, LockHeld
from worker.db.models import Lock, ModelEvent, utcnow
from worker.store import admin
from worker.store.versions import ModelStore


@pytest.fixture(scope="session")
def tiny_model_dir_2(tmp_path_factory):
    return write_tiny_version(tmp_path_factory.mktemp("tiny-model-2") / "tiny-2", version="tiny-2", seed=1)


@pytest.fixture
def two_versions(migrated_settings, tiny_model_dir, tiny_model_dir_2):
    store = ModelStore(migrated_settings.model_store_dir, export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    store.add_version(tiny_model_dir_2)
    return store


def _events(sessions):
    with sessions() as s:
        return s.scalars(select(ModelEvent).order_by(ModelEvent.created_at)).all()


def test_promote_and_rollback_are_recorded_with_who_and_why(two_versions, sessions):
    store = two_versions
    change = admin.promote(store, sessions, "tiny-2", "dr.a", "better on the audit set")
    assert store.current_version() == "tiny-2" and change.previous_version == "tiny-1"
    assert change.action is ModelAction.PROMOTE
    back = admin.rollback(store, sessions, "dr.b", "too many urgent referrals")
    assert store.current_version() == "tiny-1" and back.previous_version == "tiny-2"
    events = _events(sessions)
    assert [(e.action, e.version, e.previous_version, e.actor) for e in events] == [
        ("promote", "tiny-2", "tiny-1", "dr.a"), ("rollback", "tiny-1", "tiny-2", "dr.b")]
    assert events[1].reason == "too many urgent referrals"
    # rolling back a rollback returns to the version before it
    admin.rollback(store, sessions, "dr.b", "undo")
    assert store.current_version() == "tiny-2"


def test_refusals_leave_pointer_and_log_unchanged(two_versions, sessions):
    store = two_versions
    with pytest.raises(admin.AdminError, match="reason"):
        admin.promote(store, sessions, "tiny-2", "x", "  ")
    with pytest.raises(admin.AdminError, match="not in the store"):
        admin.promote(store, sessions, "nope", "x", "why")
    with pytest.raises(admin.AdminError, match="already"):
        admin.promote(store, sessions, "tiny-1", "x", "why")
    with pytest.raises(admin.AdminError, match="roll back"):
        admin.rollback(store, sessions, "x", "why")
    assert store.current_version() == "tiny-1" and _events(sessions) == []


def test_corrupt_version_is_never_promoted(two_versions, sessions):
    store = two_versions
    path = store.model_path("tiny-2")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(Exception, match="sha256"):
        admin.promote(store, sessions, "tiny-2", "x", "why")
    assert store.current_version() == "tiny-1"


def test_seed_event_recorded_once(two_versions, sessions):
    assert admin.record_seed(two_versions, sessions) is True
    assert admin.record_seed(two_versions, sessions) is False
    (event,) = _events(sessions)
    assert (event.action, event.version) == ("seed", "tiny-1")


def test_staging_leftover_is_not_a_version(two_versions):
    leftover = two_versions.versions_dir / ".tiny-3.abc"
    leftover.mkdir()
    (leftover / "model.json").write_text("{}")
    assert two_versions.list_versions() == ["tiny-1", "tiny-2"]


def test_models_cli_list_show_promote_rollback(two_versions, migrated_settings):
    runner = CliRunner()
    home = ["--home", str(migrated_settings.home)]
    out = runner.invoke(cli_app, ["models", "list", *home])
    assert out.exit_code == 0, out.output
    assert "* tiny-1" in out.output and "  tiny-2" in out.output
    out = runner.invoke(cli_app, ["models", "promote", "tiny-2", "--reason", "test", "--by", "qa", *home])
    assert out.exit_code == 0 and "promoted tiny-2 (was tiny-1) by qa" in out.output
    out = runner.invoke(cli_app, ["models", "show", "tiny-2", "--history", *home])
    assert out.exit_code == 0 and '"current": true' in out.output and '"actor": "qa"' in out.output
    out = runner.invoke(cli_app, ["models", "rollback", "--reason", "test", *home])
    assert out.exit_code == 0 and "rolled back to tiny-1" in out.output
    out = runner.invoke(cli_app, ["models", "promote", "tiny-2", *home])
    assert out.exit_code != 0  # --reason is required


# ----------------------------------------------------------------------------- the lease

def test_lease_is_exclusive_expires_and_is_released(sessions):
    a, b = DbLease(sessions, "t", ttl_s=60), DbLease(sessions, "t", ttl_s=60)
    assert a.acquire() and not b.acquire()
    with pytest.raises(LockHeld):
        with DbLease(sessions, "t", ttl_s=60):
            pass
    with sessions.begin() as s:  # a's holder died: its lease runs out
        s.execute(update(Lock).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert b.acquire()
    assert not a.renew() and a.lost.is_set()  # a learns it lost the lease
    a.release()  # releasing a lost lease does not free b's
    assert not DbLease(sessions, "t", ttl_s=60).acquire()
    b.release()
    assert DbLease(sessions, "t", ttl_s=60).acquire()


def _race(sessions, n=6) -> int:
    barrier = threading.Barrier(n)
    won = []

    def contend():
        lease = DbLease(sessions, "race", ttl_s=60)
        barrier.wait()
        if lease.acquire():
            won.append(lease.holder)

    threads = [threading.Thread(target=contend) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(won)


def test_lease_race_has_one_winner_sqlite(sessions):
    assert _race(sessions) == 1


@pytest.mark.integration
def test_lease_race_has_one_winner_postgres(postgres_url):
    from worker.db.migrate import upgrade

    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        sessions = make_session_factory(engine)
        assert _race(sessions) == 1
        with sessions.begin() as s:  # expired: again exactly one of many takes it over
            s.execute(update(Lock).values(expires_at=utcnow() - timedelta(seconds=1)))
        assert _race(sessions) == 1
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- real worker

@pytest.mark.integration
def test_promotion_rollback_and_retrain_hot_reload_through_a_real_worker(
        tmp_path, postgres_url, redis_url, tiny_model_dir, tiny_model_dir_2):
    from celery.contrib.testing.worker import start_worker

    from tests.conftest import make_settings
    from tests.imagegen import jpeg_bytes, lesion_rgb
    from tests.retraingen import write_tiny_dataset
    from worker.messaging.celery_worker import create_worker_app
    from worker.messaging.queues import RETRAIN_QUEUE, RETRAIN_TASK, TRIAGE_QUEUE
    from worker.client import TriageClient
    from worker.db.models import Job, Prediction, RetrainRun
    from worker.db.migrate import upgrade

    settings = make_settings(
        tmp_path / "home", database_url=postgres_url, broker_url=redis_url,
        training_data_dirs=[write_tiny_dataset(tmp_path / "data", per_class=25)],
        retrain_trainer="tests.retraingen:tiny_trainer", retrain_eval_fraction=0.3,
        retrain_max_ece=0.5, retrain_min_positives=3)
    settings.ensure_folders()
    upgrade(settings.database_url)
    store = ModelStore(settings.model_store_dir, export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    store.add_version(tiny_model_dir_2)
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    app = create_worker_app(settings)

    def classify(client: TriageClient, seed: int) -> str:
        job_id = client.submit(jpeg_bytes(lesion_rgb(seed=seed)), original_name=f"{seed}.jpg").job_id
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sessions() as s:
                if s.get(Job, job_id).state == "done":
                    return s.scalars(select(Prediction.model_version)
                                     .where(Prediction.job_id == job_id)).one()
            time.sleep(0.1)
        raise AssertionError("job not done")

    try:
        with start_worker(app, pool="solo", perform_ping_check=False,
                          queues=[TRIAGE_QUEUE, RETRAIN_QUEUE], shutdown_timeout=30), \
                TriageClient(settings) as client:
            assert classify(client, 1) == "tiny-1"
            first = app._triage_runtime.models._classifier
            assert classify(client, 2) == "tiny-1"
            assert app._triage_runtime.models._classifier is first  # not reloaded per task
            admin.promote(store, sessions, "tiny-2", "qa", "integration test")
            assert classify(client, 3) == "tiny-2"  # same worker, no restart
            admin.rollback(store, sessions, "qa", "integration test")
            assert classify(client, 4) == "tiny-1"

            app.send_task(RETRAIN_TASK, args=["manual"])  # routed to the "retrain" queue
            deadline = time.monotonic() + 120
            run = None
            while time.monotonic() < deadline:
                with sessions() as s:
                    run = s.scalars(select(RetrainRun)).one_or_none()
                if run is not None and run.state != "running":
                    break
                time.sleep(0.5)
            assert run is not None and run.state == "promoted", run and (run.error, run.decision)
            assert store.current_version() == run.challenger_version
            assert classify(client, 5) == run.challenger_version
        actions = [(e.action, e.actor) for e in _events(sessions)]
        assert actions == [("promote", "qa"), ("rollback", "qa"), ("promote", "retrain")]
    finally:
        engine.dispose()
