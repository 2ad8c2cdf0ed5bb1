"""``melanoma-triage run``: one process tree on the embedded defaults. The parent watches
the intake folder and supervises the children (triage, retrain and deliver workers, beat):
a child that dies is restarted with backoff (``worker.process.supervisor``). The parent never
imports TensorFlow."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from worker.messaging.celery_app import QUEUES
from worker.client import TriageClient
from worker.messaging.filesystem_broker import prepare_control_folder
from worker.process.home import prepare
from worker.intake.watcher import IntakeWatcher
from worker.messaging.queues import DELIVER_QUEUE, MAINTENANCE_QUEUE, RETRAIN_QUEUE, TRIAGE_QUEUE
from worker.settings import Settings
from worker.store.versions import ModelStore
from worker.process.supervisor import GaveUp, Supervisor

log = logging.getLogger(__name__)

#: What ``celery -A`` loads: the worker app, built from the TRIAGE_* environment.
CELERY_APP = "worker.messaging.celery_worker:app"


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
        # The doors listen where the banner says, also when settings came from code.
        "TRIAGE_DICOM_AE_TITLE": settings.dicom_ae_title,
        "TRIAGE_DICOM_PORT": str(settings.dicom_port),
        "TRIAGE_HTTP_PORT": str(settings.http_port),
    })
    return env


def celery_commands(settings: Settings) -> dict[str, list[str]]:
    """The Celery children of ``run``, by name. On the embedded broker the cluster
    features (mingle, gossip) are off: one machine has no neighbours, and a restarted
    worker is ready a second sooner."""
    celery = [sys.executable, "-m", "celery", "-A", CELERY_APP]
    solo_host = ["--without-mingle", "--without-gossip"] if settings.uses_filesystem_broker else []
    return {
        # The reconciler's queue beside "triage": it never waits behind a backlog.
        "worker": celery + ["worker", "--loglevel=INFO", "--pool=prefork",
                            f"--concurrency={settings.worker_concurrency}",
                            f"--queues={TRIAGE_QUEUE},{MAINTENANCE_QUEUE}",
                            "--hostname=triage@%h", *solo_host],
        # Its own process: an hour of retraining must not hold up triage.
        "retrain-worker": celery + ["worker", "--loglevel=INFO", "--pool=prefork",
                                    "--concurrency=1", f"--queues={RETRAIN_QUEUE}",
                                    "--hostname=retrain@%h", *solo_host],
        # Results to PACS/FHIR/webhooks wait through retries: never in the triage worker.
        "deliver-worker": celery + ["worker", "--loglevel=INFO", "--pool=prefork",
                                    "--concurrency=1", f"--queues={DELIVER_QUEUE}",
                                    "--hostname=deliver@%h", *solo_host],
        "beat": celery + ["beat", "--loglevel=INFO",
                          f"--schedule={settings.home / 'celerybeat-schedule'}"],
    }


def door_commands(settings: Settings) -> dict[str, list[str]]:
    """The network doors as supervised children of ``run``, each the same command as its
    own container in production: the DICOM receiver and the HTTP API (on unless turned off
    with TRIAGE_DICOM_ENABLED / TRIAGE_HTTP_ENABLED). Processes of their own, not threads
    here: a crashed door is restarted like a worker, and the watcher never waits on one."""
    cli = [sys.executable, "-m", "worker"]
    doors = {"dicom": cli + ["receive-dicom"], "http": cli + ["serve"]}
    enabled = {"dicom": settings.dicom_enabled, "http": settings.http_enabled}
    return {name: cmd for name, cmd in doors.items() if enabled[name]}


def door_banner(settings: Settings) -> str:
    """Where hospitals reach the doors (for the ``run`` banner)."""
    lines = []
    if settings.dicom_enabled:
        lines.append(f"  DICOM:    AE {settings.dicom_ae_title} on port {settings.dicom_port}")
    if settings.http_enabled:
        host = "localhost" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
        lines.append(f"  HTTP API: http://{host}:{settings.http_port}/v1/jobs (OpenAPI at /docs)")
    return "".join(line + "\n" for line in lines)


def supervisor_for(settings: Settings) -> Supervisor:
    return Supervisor({**celery_commands(settings), **door_commands(settings)},
                      env=child_env(settings),
                      max_restarts=settings.supervisor_max_restarts,
                      window_s=settings.supervisor_window_s,
                      backoff_max_s=settings.supervisor_backoff_max_s)


def run_service(settings: Settings) -> int:
    """Prepare the home, start the children, watch the intake folder here; 1 when a child
    failed too often too fast, 0 after a signal."""
    prepare(settings)
    if ModelStore(settings.model_store_dir).current_version() is None:
        log.error("the model store %s has no current model: train one (melanoma-triage train) "
                  "and promote it (melanoma-triage models promote)", settings.model_store_dir)
        return 2
    if settings.uses_filesystem_broker:  # before any child binds a queue: kombu's create races
        repaired = prepare_control_folder(settings.broker_dir / "control", QUEUES)
        if repaired:
            log.warning("embedded broker: repaired %s", ", ".join(repaired))
    supervisor = supervisor_for(settings)
    stop = threading.Event()

    def _stop(signum, _frame) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    supervisor.start_all()
    print(f"melanoma-triage running. Drop images into {settings.intake_dir}\n"
          f"  reports:  {settings.reports_dir}\n  rejected: {settings.rejected_dir}\n"
          f"  model:    {ModelStore(settings.model_store_dir).current_version()}\n"
          f"{door_banner(settings)}"
          "Press Ctrl-C to stop.", flush=True)
    try:
        with TriageClient(settings) as client:
            watcher = IntakeWatcher(client.intake, settings.intake_dir, settings.stable_scans)
            return _watch(watcher, supervisor, stop, settings.poll_interval_s)
    finally:
        supervisor.stop_all(settings.task_time_limit_s)
        print("melanoma-triage stopped.", flush=True)


class _ScanErrors:
    """Logs a failing scan by error type only (a message may hold a patient's file name),
    at most once a minute with the count since: a scan that keeps failing cannot flood."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self.count = 0
        self.last_logged = float("-inf")

    def record(self, exc: Exception) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last_logged >= self.every_s:
            log.error("intake scan failed (%s; %d failure(s) since the last report); the "
                      "service goes on", type(exc).__name__, self.count)
            self.count, self.last_logged = 0, now


def _watch(watcher: IntakeWatcher, supervisor: Supervisor, stop: threading.Event,
           interval_s: float) -> int:
    """Scan and supervise until stopped. One scan's unexpected error is logged and the
    loop goes on; only a child that failed too often too fast ends it (exit code 1)."""
    errors = _ScanErrors()
    while not stop.is_set():
        try:
            watcher.scan_once()
        except Exception as exc:  # noqa: BLE001 - contained: the next scan tries again
            errors.record(exc)
        try:
            supervisor.check()
        except GaveUp:
            return 1
        stop.wait(interval_s)
    return 0
