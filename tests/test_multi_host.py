"""Issue 22 done-when: three "hosts" as separate process trees (``melanoma-triage run --roles``)
with separate, unshared homes, sharing only the real PostgreSQL and Redis. Host A runs
``intake,http,dicom,beat``, hosts B and C ``triage,deliver``; images sent to A
over HTTP and DICOM are triaged by host B's workers, and A's API serves their reports. Host B
is killed mid-batch; host C finishes, and every image is done exactly once."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from schemas import JobState
from tests.imagegen import dicom_bytes, jpeg_bytes, lesion_rgb
from worker.classify.export import ensure_export
from worker.db.engine import make_engine, make_session_factory
from worker.db.migrate import upgrade
from worker.db.models import Job, Prediction, Report
from worker.doors.tokens import create_token
from worker.storage import model_sync
from worker.store.versions import ModelStore

pytestmark = pytest.mark.integration
assert shutil.which("storescu"), "dcmtk is installed by scripts/setup.sh"

ROOT = Path(__file__).resolve().parents[1]
#: Enough that host B, killed at its first result, cannot have finished them all on an idle machine.
HTTP_IMAGES, DICOM_IMAGES = 16, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """One host: its own home folder and process tree (a session of its own: killed as one)."""

    def __init__(self, name: str, home: Path, env: dict[str, str], commands: list[list[str]]) -> None:
        self.name, self.home = name, home
        self.logs = []
        self.procs = []
        home.mkdir(parents=True)
        for i, cmd in enumerate(commands):
            log = open(home / f"process-{i}.log", "wb")
            self.logs.append(home / f"process-{i}.log")
            self.procs.append(subprocess.Popen(cmd, env={**env, "TRIAGE_HOME": str(home)}, cwd=ROOT,
                                               stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def kill(self, sig=signal.SIGKILL) -> None:
        """Every process of the tree (run's children have sessions of their own)."""
        tree = []
        for proc in self.procs:
            try:
                parent = psutil.Process(proc.pid)
                tree += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        if sig == signal.SIGTERM:  # run stops its children itself
            tree = [p for p in tree if p.pid in {proc.pid for proc in self.procs}]
        for p in tree:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)

    def done_jobs(self) -> set[str]:
        return set(re.findall(r"job ([0-9a-f]{32}) done:", self.log_text()))


def _run(roles: str) -> list[list[str]]:
    return [[sys.executable, "-m", "worker", "run", "--roles", roles]]


@pytest.fixture
def cluster(tmp_path, postgres_url, redis_url, tiny_model_dir):
    """The shared services, a seeded model store in the database, and the environment of every
    host (database storage, small leases so a dead host's jobs come back within seconds)."""
    upgrade(postgres_url)
    seed = tmp_path / "seed-store"
    store = ModelStore(seed, export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    engine = make_engine(postgres_url)
    model_sync.publish(seed, engine)
    token = create_token(make_session_factory(engine), "his", "admin")  # reads DICOM jobs too
    http_port, dicom_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(PYTHONPATH=str(ROOT), TRIAGE_DATABASE_URL=postgres_url, TRIAGE_BROKER_URL=redis_url,
               TRIAGE_STORAGE="database", TRIAGE_HTTP_HOST="127.0.0.1", TRIAGE_HTTP_PORT=str(http_port),
               TRIAGE_DICOM_HOST="127.0.0.1", TRIAGE_DICOM_PORT=str(dicom_port),
               TRIAGE_MIN_FREE_DISK_BYTES="0", TRIAGE_JOB_LEASE_S="4", TRIAGE_RECONCILE_INTERVAL_S="2",
               TRIAGE_STALE_AFTER_S="30", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    hosts: list[Host] = []
    yield dict(env=env, engine=engine, token=token, http=f"http://127.0.0.1:{http_port}",
               dicom_port=dicom_port, tmp=tmp_path, hosts=hosts)
    for host in hosts:
        host.kill(signal.SIGTERM)
    engine.dispose()


def _wait(what: str, ready, timeout_s: float, hosts: list[Host], poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(poll_s)
    logs = "\n".join(f"--- {h.name} {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                     for h in hosts for p in h.logs)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def _states(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(Job.id, Job.state)).tuples().all())


def test_doors_on_a_workers_on_b_then_c_when_b_dies(cluster):
    env, engine, hosts = cluster["env"], cluster["engine"], cluster["hosts"]
    a = Host("A", cluster["tmp"] / "host-a", env, _run("intake,http,dicom,beat"))
    hosts.append(a)
    http = httpx.Client(base_url=cluster["http"], timeout=30,
                        headers={"Authorization": f"Bearer {cluster['token']}"})

    def api_up() -> bool:
        try:
            return http.get("/v1/jobs/0").status_code in (404, 200)
        except httpx.HTTPError:
            return False

    _wait("host A's HTTP API", api_up, 120, hosts)
    job_ids = []
    for seed in range(HTTP_IMAGES):
        r = http.post("/v1/jobs", files={"file": (f"l{seed}.jpg", jpeg_bytes(lesion_rgb(seed=100 + seed)), "image/jpeg")},
                      data={"metadata": json.dumps({"accession_number": f"MH-{seed}"})})
        assert r.status_code == 201, r.text
        job_ids.append(r.json()["job_id"])
    for seed in range(DICOM_IMAGES):
        path = cluster["tmp"] / f"d{seed}.dcm"
        path.write_bytes(dicom_bytes(lesion_rgb(seed=200 + seed), ExplicitVRLittleEndian,
                                     metadata={"PatientID": f"MH-D{seed}", "StudyInstanceUID": generate_uid(),
                                               "SeriesInstanceUID": generate_uid(),
                                               "SOPInstanceUID": generate_uid()}))
        sent = subprocess.run(["storescu", "-R", "-aet", "CAMERA", "-aec", "MELTRIAGE", "127.0.0.1",
                               str(cluster["dicom_port"]), str(path)], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    _wait("the DICOM jobs", lambda: len(_states(engine)) == HTTP_IMAGES + DICOM_IMAGES, 60, hosts)
    all_jobs = set(_states(engine))
    assert all(s == JobState.QUEUED.value for s in _states(engine).values())  # no worker anywhere yet

    b = Host("B", cluster["tmp"] / "host-b", env, _run("triage,deliver"))
    hosts.append(b)
    _wait("host B's first result", lambda: len(b.done_jobs()) >= 1, 180, hosts, poll_s=0.05)
    b.kill()  # mid-batch: what it held comes back through its expired lease
    done_by_b = b.done_jobs()
    assert done_by_b and len(done_by_b) < len(all_jobs), "B finished everything before it was killed"

    c = Host("C", cluster["tmp"] / "host-c", env, _run("triage,deliver"))
    hosts.append(c)
    _wait("every job done", lambda: set(_states(engine).values()) == {JobState.DONE.value}, 240, hosts)

    done_by_c = c.done_jobs()
    assert done_by_b | done_by_c == all_jobs and a.done_jobs() == set()
    with engine.connect() as conn:  # exactly once: one report and one served prediction a job
        reports = dict(conn.execute(select(Report.job_id, func.count()).group_by(Report.job_id)).tuples().all())
        predictions = dict(conn.execute(select(Prediction.job_id, func.count())
                                        .where(Prediction.shadow.is_(False))
                                        .group_by(Prediction.job_id)).tuples().all())
    assert reports == {j: 1 for j in all_jobs} and predictions == {j: 1 for j in all_jobs}
    for job_id in job_ids + sorted(all_jobs - set(job_ids)):  # host A serves them all
        pdf = http.get(f"/v1/jobs/{job_id}/report.pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF"), job_id
    for host in (a, b, c):  # no host kept an image or a report on its disk
        for folder in ("archive", "reports", "rejected"):
            assert not [p for p in (host.home / folder).rglob("*") if p.is_file()], (host.name, folder)
