"""``melanoma-triage run``: one process tree (watcher here, a Celery worker and beat as
children) on the embedded defaults. The parent never imports TensorFlow."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from worker.client import TriageClient
from worker.home import prepare
from worker.intake.watcher import IntakeWatcher
from worker.queues import RETRAIN_QUEUE, TRIAGE_QUEUE
from worker.settings import Settings
from worker.store.versions import ModelStore

log = logging.getLogger(__name__)

#: What ``celery -A`` loads: the worker app, built from the TRIAGE_* environment.
CELERY_APP = "worker.celery_worker:app"


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
    celery = [sys.executable, "-m", "celery", "-A", CELERY_APP]
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
    """Prepare the home, start worker and beat as children, watch the intake folder here."""
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
    print(f"melanoma-triage running. Drop images into {settings.intake_dir}\n"
          f"  reports:  {settings.reports_dir}\n  rejected: {settings.rejected_dir}\n"
          f"  model:    {ModelStore(settings.model_store_dir).current_version()}\n"
          "Press Ctrl-C to stop.", flush=True)
    try:
        with TriageClient(settings) as client:
            watcher = IntakeWatcher(client.intake, settings.intake_dir, settings.stable_scans)
            return _watch(watcher, children, stop, settings.poll_interval_s)
    finally:
        _stop_children(children, settings.task_time_limit_s)
        print("melanoma-triage stopped.", flush=True)


def _watch(watcher: IntakeWatcher, children: dict[str, subprocess.Popen],
           stop: threading.Event, interval_s: float) -> int:
    """Scan until stopped; a child that exits stops everything (exit code 1)."""
    exit_code = 0
    while not stop.is_set():
        watcher.scan_once()
        for name, proc in children.items():
            if proc.poll() is not None:
                log.error("%s exited with code %s; stopping", name, proc.returncode)
                exit_code = 1
                stop.set()
        stop.wait(interval_s)
    return exit_code


def _stop_children(children: dict[str, subprocess.Popen], timeout_s: float) -> None:
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # Celery warm shutdown: finish the current task
    for name, proc in children.items():
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", name)
            proc.kill()
