"""Where Celery stops: plain modules never import it, and importing the ``celery -A``
entry point builds no settings (they are read when Celery asks for the app)."""

from __future__ import annotations

import os
import subprocess
import sys

PLAIN = ("worker.jobs.pipeline", "worker.jobs.runtime", "worker.intake.admission", "worker.intake.watcher",
         "worker.intake.rejections", "worker.jobs.reconciler", "worker.process.home", "worker.db.jobs")


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_plain_modules_do_not_import_celery():
    code = f"import sys, {', '.join(PLAIN)}; print('celery' in sys.modules)"
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_entry_module_reads_the_environment_only_when_asked_for_the_app():
    # An invalid setting: building Settings() would raise, importing the module must not.
    code = ("import worker.messaging.celery_worker as w\n"
            "try:\n    w.app\nexcept Exception as exc:\n    print(type(exc).__name__)\n")
    out = _run(code, TRIAGE_MAX_ATTEMPTS="0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ValidationError"


def test_celery_finds_the_worker_app_with_its_tasks(tmp_path):
    code = ("from celery.app.utils import find_app\n"
            "from worker.messaging.queues import PROCESS_TASK, RECONCILE_TASK, RETRAIN_TASK\n"
            "from worker.process.service import CELERY_APP\n"
            "app = find_app(CELERY_APP)\n"
            "print(all(t in app.tasks for t in (PROCESS_TASK, RECONCILE_TASK, RETRAIN_TASK)))\n")
    out = _run(code, TRIAGE_HOME=str(tmp_path / "home"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
