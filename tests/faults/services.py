"""Real services a fault test can break: a fresh PostgreSQL database, a TCP proxy in front
of PostgreSQL that can be cut, a private Redis with an append-only file that can be
restarted, and Celery worker/beat subprocesses that can be ``kill -9``-ed. Plus the
bookkeeping checks every fault test ends with: all jobs final, each exactly once.

Every helper is a context manager whose exit undoes what it started, killed or not.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from schemas import JobState
from worker.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTGRES_ADMIN_URL = os.environ.get(
    "TRIAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ACTIVE_STATES = tuple(s.value for s in JobState if not s.is_final)
_JOB_ID_IN_NAME = re.compile(r"([0-9a-f]{32})")


def free_port() -> int:
    """A TCP port nobody listens on right now (the usual small race is accepted)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.2,
               what: str = "condition") -> object:
    """Poll until ``predicate()`` is truthy and return it; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)


# --------------------------------------------------------------------------- PostgreSQL


def with_host(database_url: str, host: str, port: int) -> str:
    """The same database reached through ``host:port`` (a proxy)."""
    return make_url(database_url).set(host=host, port=port).render_as_string(hide_password=False)


@contextmanager
def fresh_database(prefix: str = "faults", admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """``CREATE DATABASE <prefix>_<random>``; yields its SQLAlchemy URL; dropped WITH (FORCE)
    on exit, so connections a killed worker left behind do not keep it alive."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = make_url(admin_url)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class TcpProxy:
    """A threaded TCP forwarder (default: to PostgreSQL on 127.0.0.1:5432).

    ``cut()`` drops every open connection and refuses new ones (connection refused), as a
    stopped server does; ``cut(refuse=False)`` instead accepts and never answers, as a
    network partition does. ``restore()`` listens again on the same port.
    """

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432), port: int = 0) -> None:
        self.target = target
        self.port = port
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stop = threading.Event()
        self._blackhole = False
        self.connections_made = 0

    def url(self, database_url: str) -> str:
        return with_host(database_url, "127.0.0.1", self.port)

    @property
    def is_cut(self) -> bool:
        return self._listener is None or self._blackhole

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener, self._blackhole = listener, False
        self._stop.clear()
        self._accepting = threading.Thread(target=self._accept_loop, args=(listener,),
                                           name="tcp-proxy-accept", daemon=True)
        self._accepting.start()
        return self

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._track(client)
            if self._blackhole:
                continue  # held open, never answered, until restore() or close()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._drop(client)
                continue
            self._track(upstream)
            self.connections_made += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            src.settimeout(None)
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src)
            self._drop(dst)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            sock.close()

    def _drop_all(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            self._drop(sock)

    def cut(self, refuse: bool = True) -> None:
        """Drop every connection; then refuse (default) or black-hole new ones."""
        if refuse:
            self._stop_listening()
        else:
            self._blackhole = True
        self._drop_all()

    def cut_for(self, seconds: float, refuse: bool = True) -> threading.Timer:
        """Cut now and restore after ``seconds`` in the background; join the timer to wait."""
        self.cut(refuse)
        timer = threading.Timer(seconds, self.restore)
        timer.daemon = True
        timer.start()
        return timer

    def restore(self) -> None:
        """Forward again on the same port (held black-holed connections are dropped)."""
        self._drop_all()
        if self._listener is None:
            self.start()
        self._blackhole = False

    def _stop_listening(self) -> None:
        self._stop.set()
        if self._accepting is not None:
            self._accepting.join(5)
        if self._listener is not None:
            self._listener.close()
        self._listener, self._accepting = None, None

    def close(self) -> None:
        self._stop_listening()
        self._drop_all()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """A private ``redis-server`` on a free port with its append-only file under ``workdir``.

    ``restart()`` stops it (SIGTERM: it flushes; SIGKILL: it does not) and starts it again
    on the same port and folder, so the AOF is replayed. ``appendfsync`` defaults to
    ``always``, which loses nothing even on SIGKILL; pass ``everysec`` for production's.
    """

    def __init__(self, workdir: Path, port: int | None = None, appendfsync: str = "always",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def command(self) -> list[str]:
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
                "--protected-mode", "no", "--maxmemory-policy", "noeviction",
                "--logfile", str(self.workdir / "redis.log"), *self.extra_args]

    def start(self, timeout: float = 20) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        wait_until(self.ping, timeout, 0.1, what=f"redis-server on port {self.port} answering")
        return self

    def ping(self) -> bool:
        import redis

        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited; see {self.workdir / 'redis.log'}")
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM, down_s: float = 0.0) -> None:
        """Stop with ``sig``, stay down ``down_s`` seconds, start again (AOF replayed)."""
        self.stop(sig)
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(signal.SIGKILL)


# --------------------------------------------------------------------------- Celery processes


def _env_value(value: object) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def service_environment(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a service process needs to build exactly ``settings``: every field
    as ``TRIAGE_<FIELD>``, over what ``worker.process.service.child_env`` sets (when it exists)."""
    env = dict(os.environ)
    try:
        from worker.process.service import child_env
    except ImportError:
        child_env = None
    if child_env is not None:
        env.update(child_env(settings))
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"TRIAGE_{name.upper()}"] = _env_value(value)
    env.setdefault("OMP_NUM_THREADS", str(settings.tf_threads))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def celery_command(settings: Settings, role: str = "worker", hostname: str | None = None) -> list[str]:
    """The command line ``melanoma-triage run`` uses for ``role``, read from
    ``worker.process.service.celery_commands`` at call time (its ``-A`` target moves)."""
    from worker.process.service import celery_commands

    cmd = list(celery_commands(settings)[role])
    if hostname:
        cmd = [a for a in cmd if not a.startswith("--hostname=")] + [f"--hostname={hostname}"]
    return cmd


class CeleryProcess:
    """One Celery process (``worker`` by default, or ``beat``) as a subprocess in its own
    session, so its main process and its pool children can be killed one by one.

    Each start logs to ``<log_dir>/<name>-<n>.log``. Exit stops the whole process group
    of every start, including orphaned pool children of a killed main process.
    """

    def __init__(self, settings: Settings, log_dir: Path, role: str = "worker",
                 name: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.log_dir = Path(log_dir)
        self.role = role
        self.name = name or f"{role}-{uuid.uuid4().hex[:6]}"
        self.extra_env = extra_env
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.starts = 0
        self._groups: list[int] = []
        self._seen_pids: set[int] = set()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def start(self, ready_timeout: float = 180) -> CeleryProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        hostname = f"{self.name}@%h" if self.role != "beat" else None
        cmd = celery_command(self.settings, self.role, hostname)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=service_environment(self.settings, self.extra_env),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self._groups.append(self.proc.pid)
        if ready_timeout:
            self.wait_ready(ready_timeout)
        return self

    def is_ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc and self.proc.returncode}:\n"
                                 + self.log_tail())
        if self.role == "beat":
            return "beat: Starting" in self.log_text()
        return " ready." in self.log_text() and bool(self.pool_children())

    def wait_ready(self, timeout: float = 180) -> None:
        try:
            wait_until(self.is_ready, timeout, 0.25, what=f"{self.name} ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.log_dir.glob(f"{self.name}-*.log")))

    def log_tail(self, lines: int = 40) -> str:
        text_ = self.log_path.read_text(errors="replace") if self.log_path else ""
        return "\n".join(text_.splitlines()[-lines:])

    def pool_children(self) -> list:
        """The prefork pool processes (direct children of the main process), as
        ``psutil.Process`` objects (psutil: a test dependency, imported here only)."""
        import psutil

        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        self._seen_pids.update(c.pid for c in children)
        return children

    def kill_main(self, sig: int = signal.SIGKILL) -> int:
        """Signal the main process only (its pool children stay, as after an OOM kill)."""
        self.pool_children()  # remember them for teardown
        os.kill(self.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        return self.pid

    def kill_pool_child(self, sig: int = signal.SIGKILL, index: int = 0) -> int:
        """Signal one pool child; returns its pid."""
        children = wait_until(self.pool_children, 30, what=f"{self.name} pool children")
        child = children[index]
        os.kill(child.pid, sig)
        return child.pid

    def stop(self, timeout: float = 60) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of every process group this object started."""
        if self.proc is not None and self.proc.poll() is None:
            self.pool_children()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        for pgid in self._groups:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in self._seen_pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def restart(self, ready_timeout: float = 180) -> CeleryProcess:
        self.stop()
        return self.start(ready_timeout)

    def __enter__(self) -> CeleryProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(timeout=10)


# --------------------------------------------------------------------------- home and bookkeeping


def prepare_home(settings: Settings) -> None:
    """Folders, schema and the model store seeded from the shipped ``model_store/``,
    through whichever module holds ``prepare`` now (it is moving)."""
    try:
        from worker.process.home import prepare
    except ImportError:
        from worker.process.service import prepare
    prepare(settings)


def _engine(database_url: str) -> Engine:
    return create_engine(database_url, pool_pre_ping=True, hide_parameters=True,
                         connect_args={"connect_timeout": 3} if database_url.startswith("postgresql") else {})


def job_counts(database_url: str | Engine) -> Counter:
    """Jobs by state."""
    engine = _engine(database_url) if isinstance(database_url, str) else database_url
    try:
        with engine.connect() as conn:
            return Counter(dict(conn.execute(text("SELECT state, count(*) FROM jobs GROUP BY state")).all()))
    finally:
        if isinstance(database_url, str):
            engine.dispose()


def wait_all_final(database_url: str, expected_jobs: int | None = None, timeout: float = 180,
                   interval: float = 0.5) -> Counter:
    """Poll until no job is received/queued/running (and at least ``expected_jobs`` exist);
    returns the counts by state. Database errors while polling (it may be cut) are waited out."""
    engine = _engine(database_url)
    counts: Counter = Counter()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                counts = job_counts(engine)
            except DBAPIError:
                pass
            else:
                active = sum(counts[s] for s in ACTIVE_STATES)
                if not active and (expected_jobs is None or sum(counts.values()) >= expected_jobs):
                    return counts
            if time.monotonic() >= deadline:
                raise AssertionError(f"jobs not all final after {timeout:.0f} s: {dict(counts)}")
            time.sleep(interval)
    finally:
        engine.dispose()


def check_exactly_once(database_url: str, reports_dir: Path, rejected_dir: Path | None = None,
                       allow_failed: bool = False) -> Counter:
    """Every job done or rejected exactly once: no job active (nor failed unless allowed);
    per done job one report row, one non-shadow prediction, one PDF on disk at the recorded
    path; per rejected/failed job none of those (and one sidecar when ``rejected_dir`` is
    given); no PDF that belongs to no done job. Returns the counts by state; raises
    AssertionError listing every problem."""
    engine = _engine(database_url)
    try:
        with engine.connect() as conn:
            states = dict(conn.execute(text("SELECT id, state FROM jobs")).all())
            reports = Counter(r for (r,) in conn.execute(text("SELECT job_id FROM reports")))
            paths = dict(conn.execute(text("SELECT job_id, path FROM reports")).all())
            predictions = Counter(r for (r,) in conn.execute(
                text("SELECT job_id FROM predictions WHERE NOT shadow")))
    finally:
        engine.dispose()
    pdfs = Counter(_job_id_of(p) for p in Path(reports_dir).rglob("*.pdf"))
    sidecars = (Counter(_job_id_of(p, last=False) for p in Path(rejected_dir).glob("*.json"))
                if rejected_dir is not None else None)
    problems = _ledger_problems(states, reports, paths, predictions, pdfs, sidecars, allow_failed)
    if problems:
        raise AssertionError(f"{len(problems)} bookkeeping problem(s):\n" + "\n".join(problems[:50]))
    return Counter(states.values())


def _job_id_of(path: Path, last: bool = True) -> str | None:
    """The job id in a report name (``<acc>_<job>.pdf``: the last one) or a sidecar name
    (``<job>__<name>.json``: the first one)."""
    found = _JOB_ID_IN_NAME.findall(path.name)
    return (found[-1] if last else found[0]) if found else None


def _ledger_problems(states, reports, paths, predictions, pdfs, sidecars, allow_failed) -> list[str]:
    problems = []
    for job_id, state in sorted(states.items()):
        if state in ACTIVE_STATES or (state == JobState.FAILED.value and not allow_failed):
            problems.append(f"job {job_id} is {state}")
        if state == JobState.DONE.value:
            expected = (1, 1, 1)
            if job_id in paths and not Path(paths[job_id]).is_file():
                problems.append(f"job {job_id}: the recorded report file is missing")
        else:
            expected = (0, 0, 0)
        got = (reports[job_id], predictions[job_id], pdfs[job_id])
        if got != expected:
            problems.append(f"job {job_id} ({state}): reports/predictions/PDFs {got}, expected {expected}")
        if sidecars is not None and state in (JobState.REJECTED.value, JobState.FAILED.value) \
                and sidecars[job_id] != 1:
            problems.append(f"job {job_id} ({state}): {sidecars[job_id]} rejection sidecars")
    for job_id, count in pdfs.items():
        if job_id not in states:
            problems.append(f"{count} PDF(s) for unknown job {job_id} (orphan reports)")
    return problems


# --------------------------------------------------------------------------- embedded run


class EmbeddedRun:
    """``melanoma-triage run --home H`` on the embedded defaults (SQLite, filesystem broker)
    as a subprocess, with handles on its children: the roles' processes by their Celery
    hostname or door command, the triage worker's pool child, the jobs table."""

    def __init__(self, home: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.home = Path(home)
        self.log_path = Path(log_path)
        self.env = dict(os.environ, TRIAGE_POLL_INTERVAL_S="0.5", TRIAGE_STABLE_SCANS="1",
                        TRIAGE_STABLE_SECONDS="0", TRIAGE_DICOM_ENABLED="false",
                        TRIAGE_HTTP_ENABLED="false", TRIAGE_WORKER_CONCURRENCY="1",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.url = f"sqlite:///{self.home / 'triage.db'}"

    def start(self, ready_timeout: float = 180) -> EmbeddedRun:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([_python(), "-m", "worker", "run", "--home", str(self.home)],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.home.parent, start_new_session=True)
        wait_until(lambda: self.alive() and self.pool_child("triage"), ready_timeout,
                   what="run started, triage pool child up")
        return self

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"run exited with {self.proc and self.proc.returncode}:\n"
                                 + self.log_text()[-3000:])
        return True

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def child(self, marker: str):
        """The child of ``run`` whose command line holds ``marker`` (``--hostname=triage@``,
        ``serve``, ``receive-dicom``), as a ``psutil.Process``; None if none."""
        import psutil

        for child in psutil.Process(self.proc.pid).children():
            try:
                if any(marker == a or a.startswith(marker) for a in child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        return None

    def worker_main(self, role: str = "triage"):
        return self.child(f"--hostname={role}@")

    def pool_child(self, role: str = "triage"):
        import psutil

        main = self.worker_main(role)
        try:
            children = main.children() if main is not None else []
        except psutil.NoSuchProcess:
            return None
        return children[0] if children else None

    def drop(self, data: bytes, name: str) -> None:
        part = self.home / "intake" / f"{name}.part"
        part.write_bytes(data)
        part.rename(part.with_suffix(""))

    def query(self, sql: str, **params) -> list:
        engine = _engine(self.url)
        try:
            with engine.connect() as conn:
                return conn.execute(text(sql), params).all()
        finally:
            engine.dispose()

    def count(self, state: str) -> int:
        if not (self.home / "triage.db").exists():
            return 0
        return self.query("SELECT count(*) FROM jobs WHERE state = :s", s=state)[0][0]

    def status(self) -> dict:
        """``melanoma-triage status --json`` of this home."""
        out = subprocess.run([_python(), "-m", "worker", "status", "--json", "--home", str(self.home)],
                             env=self.env, capture_output=True, timeout=120)
        if out.returncode != 0:
            raise AssertionError(out.stderr.decode(errors="replace")[-2000:])
        return json.loads(out.stdout)

    def stop(self, timeout: float = 120) -> int | None:
        """SIGINT (as Ctrl-C), then SIGKILL of whatever of the tree is left."""
        import psutil

        if self.proc is None:
            return None
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in tree:
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.kill()
        return self.proc.returncode


def _python() -> str:
    import sys

    return sys.executable
