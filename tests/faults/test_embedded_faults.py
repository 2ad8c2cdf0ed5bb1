"""Faults of ``melanoma-triage run`` on the embedded defaults (issue 18): the real process
tree (SQLite, filesystem broker, Celery workers, beat, doors), the real model, kill -9 and
SIGSTOP from outside. Each test fails on the code before issue 18:

* an idle triage pool child killed: its replacement waited for ever on the lock the dead
  child held (billiard issue 104) and every later image stayed ``queued``;
* a triage worker that is alive but runs nothing: nothing noticed, ``/healthz`` said ok;
* a door that crash-loops: the supervisor stopped the whole service.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.faults.services import EmbeddedRun, check_exactly_once, free_port, wait_until
from tests.imagegen import jpeg_bytes, lesion_rgb

pytestmark = pytest.mark.integration

#: Kills of each kind here (CI); benchmarks/soak.py --embedded does 10 of each.
KILLS = 3
#: Seconds an image may take after a kill: a worker start-up and the image, with room.
AFTER_KILL_S = 90


def _image(seed: int, size=(450, 600)) -> bytes:
    return jpeg_bytes(lesion_rgb(size, seed=seed), quality=90)


@pytest.fixture
def embedded(tmp_path):
    runs: list[EmbeddedRun] = []

    def start(**env) -> EmbeddedRun:
        run = EmbeddedRun(tmp_path / "home", tmp_path / "run.log", env=env)
        runs.append(run)
        return run.start()

    yield start
    for run in runs:
        run.stop()


def _kill_idle_pool_child(run: EmbeddedRun) -> int:
    """SIGKILL the triage pool child while no job runs; returns its pid."""
    wait_until(lambda: run.count("running") == 0 and run.count("queued") == 0, 60, what="idle")
    time.sleep(1.0)  # the child is back in its wait for the next task
    child = wait_until(lambda: run.pool_child("triage"), 60, what="a triage pool child")
    os.kill(child.pid, signal.SIGKILL)
    return child.pid


def test_idle_and_busy_pool_child_kills_never_stall_embedded_triage(embedded):
    run = embedded()
    done = 0
    for i in range(KILLS):  # idle: the kill that stalled the worker for good
        killed = _kill_idle_pool_child(run)
        wait_until(lambda: (c := run.pool_child("triage")) and c.pid != killed, 60,
                   what="a new pool child")
        run.drop(_image(100 + i), f"after_idle_kill_{i}.jpg")
        done += 1
        wait_until(lambda: run.count("done") >= done, AFTER_KILL_S,
                   what=f"the image dropped after idle kill {i + 1} reported")
    for i in range(KILLS):  # busy: killed mid-image; the lease brings the job back
        run.drop(_image(200 + i, size=(1400, 1800)), f"busy_{i}.jpg")
        wait_until(lambda: run.count("running") >= 1, 60, 0.02, what="the image running")
        child = run.pool_child("triage")
        if child is not None and run.count("running"):
            os.kill(child.pid, signal.SIGKILL)
        done += 1
        wait_until(lambda: run.count("done") >= done, AFTER_KILL_S + 60,
                   what=f"the image killed busy ({i + 1}) reported")
    check_exactly_once(run.url, run.home / "reports", run.home / "rejected")
    roles = run.status()["roles"]
    assert roles["triage"]["ok"] and roles["maintenance"]["ok"], roles
    assert run.stop() == 0


def test_a_stuck_triage_worker_is_reported_down_and_restarted(embedded):
    """The pool child stopped (SIGSTOP): alive, running nothing, as in the billiard stall.
    The liveness probe goes unanswered: /healthz answers 503 naming triage, the supervisor
    restarts the worker, and the image that waited is reported. The reconciler (its own
    worker) goes on meanwhile."""
    port = free_port()
    run = embedded(TRIAGE_HEALTH_PROBE_INTERVAL_S="1", TRIAGE_HEALTH_PROBE_TIMEOUT_S="20",
                   TRIAGE_HTTP_ENABLED="true", TRIAGE_HTTP_PORT=str(port), TRIAGE_HTTP_HOST="127.0.0.1")
    healthz = f"http://127.0.0.1:{port}/healthz"
    wait_until(lambda: _get(healthz) is not None and _get(healthz).status_code == 200, 120,
               what="/healthz ok")
    stuck = run.pool_child("triage")
    old_main = run.worker_main("triage").pid
    os.kill(stuck.pid, signal.SIGSTOP)
    try:
        run.drop(_image(300), "while_stuck.jpg")
        down = wait_until(lambda: (r := _get(healthz)) is not None and r.status_code == 503 and r, 60,
                          what="/healthz 503")
        body = down.json()
        assert "role:triage" in body["failing"], body
        assert body["roles"]["maintenance"]["ok"], body  # the reconciler's worker is not stuck
        wait_until(lambda: run.worker_main("triage") is not None
                   and run.worker_main("triage").pid != old_main, 60, what="triage restarted")
    finally:
        try:
            os.kill(stuck.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: run.count("done") >= 1, AFTER_KILL_S, what="the waiting image reported")
    wait_until(lambda: (r := _get(healthz)) is not None and r.status_code == 200, 90,
               what="/healthz ok again")
    assert "triage is down (liveness probe unanswered" in run.log_text()
    assert run.status()["roles"]["triage"]["restarts"] >= 1
    check_exactly_once(run.url, run.home / "reports", run.home / "rejected")


def test_a_crash_looping_door_never_stops_the_service(embedded):
    """The HTTP door killed 6 times within a minute: before, the supervisor gave up and
    stopped everything; now the door is reported crash-looping, restarted with backoff, and
    the watcher and the workers go on."""
    port = free_port()
    run = embedded(TRIAGE_HTTP_ENABLED="true", TRIAGE_HTTP_PORT=str(port), TRIAGE_HTTP_HOST="127.0.0.1",
                   TRIAGE_SUPERVISOR_BACKOFF_MAX_S="4")
    for _ in range(6):
        door = wait_until(lambda: run.child("serve"), 60, 0.1, what="the HTTP door")
        os.kill(door.pid, signal.SIGKILL)
        wait_until(lambda: (d := run.child("serve")) is None or d.pid != door.pid, 30, 0.1,
                   what="the door gone")
    assert run.alive()
    roles = run.status()["roles"]
    assert not roles["http"]["ok"] and "crash-looping" in roles["http"]["detail"], roles
    run.drop(_image(400), "during_door_crashes.jpg")
    wait_until(lambda: run.count("done") >= 1, AFTER_KILL_S, what="the image reported meanwhile")
    wait_until(lambda: (r := _get(f"http://127.0.0.1:{port}/healthz")) is not None, 60,
               what="the door back")
    assert run.alive()
    assert "giving up" not in run.log_text()
    assert run.stop() == 0


def _get(url: str):
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


def test_a_stuck_beat_is_reported_down_and_restarted(embedded):
    """Beat stopped (SIGSTOP): no reconciler pass is scheduled, nothing notices. Its tick
    stops reaching the maintenance worker: beat is reported down and restarted."""
    run = embedded(TRIAGE_HEALTH_PROBE_INTERVAL_S="1", TRIAGE_HEALTH_PROBE_TIMEOUT_S="15",
                   TRIAGE_RECONCILE_INTERVAL_S="2")
    wait_until(lambda: run.status()["roles"].get("beat", {}).get("detail") == "ticking", 120,
               1.0, what="beat ticking")  # a tick arrived: beat runs its schedule
    beat = run.child("beat")
    os.kill(beat.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: (b := run.child("beat")) is not None and b.pid != beat.pid, 120,
                   what="beat restarted")
    finally:
        try:
            os.kill(beat.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert "beat: beat is down (no tick for" in run.log_text()  # found by its missing tick
    wait_until(lambda: run.status()["roles"]["beat"]["ok"], 120, 1.0, what="beat up again")
    assert run.status()["roles"]["beat"]["restarts"] >= 1
    assert run.stop() == 0
