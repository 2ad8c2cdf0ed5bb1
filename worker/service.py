"""``melanoma-triage run``: one process tree (watcher here, a Celery worker and beat as
children) on the embedded defaults. The parent never imports TensorFlow."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from worker.celery_app import RETRAIN_QUEUE, TRIAGE_QUEUE, create_app, send_process
from worker.db.engine import make_engine, make_session_factory
from worker.db.migrate import upgrade
from worker.intake.admission import Intake
from worker.intake.watcher import IntakeWatcher
from worker.model_store import ModelStore
from worker.settings import Settings

log = logging.getLogger(__name__)


def prepare(settings: Settings) -> None:
    """Folders, schema and model store: everything a fresh home folder needs."""
    settings.ensure_folders()
    upgrade(settings.database_url)
    store = ModelStore(settings.model_store_dir)
    store.seed_from()
    _record_seed(settings, store)


def _record_seed(settings: Settings, store: ModelStore) -> None:
    """A ``seed`` model event the first time a store has a current version (one count query after)."""
    from worker.retrain.admin import record_seed

    engine = make_engine(settings.database_url)
    try:
        record_seed(store, make_session_factory(engine))
    finally:
        engine.dispose()


def child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "TRIAGE_HOME": str(settings.home),
        "TRIAGE_DATABASE_URL": settings.database_url,
        "TRIAGE_BROKER_URL": settings.broker_url,
        "TRIAGE_MODEL_STORE_DIR": str(settings.model_store_dir),
        "TRIAGE_REPORTS_DIR": str(settings.reports_dir),
        "TRIAGE_REJECTED_DIR": str(settings.rejected_dir),
        "TRIAGE_ARCHIVE_DIR": str(settings.archive_dir),
        "TRIAGE_INTAKE_DIR": str(settings.intake_dir),
        # One TensorFlow/BLAS thread per worker process unless configured otherwise.
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", str(settings.tf_threads)),
        "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    })
    return env


def celery_commands(settings: Settings) -> dict[str, list[str]]:
    celery = [sys.executable, "-m", "celery", "-A", "worker.celery_app"]
    return {
        "worker": celery + ["worker", "--loglevel=INFO", "--pool=prefork",
                            f"--concurrency={settings.worker_concurrency}",
                            f"--queues={TRIAGE_QUEUE}", "--hostname=triage@%h"],
        # Its own process: an hour of retraining must not hold up triage.
        "retrain-worker": celery + ["worker", "--loglevel=INFO", "--pool=prefork",
                                    "--concurrency=1", f"--queues={RETRAIN_QUEUE}",
                                    "--hostname=retrain@%h"],
        "beat": celery + ["beat", "--loglevel=INFO",
                          f"--schedule={settings.home / 'celerybeat-schedule'}"],
    }


def run_service(settings: Settings) -> int:
    prepare(settings)
    if ModelStore(settings.model_store_dir).current_version() is None:
        log.error("the model store %s has no current model: train one (melanoma-triage train) "
                  "and promote it (melanoma-triage models promote)", settings.model_store_dir)
        return 2
    env = child_env(settings)
    children = {name: subprocess.Popen(cmd, env=env, start_new_session=True)
                for name, cmd in celery_commands(settings).items()}
    stop = threading.Event()

    def _stop(signum, _frame) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    app = create_app(settings)
    engine = make_engine(settings.database_url)
    intake = Intake(settings, make_session_factory(engine), lambda job_id: send_process(app, job_id))
    watcher = IntakeWatcher(intake, settings.intake_dir, settings.stable_scans)
    print(f"melanoma-triage running. Drop images into {settings.intake_dir}\n"
          f"  reports:  {settings.reports_dir}\n  rejected: {settings.rejected_dir}\n"
          f"  model:    {ModelStore(settings.model_store_dir).current_version()}\n"
          "Press Ctrl-C to stop.", flush=True)
    exit_code = 0
    try:
        while not stop.is_set():
            watcher.scan_once()
            for name, proc in children.items():
                if proc.poll() is not None:
                    log.error("%s exited with code %s; stopping", name, proc.returncode)
                    exit_code = 1
                    stop.set()
            stop.wait(settings.poll_interval_s)
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # Celery warm shutdown: finish the current task
        for name, proc in children.items():
            try:
                proc.wait(timeout=settings.task_time_limit_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                proc.kill()
        engine.dispose()
        print("melanoma-triage stopped.", flush=True)
    return exit_code
