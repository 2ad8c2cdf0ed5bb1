"""Load across hosts that share nothing but PostgreSQL and Redis (issue 22).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_hosts.py [--images 200] [--workers 2]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
        [--redis redis://127.0.0.1:6379/9] [--concurrency 1]

A fresh PostgreSQL database and the given Redis database (flushed). Host A runs the doors and
beat (HTTP API, DICOM receiver, celery beat); ``--workers`` hosts each run one triage+deliver
Celery worker (``--concurrency`` pool processes), every host in a home folder of its own with
TRIAGE_STORAGE=database. The tiny test model (tests/modelgen) serves, so the numbers measure
the system around the model, not the network. ``--images`` synthetic 320x240 JPEGs are
POSTed to A by 4 client threads; the run ends when every job is done.

Prints: images, throughput (images/min, first POST to last job done), CPU (user + system) of
each host's process tree per image, database size growth per 1,000 images
(pg_database_size), and latency per image (job created -> finished) median, p95, p99.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HostTree:
    """A host's processes (each its own session) and the CPU its whole tree has spent."""

    def __init__(self, name: str, home: Path, env: dict, commands: list[list[str]]) -> None:
        self.name, self.cpu = name, {}
        home.mkdir(parents=True)
        self.procs = [subprocess.Popen(cmd, env={**env, "TRIAGE_HOME": str(home)}, cwd=ROOT,
                                       stdout=open(home / f"p{i}.log", "wb"), stderr=subprocess.STDOUT,
                                       start_new_session=True) for i, cmd in enumerate(commands)]

    def sample(self) -> None:
        for proc in self.procs:
            try:
                parent = psutil.Process(proc.pid)
                for p in [parent, *parent.children(recursive=True)]:
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                continue

    def cpu_s(self) -> float:
        return sum(self.cpu.values())

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _setup(args, tmp: Path) -> tuple[str, str]:
    """A fresh database with the schema, the tiny model published and a token."""
    import redis

    from tests.modelgen import write_tiny_version
    from worker.classify.export import ensure_export
    from worker.db.engine import make_engine, make_session_factory
    from worker.db.migrate import upgrade
    from worker.doors.tokens import create_token
    from worker.storage import model_sync
    from worker.store.versions import ModelStore

    name = f"triage_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = args.postgres.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    redis.Redis.from_url(args.redis).flushdb()
    store = ModelStore(tmp / "seed", export=ensure_export)
    store.set_current(store.add_version(write_tiny_version(tmp / "tiny" / "tiny-1")))
    engine = make_engine(url)
    model_sync.publish(store.root, engine)
    token = create_token(make_session_factory(engine), "bench", "admin")
    engine.dispose()
    return url, token


def _jpeg(seed: int) -> bytes:
    from tests.imagegen import jpeg_bytes, lesion_rgb

    return jpeg_bytes(lesion_rgb(seed=seed))


def _db_size(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    engine.dispose()
    return size


def _wait_done(url: str, n: int, hosts: list[HostTree], timeout_s: float) -> None:
    engine = create_engine(url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for h in hosts:
                h.sample()
            with engine.connect() as conn:
                done = conn.execute(text("SELECT count(*) FROM jobs WHERE state IN ('done','rejected','failed')")).scalar_one()
                pending = conn.execute(text("SELECT count(*) FROM deliveries WHERE state='pending'")).scalar_one()
            if done >= n and pending == 0:
                return
            time.sleep(0.5)
        raise SystemExit(f"timed out: {done}/{n} jobs ended")
    finally:
        engine.dispose()


def _latencies(url: str) -> list[float]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT extract(epoch FROM finished_at - created_at) FROM jobs "
                                 "WHERE state='done'")).scalars().all()
    engine.dispose()
    return sorted(float(r) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2, help="worker hosts")
    ap.add_argument("--concurrency", type=int, default=1, help="pool processes per worker host")
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hosts-"))
    url, token = _setup(args, tmp)
    http_port, dicom_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(PYTHONPATH=str(ROOT), TRIAGE_DATABASE_URL=url, TRIAGE_BROKER_URL=args.redis,
               TRIAGE_STORAGE="database", TRIAGE_HTTP_HOST="127.0.0.1", TRIAGE_HTTP_PORT=str(http_port),
               TRIAGE_DICOM_HOST="127.0.0.1", TRIAGE_DICOM_PORT=str(dicom_port),
               TRIAGE_MIN_FREE_DISK_BYTES="0", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    py, cli = sys.executable, [sys.executable, "-m", "worker"]
    celery = [py, "-m", "celery", "-A", "worker.messaging.celery_worker:app"]
    hosts = [HostTree("A (doors, beat)", tmp / "a", env, [
        cli + ["serve"], cli + ["receive-dicom"],
        celery + ["beat", "--loglevel=WARNING", f"--schedule={tmp / 'a' / 'beat-schedule'}"]])]
    for i in range(args.workers):
        hosts.append(HostTree(f"{chr(66 + i)} (triage, deliver)", tmp / f"w{i}", env, [
            celery + ["worker", "--loglevel=WARNING", "--pool=prefork", f"--concurrency={args.concurrency}",
                      "--queues=triage,maintenance,deliver", f"--hostname=w{i}@%h"]]))
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60,
                            headers={"Authorization": f"Bearer {token}"})
        deadline = time.monotonic() + 120
        while True:
            try:
                http.get("/v1/jobs/0")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        time.sleep(8)  # workers up and warm
        images = [_jpeg(10_000 + i) for i in range(args.images)]
        size0 = _db_size(url)
        for h in hosts:
            h.sample()
        cpu0 = [h.cpu_s() for h in hosts]
        t0 = time.monotonic()
        lock = threading.Lock()

        def post(i: int) -> None:
            r = http.post("/v1/jobs", files={"file": (f"b{i}.jpg", images[i], "image/jpeg")})
            with lock:
                assert r.status_code == 201, r.text

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(post, range(args.images)))
        _wait_done(url, args.images, hosts, timeout_s=60 + args.images * 2)
        elapsed = time.monotonic() - t0
        for h in hosts:
            h.sample()
        size1 = _db_size(url)
        lat = _latencies(url)
        print(f"images: {args.images}; worker hosts: {args.workers} x concurrency {args.concurrency}; "
              f"{os.cpu_count()} cores on this machine")
        print(f"throughput: {args.images / elapsed * 60:.0f} images/min ({elapsed:.1f} s)")
        for h, c0 in zip(hosts, cpu0):
            print(f"  host {h.name}: {(h.cpu_s() - c0) / args.images * 1000:.1f} CPU-ms per image")
        print(f"database: +{(size1 - size0) / args.images * 1000 / 2**20:.1f} MiB per 1,000 images")
        q = statistics.quantiles(lat, n=100)
        print(f"latency (created -> done): median {statistics.median(lat):.2f} s, "
              f"p95 {q[94]:.2f} s, p99 {q[98]:.2f} s")
    finally:
        for h in hosts:
            h.stop()
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # the benchmark's own database, dropped
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
