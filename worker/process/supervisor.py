"""A small process supervisor: the children of ``melanoma-triage run`` are restarted when
they die, with backoff, for as long as the service runs.

One dead process must not stop the service: a Celery worker killed by the OOM killer or
by hand is started again within seconds, and the jobs it held come back through their
expired leases (``worker.jobs.reconciler``). A child that keeps dying right after its start
(a broken configuration, a port in use) is reported ``crash-looping`` (unhealthy) after
``max_restarts`` exits within ``window_s`` and is retried every ``backoff_max_s``; it never
stops the other children. Only a signal to ``run`` (Ctrl-C, SIGTERM) stops the tree.
A child that is alive but makes no progress (its liveness probe went unanswered:
``worker.process.liveness``) is killed and restarted the same way (:meth:`Supervisor.restart`).

Each child runs in a session of its own (its process group is its pid): when its main
process dies, the group is killed too, so no orphaned pool process keeps running a task
nobody will acknowledge.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One supervised command and its recent history."""

    name: str
    command: list[str]
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    exits: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    restarts: int = 0
    crash_looping: bool = False
    last_exit: str | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def state(self) -> str:
        """running | restarting | crash-looping (the names of ``worker.db.role_health``)."""
        if self.running and not self.crash_looping:
            return "running"
        return "crash-looping" if self.crash_looping else "restarting"


class Supervisor:
    """Start children, restart the dead ones (call :meth:`check` periodically), stop all."""

    def __init__(self, children: dict[str, list[str]], env: dict[str, str] | None = None,
                 max_restarts: int = 5, window_s: float = 60.0, backoff_max_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.children = [Child(name, list(cmd), env) for name, cmd in children.items()]
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock

    def start_all(self) -> None:
        for child in self.children:
            self._start(child)

    def _start(self, child: Child) -> None:
        child.restart_at = None
        try:
            child.proc = subprocess.Popen(child.command, env=child.env, start_new_session=True)
        except OSError as exc:  # not even started: counts as an exit
            log.error("%s could not be started (%s)", child.name, type(exc).__name__)
            child.proc = None
            self._exited(child, None)

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def check(self) -> None:
        """Reap dead children and restart those whose backoff has passed; never raises for
        a child's failures (a crash-looping child is reported, not fatal)."""
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                code = child.proc.returncode
                _kill_group(child.proc.pid)  # orphaned pool processes of a killed main
                child.proc = None
                self._exited(child, code)
            if child.crash_looping and child.running and child.exits \
                    and self.clock() - child.exits[-1] > self.window_s:
                child.crash_looping = False  # up for a whole window: healthy again
                log.warning("%s has stayed up for %.0f s: no longer crash-looping", child.name,
                            self.window_s)
            if child.proc is None and child.restart_at is not None and self.clock() >= child.restart_at:
                child.restarts += 1
                self._start(child)
                if child.proc is not None:
                    log.warning("%s restarted (pid %d, restart %d)", child.name, child.proc.pid,
                                child.restarts)

    def restart(self, name: str, why: str) -> None:
        """Kill a child that is alive but not working (its whole process group) and restart
        it with the usual backoff."""
        child = self.child(name)
        if child.proc is None:
            return
        log.error("%s: %s; killing it for a restart", child.name, why)
        _kill_group(child.proc.pid)
        with suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=10)
        child.proc = None
        self._exited(child, why)

    def _exited(self, child: Child, code: int | str | None) -> None:
        now = self.clock()
        child.exits.append(now)
        child.last_exit = f"exit code {code}" if not isinstance(code, str) else code
        while child.exits and child.exits[0] < now - self.window_s:
            child.exits.popleft()
        recent = len(child.exits)
        if recent >= self.max_restarts:
            if not child.crash_looping:
                log.critical("%s exited %d times within %.0f s (last: %s): crash-looping; retrying "
                             "every %.0f s, the rest of the service goes on", child.name, recent,
                             self.window_s, child.last_exit, self.backoff_max_s)
            child.crash_looping = True
        delay = min(self.backoff_max_s, 2.0 ** (recent - 1))
        child.restart_at = now + delay
        how = f"was killed ({code})" if isinstance(code, str) else f"exited with code {code}"
        log.error("%s %s; restarting in %.0f s (%d exit(s) within %.0f s)",
                  child.name, how, delay, recent, self.window_s)

    def states(self) -> dict[str, tuple[str, int, str | None]]:
        """Per child: state, restarts and (unless running) why, for the health table."""
        out = {}
        for child in self.children:
            detail = None
            if child.state != "running":
                wait = max(0.0, (child.restart_at or self.clock()) - self.clock())
                detail = (f"{child.state}: {child.last_exit or 'not started'}; "
                          f"next start in {wait:.0f} s")
            out[child.name] = (child.state, child.restarts, detail)
        return out

    def stop_all(self, timeout_s: float) -> None:
        """SIGTERM (Celery: warm shutdown, the running task finishes), wait, then SIGKILL."""
        for child in self.children:
            if child.running:
                with suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
            _kill_group(child.proc.pid)
            with suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=10)


def _kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
