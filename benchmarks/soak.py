"""Soak test (not CI): many images through 2 Celery workers killed at random times.

    .venv/bin/python benchmarks/soak.py [--n 10000] [--rate 2] [--kill-every 60] [--seed 1]
    .venv/bin/python benchmarks/soak.py --embedded [--n 300] [--rate 1] [--idle-kills 10] \
        [--busy-kills 10] [--main-kills 3] [--door-kills 4]

``--embedded`` soaks ``melanoma-triage run --home H`` itself (SQLite, filesystem broker,
the supervisor, the doors): see :func:`soak_embedded`.

Real services, as in production: a fresh PostgreSQL database (TRIAGE_TEST_POSTGRES_URL,
default the local server), a private redis-server with its append-only file, two triage
worker subprocesses (concurrency 1 each), beat (the reconciler, every 10 s; job lease
20 s), the shipped model. A feeder submits ``--n`` distinct images at ``--rate`` per
second through the hospital client. A killer sends SIGKILL at random times (exponential,
mean ``--kill-every`` s) to a random worker: its main process (the worker is then
restarted, as the supervisor or compose would: its orphaned pool child goes with it) or
one pool child (Celery replaces it).

At the end: lost (submitted images whose job is not done or rejected), duplicated (jobs
with more than one report row, prediction or PDF), latency from admission to the job's
end (p50, p99, max), attempts per job, and the workers' resident memory over time. Exit
status 1 when anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text  # noqa: E402

from tests.conftest import make_settings  # noqa: E402
from tests.faults.services import (  # noqa: E402
    CeleryProcess,
    RedisServer,
    fresh_database,
    prepare_home,
    wait_all_final,
)
from tests.imagegen import jpeg_bytes, lesion_rgb  # noqa: E402
from worker.client import TriageClient  # noqa: E402


def _rss_mb(worker: CeleryProcess) -> float:
    """Resident memory of a worker's main process and its pool children, in MiB."""
    import psutil

    try:
        main = psutil.Process(worker.pid)
        procs = [main, *main.children()]
        return sum(p.memory_info().rss for p in procs) / 2**20
    except (psutil.NoSuchProcess, RuntimeError):
        return 0.0


class Killer(threading.Thread):
    """SIGKILL a random worker's main process or pool child at random times."""

    def __init__(self, workers: list[CeleryProcess], mean_s: float, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.workers, self.mean_s, self.rng = workers, mean_s, rng
        self.stop = threading.Event()
        self.kills: Counter = Counter()

    def run(self) -> None:
        while not self.stop.wait(self.rng.expovariate(1 / self.mean_s)):
            worker = self.rng.choice(self.workers)
            try:
                if self.rng.random() < 0.5:
                    worker.kill_main(signal.SIGKILL)
                    self.kills["main"] += 1
                    worker.restart(ready_timeout=300)  # orphans killed, a fresh main started
                else:
                    worker.kill_pool_child(signal.SIGKILL)
                    self.kills["pool child"] += 1
            except Exception as exc:  # noqa: BLE001 - a kill that missed is logged, not fatal
                print(f"  kill failed: {type(exc).__name__}: {exc}", flush=True)


def _feed(settings, n: int, rate: float, seed: int) -> float:
    """Submit ``n`` distinct images at ``rate`` per second; returns the seconds it took."""
    t0 = time.monotonic()
    with TriageClient(settings) as client:
        for i in range(n):
            data = jpeg_bytes(lesion_rgb((450, 600), seed=seed * 1_000_000 + i))
            client.submit(data, original_name=f"soak_{i}.jpg")
            delay = t0 + (i + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if (i + 1) % max(1, n // 10) == 0:
                print(f"  submitted {i + 1}/{n}", flush=True)
    return time.monotonic() - t0


def _ts(value) -> datetime:
    """A timestamp as a naive UTC datetime (SQLite hands raw text queries strings)."""
    value = datetime.fromisoformat(value) if isinstance(value, str) else value
    return value.replace(tzinfo=None)


def _ledger(url: str, reports_dir: Path) -> dict:
    """Lost and duplicated results, latency and attempts, from the database and the disk."""
    engine = create_engine(url)
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT id, state, attempts, created_at, finished_at FROM jobs")).all()
        reports = Counter(r for (r,) in conn.execute(text("SELECT job_id FROM reports")))
        preds = Counter(r for (r,) in conn.execute(
            text("SELECT job_id FROM predictions WHERE NOT shadow")))
    engine.dispose()
    pdfs = Counter(p.name.rsplit("_", 1)[-1].removesuffix(".pdf") for p in reports_dir.glob("*.pdf"))
    latency = sorted((_ts(j.finished_at) - _ts(j.created_at)).total_seconds() for j in jobs if j.finished_at)
    return {
        "jobs": len(jobs),
        "states": dict(Counter(j.state for j in jobs)),
        "lost": sum(j.state not in ("done", "rejected") for j in jobs),
        "duplicated": sum(max(reports[j.id], preds[j.id], pdfs[j.id]) > 1 for j in jobs),
        "done_without_report": sum(j.state == "done" and pdfs[j.id] == 0 for j in jobs),
        "attempts": dict(sorted(Counter(j.attempts for j in jobs).items())),
        "latency_s": {"p50": round(statistics.median(latency), 2),
                      "p99": round(latency[int(0.99 * (len(latency) - 1))], 2),
                      "max": round(latency[-1], 2)} if latency else {},
    }


def soak(args: argparse.Namespace, work: Path) -> dict:
    rng = random.Random(args.seed)
    with fresh_database("soak") as url, RedisServer(work / "redis") as redis_server:
        settings = make_settings(work / "home", database_url=url, broker_url=redis_server.url(),
                                 worker_concurrency=1, reconcile_interval_s=10.0, job_lease_s=20)
        prepare_home(settings)
        workers = [CeleryProcess(settings, work / "logs", name=f"soak{i}") for i in range(2)]
        beat = CeleryProcess(settings, work / "logs", role="beat")
        rss: list[tuple[float, list[float]]] = []
        try:
            for proc in (*workers, beat):
                proc.start(ready_timeout=300)
            t0 = time.monotonic()
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(args.rss_every):
                    rss.append((round(time.monotonic() - t0), [round(_rss_mb(w)) for w in workers]))

            threading.Thread(target=sample, daemon=True).start()
            killer = Killer(workers, args.kill_every, rng)
            killer.start()
            fed_s = _feed(settings, args.n, args.rate, args.seed)
            killer.stop.set()
            killer.join()
            for w in workers:  # a worker killed last must be up to finish the queue
                if w.proc is None or w.proc.poll() is not None:
                    w.restart(ready_timeout=300)
            wait_all_final(url, expected_jobs=args.n, timeout=args.n / max(args.rate, 0.1) + 900)
            elapsed = time.monotonic() - t0
            sampling.set()
            result = _ledger(url, settings.reports_dir)
        finally:
            for proc in (*workers, beat):
                proc.stop(timeout=30)
    result.update(n=args.n, rate=args.rate, fed_s=round(fed_s), elapsed_s=round(elapsed),
                  kills=dict(killer.kills), worker_rss_mb=rss)
    return result


class EmbeddedKiller(threading.Thread):
    """Kills in ``run``'s tree, in a shuffled plan: the triage pool child while idle (the
    feeder paused until no job is queued or running: billiard issue 104's case) and while
    busy (a large image running), the triage worker's main process, and a door (HTTP or
    DICOM), ``mean_s`` apart on average."""

    def __init__(self, run, plan: list[str], mean_s: float, rng: random.Random,
                 feeding: threading.Event) -> None:
        super().__init__(daemon=True)
        self.run_, self.plan, self.mean_s, self.rng, self.feeding = run, plan, mean_s, rng, feeding
        self.kills: Counter = Counter()
        self.failed: Counter = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        for kind in self.plan:
            if self.stop.wait(self.rng.expovariate(1 / self.mean_s)):
                return
            try:
                getattr(self, f"_{kind}")()
                self.kills[kind] += 1
            except Exception as exc:  # noqa: BLE001 - a kill that missed is counted, not fatal
                self.failed[kind] += 1
                print(f"  {kind} kill missed: {type(exc).__name__}: {exc}", flush=True)
            finally:
                self.feeding.set()

    def _pool_child(self):
        from tests.faults.services import wait_until

        return wait_until(lambda: self.run_.pool_child("triage"), 120, what="a triage pool child")

    def _idle(self) -> None:
        from tests.faults.services import wait_until

        self.feeding.clear()  # let the queue drain, then kill the child waiting for work
        wait_until(lambda: self.run_.count("queued") == 0 and self.run_.count("running") == 0,
                   600, what="idle")
        time.sleep(1.0)
        os.kill(self._pool_child().pid, signal.SIGKILL)

    def _busy(self) -> None:
        from tests.faults.services import wait_until

        self.run_.drop(jpeg_bytes(lesion_rgb((1400, 1800), seed=self.rng.randrange(10**9))),
                       f"busy_{self.rng.randrange(10**9)}.jpg")
        wait_until(lambda: self.run_.count("running") >= 1, 600, 0.02, what="a job running")
        os.kill(self._pool_child().pid, signal.SIGKILL)

    def _main(self) -> None:
        main = self.run_.worker_main("triage")
        os.kill(main.pid, signal.SIGKILL)

    def _door(self) -> None:
        door = self.run_.child(self.rng.choice(["serve", "receive-dicom"]))
        os.kill(door.pid, signal.SIGKILL)


class DowntimeSampler(threading.Thread):
    """Every second, each role's health as ``/healthz`` judges it; the longest stretch each
    role was down (from the first sample that saw it down to the first that saw it up
    again: at most one sample period too long)."""

    def __init__(self, settings, every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.settings, self.every_s = settings, every_s
        self.stop = threading.Event()
        self.longest: dict[str, float] = {}
        self._down_since: dict[str, float] = {}

    def run(self) -> None:
        from worker.db.engine import make_engine, make_session_factory
        from worker.process.liveness import role_verdicts

        engine = make_engine(self.settings.database_url)
        sessions = make_session_factory(engine)
        try:
            while not self.stop.wait(self.every_s):
                try:
                    verdicts = role_verdicts(self.settings, sessions)
                except Exception:  # noqa: BLE001 - the database busy for a moment
                    continue
                now = time.monotonic()
                for role, verdict in verdicts.items():
                    if not verdict.ok:
                        self._down_since.setdefault(role, now)
                    elif role in self._down_since:  # down from the first sample that saw it
                        since = self._down_since.pop(role)  # to the first that did not
                        self.longest[role] = max(self.longest.get(role, 0.0), now - since)
        finally:
            engine.dispose()


def soak_embedded(args: argparse.Namespace, work: Path) -> dict:
    """``run --home`` with both doors, fed through the intake folder at ``--rate``; the
    kill plan of :class:`EmbeddedKiller`; then every job final, the ledger, and the longest
    time any role was down (sampled every second)."""
    from tests.faults.services import EmbeddedRun, free_port

    rng = random.Random(args.seed)
    home = work / "home"
    env = {"TRIAGE_HTTP_ENABLED": "true", "TRIAGE_DICOM_ENABLED": "true",
           "TRIAGE_HTTP_HOST": "127.0.0.1", "TRIAGE_HTTP_PORT": str(free_port()),
           "TRIAGE_DICOM_HOST": "127.0.0.1", "TRIAGE_DICOM_PORT": str(free_port()),
           "TRIAGE_POLL_INTERVAL_S": "0.5"}
    run = EmbeddedRun(home, work / "run.log", env=env).start(ready_timeout=300)
    settings = make_settings(home)
    plan = (["idle"] * args.idle_kills + ["busy"] * args.busy_kills + ["main"] * args.main_kills
            + ["door"] * args.door_kills)
    rng.shuffle(plan)
    feeding = threading.Event()
    feeding.set()
    killer = EmbeddedKiller(run, plan, args.kill_every, rng, feeding)
    sampler = DowntimeSampler(settings)
    t0 = time.monotonic()
    try:
        sampler.start()
        killer.start()
        fed = 0
        while fed < args.n or killer.is_alive():
            feeding.wait()
            if fed < args.n:
                run.drop(jpeg_bytes(lesion_rgb((450, 600), seed=args.seed * 1_000_000 + fed)),
                         f"soak_{fed}.jpg")
                fed += 1
            time.sleep(1 / args.rate)
        wait_all_final(run.url, timeout=900)
        elapsed = time.monotonic() - t0
        time.sleep(3)
        sampler.stop.set()
        result = _ledger(run.url, home / "reports")
        alive = run.proc.poll() is None
    finally:
        killer.stop.set()
        sampler.stop.set()
        code = run.stop()
    result.update(n=result["jobs"], rate=args.rate, fed_s=round(elapsed), elapsed_s=round(elapsed),
                  kills=dict(killer.kills), kills_missed=dict(killer.failed), worker_rss_mb=[],
                  longest_down_s={r: round(v, 1) for r, v in sorted(sampler.longest.items())},
                  run_alive_until_stopped=alive, run_exit_code=code)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2.0, help="images submitted per second")
    parser.add_argument("--kill-every", type=float, default=60.0, help="mean seconds between kills")
    parser.add_argument("--rss-every", type=float, default=30.0, help="seconds between memory samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--embedded", action="store_true", help="soak `run --home` (see above)")
    parser.add_argument("--idle-kills", type=int, default=10)
    parser.add_argument("--busy-kills", type=int, default=10)
    parser.add_argument("--main-kills", type=int, default=3)
    parser.add_argument("--door-kills", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = soak_embedded(args, Path(tmp)) if args.embedded else soak(args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"images {result['n']} at {result['rate']}/s; fed in {result['fed_s']} s, "
          f"all final after {result['elapsed_s']} s")
    print(f"kills: {result['kills']}")
    print(f"states: {result['states']}; attempts per job: {result['attempts']}")
    print(f"lost {result['lost']}, duplicated {result['duplicated']}, "
          f"done without report {result['done_without_report']}")
    print(f"latency admission -> final: {result['latency_s']}")
    if "longest_down_s" in result:
        print(f"kills missed: {result['kills_missed']}; longest time down per role (s): "
              f"{result['longest_down_s']}; run alive until stopped: {result['run_alive_until_stopped']} "
              f"(exit code {result['run_exit_code']})")
    if result["worker_rss_mb"]:
        print("worker RSS (MiB) over time [s: worker0, worker1]:")
    for t, values in result["worker_rss_mb"]:
        print(f"  {t:>6} s: {values}")
    return 1 if result["lost"] or result["duplicated"] or result["done_without_report"] else 0


if __name__ == "__main__":
    sys.exit(main())
