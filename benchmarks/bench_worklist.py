"""How fast the clinician workspace answers with a large worklist (issue 21).

    .venv/bin/python benchmarks/bench_worklist.py [--jobs 20000] [--database-url postgresql+psycopg://...]

Writes ``--jobs`` finished jobs (images, jobs, predictions, submissions, a review on every
fifth) straight into a fresh database (a temporary SQLite file, or the given PostgreSQL
database, which must be empty), starts the real HTTP API on a free port, signs in once and
times, over ``--runs`` requests each: the worklist's first page, a filtered page (urgent,
not reviewed), a search by part of a patient id, a job page, and the site page. Prints
median and p95 milliseconds. The argon2 cost of one sign-in is timed too.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas import CLASS_NAMES, JobState, TriageLevel  # noqa: E402
from worker.db.engine import make_engine, make_session_factory  # noqa: E402
from worker.db.migrate import upgrade  # noqa: E402
from worker.db.models import Image, Job, Prediction, Submission  # noqa: E402
from worker.db.workspace import JobReview  # noqa: E402
from worker.settings import Settings  # noqa: E402

PASSWORD = "benchmark-password-1"


def fill(sessions, n: int, seed: int = 0) -> str:
    """``n`` finished jobs; returns one job id."""
    rng = random.Random(seed)
    levels = [TriageLevel.URGENT, TriageLevel.SOON, TriageLevel.ROUTINE, TriageLevel.INDETERMINATE]
    weights = [0.1, 0.15, 0.65, 0.1]
    start = datetime.now(timezone.utc) - timedelta(days=60)
    one = None
    for chunk in range(0, n, 2000):
        with sessions.begin() as s:
            for i in range(chunk, min(n, chunk + 2000)):
                at = start + timedelta(days=60) * (i / n)
                image = Image(sha256=f"{i:064x}", archive_path=None, size_bytes=1000, source_door="folder",
                              received_at=at, patient_id=f"P{rng.randrange(10**6):06d}",
                              accession_number=f"A{i:08d}", source_format="jpeg")
                s.add(image)
                s.flush()
                job = Job(image_id=image.id, state=JobState.DONE.value, attempts=1, created_at=at, finished_at=at)
                s.add(job)
                s.flush()
                level = rng.choices(levels, weights)[0]
                p = [rng.random() for _ in CLASS_NAMES]
                total = sum(p)
                s.add(Prediction(job_id=job.id, model_version="bench-1", shadow=False, predicted_class="nevus",
                                 triage_level=level.value, image_usable=True, created_at=at,
                                 **{f"p_{c}": v / total for c, v in zip(CLASS_NAMES, p)}))
                s.add(Submission(job_id=job.id, door="folder", original_name=f"lesion_{i}.jpg", received_at=at))
                if i % 5 == 0:
                    s.add(JobReview(job_id=job.id, reviewed_by="bench", reviewed_at=at))
                one = job.id
    return one


def timed(client: httpx.Client, path: str, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (path, r.status_code)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--database-url", default="")
    args = ap.parse_args()

    from worker.doors.http_api import start_http_server
    from worker.intake.admission import Intake
    from worker.workspace.users import authenticate, create_user

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp), http_host="127.0.0.1", http_port=0, database_url=args.database_url)
        settings.ensure_folders()
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        t0 = time.perf_counter()
        job_id = fill(sessions, args.jobs)
        print(f"{args.jobs} jobs written in {time.perf_counter() - t0:.1f} s ({engine.dialect.name})")
        create_user(sessions, "bench", "clinician", PASSWORD)
        t0 = time.perf_counter()
        for _ in range(5):
            authenticate(sessions, "bench", PASSWORD)
        print(f"argon2 sign-in check: {(time.perf_counter() - t0) / 5 * 1000:.0f} ms")
        server = start_http_server(settings, Intake(settings, sessions, lambda _: None))
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60)
            token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/ui/login").text).group(1)
            client.post("/ui/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token})
            for label, path in [("worklist, first page", "/ui/worklist"),
                                ("worklist, urgent not reviewed", "/ui/worklist?level=urgent&reviewed=no"),
                                ("search, part of a patient id", "/ui/worklist?q=P0012"),
                                ("job page", f"/ui/jobs/{job_id}"),
                                ("site page", "/ui/site")]:
                median, p95 = timed(client, path, args.runs)
                print(f"{label:<32} median {median:7.1f} ms   p95 {p95:7.1f} ms")
            client.close()
        finally:
            server.shutdown()
            engine.dispose()


if __name__ == "__main__":
    main()
