"""The supervisor of ``run``: a dead child is restarted with backoff; repeated fast failures
mark it crash-looping (unhealthy) and never stop the others. Real processes (tiny Python
commands), no Celery."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from worker.process.supervisor import Supervisor

PY = sys.executable


def _until(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_a_killed_child_is_restarted_and_the_others_keep_running(caplog):
    sup = Supervisor({"a": [PY, "-c", "import time; time.sleep(60)"],
                      "b": [PY, "-c", "import time; time.sleep(60)"]}, backoff_max_s=0.2)
    sup.start_all()
    try:
        a, b = sup.children
        first_pid, b_pid = a.proc.pid, b.proc.pid
        t0 = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)

        def restarted():
            sup.check()
            return a.proc is not None and a.proc.pid != first_pid and a.running

        _until(restarted)
        elapsed = time.monotonic() - t0
        assert a.restarts == 1 and elapsed < 5
        assert b.proc.pid == b_pid and b.running  # untouched
        assert "a exited with code -9; restarting" in caplog.text
    finally:
        sup.stop_all(5)
    assert not any(c.running for c in sup.children)


def test_orphans_of_a_dead_child_are_killed_with_it(tmp_path):
    """A Celery main process killed by -9 leaves its pool children; they go with it."""
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    sup = Supervisor({"tree": [PY, "-c", script]}, backoff_max_s=0.2)
    sup.start_all()
    try:
        grandchild = int(_until(lambda: pid_file.exists() and pid_file.read_text()))
        os.kill(sup.children[0].proc.pid, signal.SIGKILL)
        _until(lambda: (sup.check(), sup.children[0].restarts == 1)[1])

        def gone() -> bool:
            try:
                os.kill(grandchild, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{grandchild}/stat") as f:  # reaped by init soon: a zombie counts
                return f.read().split()[2] == "Z"

        _until(gone, 10)
    finally:
        sup.stop_all(5)


def test_a_crash_looping_child_is_reported_and_never_stops_the_others(caplog):
    sup = Supervisor({"broken": [PY, "-c", "raise SystemExit(3)"],
                      "fine": [PY, "-c", "import time; time.sleep(60)"]}, max_restarts=3,
                     window_s=60, backoff_max_s=0.1)
    sup.start_all()
    broken, fine = sup.children
    fine_pid = fine.proc.pid
    try:
        _until(lambda: (sup.check(), broken.restarts >= 5)[1], 30)  # well past max_restarts
        assert broken.crash_looping
        assert sup.states()["broken"][0] == "crash-looping"
        assert "exit code 3" in sup.states()["broken"][2]
        assert fine.running and fine.proc.pid == fine_pid
        assert sup.states()["fine"] == ("running", 0, None)
        assert "crash-looping" in caplog.text
    finally:
        sup.stop_all(5)


def test_restart_kills_a_live_child_that_makes_no_progress(caplog):
    sup = Supervisor({"stuck": [PY, "-c", "import time; time.sleep(60)"]}, backoff_max_s=0.1)
    sup.start_all()
    child = sup.children[0]
    old = child.proc.pid
    try:
        sup.restart("stuck", "liveness probe unanswered for 61 s")
        assert sup.states()["stuck"][0] == "restarting"
        _until(lambda: (sup.check(), child.running and child.proc.pid != old)[1])
        assert child.restarts == 1
        assert "stuck: liveness probe unanswered for 61 s; killing it" in caplog.text
    finally:
        sup.stop_all(5)


def test_backoff_doubles_and_old_exits_leave_the_window():
    now = [0.0]
    sup = Supervisor({"x": [PY, "-c", "pass"]}, max_restarts=5, window_s=60,
                     backoff_max_s=30, clock=lambda: now[0])
    child = sup.children[0]
    delays = []
    for t in (0.0, 1.0, 3.0, 7.0):
        now[0] = t
        sup._exited(child, 1)
        delays.append(child.restart_at - t)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    now[0] = 100.0  # a minute later the old exits no longer count
    sup._exited(child, 1)
    assert len(child.exits) == 1 and child.restart_at == 101.0
