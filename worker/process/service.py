"""``melanoma-triage run``: one process tree on the embedded defaults. The parent watches
the intake folder and supervises the children (triage, maintenance, retrain and deliver
workers, beat, the doors): a child that dies is restarted with backoff
(``worker.process.supervisor``), a worker that stops making progress is found by its
liveness probe (``worker.process.liveness``) and restarted, and what the supervisor sees is
written to ``role_health`` for ``/healthz``, ``status`` and ``/metrics``. Only a signal
stops it. The parent never imports TensorFlow."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone

from worker.messaging.celery_app import QUEUES, create_app, probe_sender, process_sender
from worker.client import TriageClient
from worker.db import role_health
from worker.db.role_health import PROBED_ROLES
from worker.process.at_rest import apply_data_group, apply_umask
from worker.process.liveness import CHILD_ROLES, ROLE_CHILDREN, LivenessProber, resend_oldest_queued
from worker.messaging.filesystem_broker import prepare_control_folder
from worker.process.home import prepare
from worker.intake.watcher import IntakeWatcher
from worker.messaging.queues import DELIVER_QUEUE, MAINTENANCE_QUEUE, RETRAIN_QUEUE, TRIAGE_QUEUE
from worker.settings import Settings
from worker.store.versions import ModelStore
from worker.messaging.queues import probe_queue
from worker.process.roles import ROLES, children_for
from worker.process.supervisor import Supervisor

log = logging.getLogger(__name__)

#: What ``celery -A`` loads: the worker app, built from the TRIAGE_* environment.
CELERY_APP = "worker.messaging.celery_worker:app"
BEAT_SCHEDULER = "worker.messaging.beat_lease:LeasedScheduler"


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
        # Storage shared through the database (issue 22), also when settings came from code.
        "TRIAGE_STORAGE": settings.storage,
    })
    for name, value in (("TRIAGE_REPORTS_EXPORT_DIR", settings.reports_export_dir),
                        ("TRIAGE_RETENTION_DAYS", settings.retention_days)):
        if value is not None:
            env[name] = str(value)
    return env


def celery_commands(settings: Settings) -> dict[str, list[str]]:
    """The Celery children of ``run``, by name. On the embedded broker the cluster
    features (mingle, gossip) are off: one machine has no neighbours, and a restarted
    worker is ready a second sooner."""
    celery = [sys.executable, "-m", "celery", "-A", CELERY_APP]
    solo_host = ["--without-mingle", "--without-gossip"] if settings.uses_filesystem_broker else []
    return {
        # Each worker also consumes its own probe queue (worker.process.liveness).
        "worker": celery + ["worker", "--loglevel=INFO", "--pool=prefork",
                            f"--concurrency={settings.worker_concurrency}",
                            f"--queues={TRIAGE_QUEUE},{probe_queue(TRIAGE_QUEUE)}",
                            "--hostname=triage@%h", *solo_host],
        # The reconciler, the redelivery sweep and beat's tick in a process of their own
        # (solo: no pool to get stuck): never behind a backlog, nor behind a stuck triage
        # worker whose jobs it is there to bring back.
        "maintenance-worker": celery + ["worker", "--loglevel=INFO", "--pool=solo",
                                        f"--queues={MAINTENANCE_QUEUE},{probe_queue(MAINTENANCE_QUEUE)}",
                                        "--hostname=maintenance@%h", *solo_host],
        # Its own process: an hour of retraining must not hold up triage.
        "retrain-worker": celery + ["worker", "--loglevel=INFO", "--pool=prefork",
                                    "--concurrency=1", f"--queues={RETRAIN_QUEUE}",
                                    "--hostname=retrain@%h", *solo_host],
        # Results to PACS/FHIR/webhooks wait through retries: never in the triage worker.
        "deliver-worker": celery + ["worker", "--loglevel=INFO", "--pool=prefork",
                                    "--concurrency=1",
                                    f"--queues={DELIVER_QUEUE},{probe_queue(DELIVER_QUEUE)}",
                                    "--hostname=deliver@%h", *solo_host],
        # Schedules only while it holds the database lease "beat": one beat across hosts.
        "beat": celery + ["beat", "--loglevel=INFO", f"--scheduler={BEAT_SCHEDULER}",
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


def supervisor_for(settings: Settings, roles: frozenset[str] = frozenset(ROLES)) -> Supervisor:
    """The children the ``roles`` of this host start (``run --roles``; default all)."""
    return Supervisor(children_for(roles, {**celery_commands(settings), **door_commands(settings)}),
                      env=child_env(settings),
                      max_restarts=settings.supervisor_max_restarts,
                      window_s=settings.supervisor_window_s,
                      backoff_max_s=settings.supervisor_backoff_max_s)


def run_service(settings: Settings, roles: frozenset[str] = frozenset(ROLES)) -> int:
    """Prepare the home, start the children of ``roles``, watch the intake folder here (role
    ``intake``) until a signal (then 0). A child that fails, however often, is restarted and
    reported, never fatal."""
    apply_umask()  # before the first file: the children inherit it
    prepare(settings)
    apply_data_group(settings)
    if ModelStore(settings.model_store_dir).current_version() is None:
        log.error("the model store %s has no current model: train one (melanoma-triage train) "
                  "and promote it (melanoma-triage models promote)", settings.model_store_dir)
        return 2
    if settings.uses_filesystem_broker:  # before any child binds a queue: kombu's create races
        repaired = prepare_control_folder(settings.broker_dir / "control", QUEUES)
        if repaired:
            log.warning("embedded broker: repaired %s", ", ".join(repaired))
    supervisor = supervisor_for(settings, roles)
    stop = threading.Event()

    def _stop(signum, _frame) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    supervisor.start_all()
    intake_line = (f"Drop images into {settings.intake_dir}" if "intake" in roles
                   else "No intake folder on this host (role intake not given)")
    print(f"melanoma-triage running ({', '.join(sorted(roles))}). {intake_line}\n"
          f"  reports:  {_where(settings, 'reports')}\n  rejected: {_where(settings, 'rejected')}\n"
          f"  model:    {ModelStore(settings.model_store_dir).current_version()}\n"
          f"{door_banner(settings) if {'dicom', 'http'} & roles else ''}"
          "Press Ctrl-C to stop.", flush=True)
    health: HealthReporter | None = None
    try:
        with TriageClient(settings) as client:
            watcher = (IntakeWatcher(client.intake, settings.intake_dir, settings.stable_scans)
                       if "intake" in roles else None)
            health = HealthReporter(settings, client.intake.sessions, supervisor)
            return _watch(watcher, supervisor, health, stop, settings.poll_interval_s)
    finally:
        supervisor.stop_all(settings.task_time_limit_s)
        if health is not None:
            health.stopped()
        print("melanoma-triage stopped.", flush=True)


class HealthReporter:
    """Writes what the supervisor sees to ``role_health`` and runs the liveness prober;
    a role whose probe went unanswered is restarted. Every failure here is logged by type
    and the loop goes on (the database may be away for a while)."""

    REPORT_EVERY_S = 5.0

    def __init__(self, settings: Settings, sessions, supervisor: Supervisor) -> None:
        self.sessions = sessions
        self.supervisor = supervisor
        celery = create_app(settings)
        local = {CHILD_ROLES[c.name] for c in supervisor.children if c.name in CHILD_ROLES}
        self.prober = LivenessProber(settings, sessions,  # only the roles this host runs
                                     probe_sender(celery, expires_s=settings.health_probe_timeout_s),
                                     roles=tuple(r for r in PROBED_ROLES if r in local))
        self.send_job = process_sender(celery)
        self.held_per_worker = 2 * settings.worker_concurrency + 1
        self.probe_every_s = min(2.0, settings.health_probe_interval_s)
        self._reported: dict[str, tuple] = {}
        self._last_report = self._last_probe = float("-inf")
        self.errors = _ScanErrors(what="health report")
        try:  # a fresh start: no answer from an earlier run counts, beat's ticks are due
            names = {c.name for c in supervisor.children}
            for role in (*PROBED_ROLES, role_health.BEAT):
                if ROLE_CHILDREN[role] in names:
                    self.prober.restarted(role)
        except Exception as exc:  # noqa: BLE001 - the database may be away: tick() retries
            self.errors.record(exc)

    def tick(self) -> None:
        try:
            self._report()
            if time.monotonic() - self._last_probe >= self.probe_every_s:
                self._last_probe = time.monotonic()
                for role, why in self.prober.check().items():
                    if ROLE_CHILDREN.get(role) in {c.name for c in self.supervisor.children}:
                        self.supervisor.restart(ROLE_CHILDREN[role], f"{role} is down ({why})")
                        self.prober.restarted(role)  # and again once it is started
        except Exception as exc:  # noqa: BLE001 - contained: the next tick tries again
            self.errors.record(exc)

    def _report(self) -> None:
        due = time.monotonic() - self._last_report >= self.REPORT_EVERY_S
        for child, (state, restarts, detail) in self.supervisor.states().items():
            role = CHILD_ROLES.get(child, child)
            if restarts > self._reported.get(role, (None, 0))[1]:  # started again since
                self._after_restart(role)
            if due or self._reported.get(role) != (state, restarts):
                role_health.record_process(self.sessions, role, state, restarts, detail)
                self._reported[role] = (state, restarts)
        if due:
            role_health.record_process(self.sessions, role_health.SUPERVISOR, role_health.RUNNING, 0, None)
            self._last_report = time.monotonic()

    def _after_restart(self, role: str) -> None:
        """A probe sent to the dead process may have died with it: start probing afresh.
        A dead triage worker may also have held a fetched message: send the oldest again."""
        if role in PROBED_ROLES or role == role_health.BEAT:
            self.prober.restarted(role)
        if role == "triage":
            resend_oldest_queued(self.sessions, self.send_job, datetime.now(timezone.utc),
                                 self.held_per_worker)

    def stopped(self) -> None:
        try:
            for role in {*(CHILD_ROLES.get(c.name, c.name) for c in self.supervisor.children),
                         role_health.SUPERVISOR}:
                role_health.record_process(self.sessions, role, role_health.STOPPED, 0, "run stopped")
        except Exception as exc:  # noqa: BLE001 - the database may be the reason we stop
            log.warning("could not record the stop in role_health (%s)", type(exc).__name__)


class _ScanErrors:
    """Logs a failing scan by error type only (a message may hold a patient's file name),
    at most once a minute with the count since: a scan that keeps failing cannot flood."""

    def __init__(self, every_s: float = 60.0, what: str = "intake scan") -> None:
        self.every_s = every_s
        self.what = what
        self.count = 0
        self.last_logged = float("-inf")

    def record(self, exc: Exception) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last_logged >= self.every_s:
            log.error("%s failed (%s; %d failure(s) since the last report); the "
                      "service goes on", self.what, type(exc).__name__, self.count)
            self.count, self.last_logged = 0, now


def _where(settings: Settings, what: str) -> str:
    if settings.storage == "database":
        return f"in the database ({what}/ keys of the blobs table)"
    return str(settings.reports_dir if what == "reports" else settings.rejected_dir)


def _watch(watcher: IntakeWatcher | None, supervisor: Supervisor, health: HealthReporter,
           stop: threading.Event, interval_s: float) -> int:
    """Scan, supervise and probe until stopped (a signal). One scan's unexpected error is
    logged and the loop goes on; no child's failure ends it."""
    errors = _ScanErrors()
    while not stop.is_set():
        try:
            if watcher is not None:  # role intake
                watcher.scan_once()
        except Exception as exc:  # noqa: BLE001 - contained: the next scan tries again
            errors.record(exc)
        supervisor.check()
        health.tick()
        stop.wait(interval_s)
    return 0
