"""Throughput of the triage service, per stage and end to end, beside its floors, in one run.

    .venv/bin/python benchmarks/bench_pipeline.py [--n 120] [--service-n 200] [--rss-n 2000]
        [--data ../shared/data] [--concurrency 1 2] [--skip-service]

1. In process (one worker's work, a fresh home on the embedded defaults: SQLite, files),
   on real dermoscopy images (../shared/data, never copied) enlarged in memory to the sizes
   cameras send: 600 x 450 JPEG, 4,000 x 3,000 JPEG and 600 x 450 DICOM (JPEG baseline):
   per-stage median and p95 of admission, decode + quality, classify, PDF, the rest of the
   job (database, files, lease) and the job total, timed inside ``pipeline.process_job``.
2. Floors, measured in the same run on the same images: bare decode (Pillow draft + resize
   to the model size; pydicom + resize for DICOM), bare inference (one LiteRT invoke), and a
   minimal reportlab page with an image and a bar chart. Our job time as a ratio to their sum.
3. Memory: resident size of this process over ``--rss-n`` jobs (growth per 1,000 images).
4. The real service: ``melanoma-triage run`` on a fresh home for each worker concurrency
   (TRIAGE_WORKER_CONCURRENCY), doors off. Cold start: the first image dropped once the
   worker says "ready", until its report is in the database. Then ``--service-n`` images
   dropped into intake/ at once (copy-then-rename): images/min, per worker process, the
   ratio of 2 workers to 1, latency per image, and the triage worker's RSS over the run.
   CPU time (user + system) of every process of `run`, by role (the parent: watcher,
   admission, supervisor; each Celery worker's main process apart from its pool; beat):
   ms per image over the batch (until the last deliver task), ms per second while idle
   before it, and images per CPU-minute of the whole service: the "per core used" figure,
   and the one to compare when other work shares the machine (wall clock is not).

Numbers are noisy on a shared machine: compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("jpeg 600x450", "jpeg 4000x3000", "dicom 600x450")
SIZES = {"jpeg 600x450": (600, 450), "jpeg 4000x3000": (4000, 3000), "dicom 600x450": (600, 450)}
MODEL_SIZE = 224
#: Seconds the service is watched idle (after the first image, before the batch).
IDLE_S = 5.0


# ---------------------------------------------------------------- inputs


def real_images(data: Path, n: int, offset: int = 0) -> list[np.ndarray]:
    from PIL import Image

    paths = sorted((data / "ham10000-224/images").glob("*.jpg"))[offset:offset + n]
    if len(paths) < n:
        raise SystemExit(f"need {n} images under {data}/ham10000-224/images")
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


def camera_file(rgb: np.ndarray, kind: str, seed: int) -> bytes:
    """A real image enlarged to a camera's size, with sensor-like noise (so that the file
    size and the decode cost are those of a photograph, not of a smooth upscale)."""
    from PIL import Image

    from tests.imagegen import dicom_bytes

    w, h = SIZES[kind]
    big = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC))
    noise = np.random.default_rng(seed).integers(-3, 4, big.shape, dtype=np.int16)
    big = np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    if kind.startswith("dicom"):
        from pydicom import uid

        return dicom_bytes(big, transfer_syntax=uid.JPEGBaseline8Bit, photometric="YBR_FULL_422",
                           metadata={"PatientID": f"BENCH-{seed}"})
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def make_inputs(data: Path, n: int, offset: int = 0) -> list[tuple[str, str, bytes]]:
    """(kind, file name, bytes), the kinds in turn; every file different."""
    out = []
    for i, rgb in enumerate(real_images(data, n, offset)):
        kind = KINDS[i % len(KINDS)]
        ext = "dcm" if kind.startswith("dicom") else "jpg"
        out.append((kind, f"img{offset + i:05d}.{ext}", camera_file(rgb, kind, offset + i)))
    return out


# ---------------------------------------------------------------- statistics


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def ms(values: list[float]) -> str:
    if not values:
        return f"{'-':>8} {'-':>8}"
    return f"{1000 * statistics.median(values):8.1f} {1000 * pct(values, 0.95):8.1f}"


def rss_mb(pid: int | None = None) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


# ---------------------------------------------------------------- in process


class StageTimer:
    """Wraps the functions ``pipeline.process_job`` calls, so each stage is timed inside the
    real job (not a re-enactment of it)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.current: dict[str, float] = {}

    def wrap(self, stage: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[stage] = self.current.get(stage, 0.0) + time.perf_counter() - t
        return timed

    def close_job(self, kind: str, total: float) -> None:
        staged = 0.0
        for stage, value in self.current.items():
            self.samples[(kind, stage)].append(value)
            staged += value
        self.samples[(kind, "rest (database, files, lease)")].append(total - staged)
        self.samples[(kind, "job total")].append(total)
        self.current = {}


def in_process(inputs, rss_n: int, home: Path) -> dict:
    from schemas import SourceDoor
    from worker import pipeline
    from worker.process.home import prepare
    from worker.jobs.runtime import build_runtime
    from worker.settings import Settings

    settings = Settings(home=home)
    prepare(settings)  # seeds the home's store from the shipped one, as `run` does
    rt = build_runtime(settings, send=lambda job_id: None)  # admitted, never queued
    t = time.perf_counter()
    rt.models.warm()
    load_s = time.perf_counter() - t
    classifier = rt.models.get()
    timer = StageTimer()
    pipeline.decode_bytes = timer.wrap("decode", pipeline.decode_bytes)
    pipeline.assess_quality = timer.wrap("quality check", pipeline.assess_quality)
    classifier.predict = timer.wrap("classify", classifier.predict)
    pipeline.render_report = timer.wrap("PDF report", pipeline.render_report)
    admit: dict[str, list[float]] = defaultdict(list)

    def one(kind: str, name: str, data: bytes) -> None:
        t0 = time.perf_counter()
        job_id = rt.intake.admit_bytes(data, SourceDoor.API, original_name=name).job_id
        admit[kind].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        state = pipeline.process_job(rt, job_id)
        timer.close_job(kind, time.perf_counter() - t0)
        assert state == "done", state

    for kind, name, data in inputs[:3]:  # first calls of every code path: not counted
        one(kind, name, data)
    timer.samples.clear()
    admit.clear()
    for kind, name, data in inputs[3:]:
        one(kind, name, data)
    stages = {k: list(v) for k, v in timer.samples.items()}
    admitted = {k: list(v) for k, v in admit.items()}

    # Memory over many jobs: the same images again, made unique by bytes after the image
    # (a JPEG's end marker / a DICOM's trailing padding: the pixels and the work stay the same).
    rss = [(0, rss_mb())]
    step = max(1, rss_n // 10)
    for i in range(rss_n):
        kind, name, data = inputs[i % len(inputs)]
        one(kind, f"r{i}-{name}", data + b"\0" * 2 + i.to_bytes(4, "big") + b"\0\0")
        if (i + 1) % step == 0:
            rss.append((i + 1, rss_mb()))
    rt.close()
    return {"load_s": load_s, "stages": stages, "admit": admitted, "rss": rss,
            "version": classifier.version}


# ---------------------------------------------------------------- floors


def minimal_page(jpeg: bytes, probs: list[float]) -> bytes:
    """What a one-page report with an image and a bar chart must cost with reportlab."""
    from reportlab.graphics.shapes import Drawing, Rect, String
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Table

    from worker.report.layout import FONT, register_fonts

    register_fonts()
    style = ParagraphStyle("s", fontName=FONT, fontSize=9, leading=11)
    chart = Drawing(400, 160)
    for i, p in enumerate(probs):
        chart.add(Rect(150, 150 - 17 * (i + 1), 200 * p, 10))
        chart.add(String(145, 153 - 17 * (i + 1), f"class {i}", fontName=FONT, fontSize=8, textAnchor="end"))
    img = Image(io.BytesIO(jpeg), width=60 * mm, height=45 * mm)
    rows = [[Paragraph(f"field {i}", style), Paragraph(f"value {i}", style)] for i in range(12)]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, invariant=1)
    story = [Paragraph("Dermoscopy triage report", style), Table(rows), img,
             Paragraph("TRIAGE RESULT: urgent", style), chart, Paragraph("Decision support. " * 30, style)]
    doc.build(story)
    return buf.getvalue()


def bare_decode(data: bytes) -> np.ndarray:
    """Pixels at the model's size and nothing else: no checks, no quality, no metadata."""
    from PIL import Image

    if data[128:132] == b"DICM":
        from pydicom import dcmread

        rgb = dcmread(io.BytesIO(data)).pixel_array  # pydicom converts YBR to RGB itself
        return np.asarray(Image.fromarray(rgb).resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BILINEAR))
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (MODEL_SIZE, MODEL_SIZE))
        return np.asarray(img.convert("RGB").resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BILINEAR))


def floors(inputs, tflite: Path, runs: int) -> dict:
    """Bare inference and the minimal page, interleaved run by run."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    x = bare_decode(inputs[0][2]).astype(np.float32)[None]

    def infer() -> None:
        interp.set_tensor(inp, x)
        interp.invoke()
        interp.get_tensor(out)

    jpeg = next(d for k, _, d in inputs if k == "jpeg 600x450")
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92)
    probs = [0.05, 0.05, 0.05, 0.31, 0.3, 0.1, 0.05, 0.05, 0.04]
    fns = {"inference (one LiteRT invoke)": infer,
           "minimal reportlab page": lambda: minimal_page(buf.getvalue(), probs)}
    samples: dict[str, list[float]] = defaultdict(list)
    for i in range(runs + 3):  # interleaved; the first three are warm-up
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= 3:
                samples[name].append(time.perf_counter() - t)
    return dict(samples)


def per_image_decode_floors(inputs) -> dict[str, list[float]]:
    """Bare decode of the same images the jobs decoded, each once."""
    out: dict[str, list[float]] = defaultdict(list)
    for kind, _, data in inputs:
        t = time.perf_counter()
        bare_decode(data)
        out[kind].append(time.perf_counter() - t)
    return out


# ---------------------------------------------------------------- the real service


def _db_rows(db: Path) -> list[tuple[str, str, str | None]]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(
                "SELECT s.original_name, j.state, j.finished_at FROM jobs j "
                "JOIN submissions s ON s.job_id = j.id").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def _done(db: Path) -> dict[str, float]:
    """original name -> finished (epoch seconds) of the jobs done, from the database."""
    from datetime import datetime, timezone

    out = {}
    for name, state, finished in _db_rows(db):
        if state == "done" and finished:
            ts = datetime.fromisoformat(finished)
            ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
            out[name] = ts.timestamp()
    return out


def _done_jobs(db: Path) -> int:
    """Jobs done (images dropped twice share one)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _tree(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _triage_processes(run_pid: int) -> tuple[list, list]:
    """(main, pool children) of this run's triage worker."""
    tagged = [p for p in _tree(run_pid) if _is_triage_main(p)]  # forked children share the cmdline
    pids = {p.pid for p in tagged}
    mains = [p for p in tagged if p.ppid() not in pids]
    children = [p for p in tagged if p.ppid() in pids]
    return mains, children


def _is_triage_main(p) -> bool:
    try:
        cmd = p.cmdline()
    except Exception:  # noqa: BLE001 - gone
        return False
    return "--hostname=triage@%h" in cmd


def _role(p, run_pid: int) -> str:
    """Which part of `run` a process is: the parent (watcher), a Celery child, a pool process."""
    if p.pid == run_pid:
        return "run parent (watcher, admission)"
    try:
        cmd = " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - gone
        return "gone"
    for tag, role in (("triage@", "triage worker"), ("retrain@", "retrain worker"),
                      ("deliver@", "deliver worker"), (" beat", "beat")):
        if tag in cmd:
            return role
    return "other"


def _cpu_by_role(run_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each part of `run`; a Celery worker's main
    process (consumer, broker polling) apart from its pool processes (the tasks)."""
    import psutil

    out: dict[str, float] = defaultdict(float)
    try:
        procs = [psutil.Process(run_pid)] + _tree(run_pid)
    except psutil.NoSuchProcess:
        return out
    roles = {p.pid: _role(p, run_pid) for p in procs}
    for p in procs:
        try:
            t = p.cpu_times()
            role = roles[p.pid]
            if role.endswith("worker"):
                role += " pool" if roles.get(p.ppid()) == role else " main"
            out[role] += t.user + t.system
        except Exception:  # noqa: BLE001 - gone
            pass
    return out


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _safe_rss(p) -> float:
    try:
        return p.memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - gone
        return float("nan")


def _batch(run_pid: int, intake: Path, db: Path, inputs, deadline: float) -> dict:
    """Drop every input at once (copy-then-rename); wait until each is reported in the
    database; sample the triage worker's memory and every child's CPU meanwhile."""
    result: dict = {}
    dropped: dict[str, float] = {}
    # The idle cost first (polling, heartbeats, sweeps): what the service burns with nothing to do.
    idle_before, t_idle = _cpu_by_role(run_pid), time.time()
    time.sleep(IDLE_S)
    result["idle_cpu_ms_per_s"] = {k: 1000 * v / (time.time() - t_idle)
                                   for k, v in _cpu_delta(idle_before, _cpu_by_role(run_pid)).items()}
    cpu_before = _cpu_by_role(run_pid)
    t_drop = time.time()
    for _, name, data in inputs:
        tmp = intake / (name + ".part")
        tmp.write_bytes(data)
        tmp.rename(intake / name)
        dropped[name] = time.time()
    rss_samples: list[tuple[float, list[float]]] = []
    next_sample = 0.0
    while True:
        done = _done(db)
        finished = [done[n] for n in dropped if n in done]
        now = time.time()
        if now - t_drop >= next_sample:
            mains, children = _triage_processes(run_pid)
            rss_samples.append((now - t_drop, [_safe_rss(p) for p in mains + children]))
            next_sample += 1.0
        if len(finished) == len(dropped) or now > deadline:
            break
        time.sleep(0.05)
    if len(finished) < len(dropped):
        raise RuntimeError(f"only {len(finished)} of {len(dropped)} reported in time")
    # Until the last deliver task has run too (a FHIR outbox file per done job): its CPU counts.
    outbox = intake.parent / "outbox" / "fhir"
    while len(list(outbox.glob("*.json"))) < _done_jobs(db) and time.time() < deadline:
        time.sleep(0.05)
    cpu_after = _cpu_by_role(run_pid)
    result["cpu_wall_s"] = time.time() - t_drop
    result["cpu_ms_per_image"] = {k: 1000 * v / len(dropped)
                                  for k, v in _cpu_delta(cpu_before, cpu_after).items()}
    last = max(finished)
    result["n"] = len(dropped)
    result["drop_s"] = max(dropped.values()) - t_drop
    result["total_s"] = last - t_drop
    result["per_min"] = 60 * len(dropped) / (last - t_drop)
    result["cpu_s"] = sum(_cpu_delta(cpu_before, cpu_after).values())
    result["latency"] = [done[n] - dropped[n] for n in dropped]
    result["rss"] = rss_samples
    result["reports"] = len(list((intake.parent / "reports").glob("*.pdf")))
    return result


def service(inputs, concurrency: int, home: Path, timeout_s: float, warm_input,
            broker_url: str = "") -> dict:
    """One `melanoma-triage run` on a fresh home: cold start, then the batch (``_batch``)."""
    env = dict(os.environ, TRIAGE_HOME=str(home), TRIAGE_WORKER_CONCURRENCY=str(concurrency),
               TRIAGE_POLL_INTERVAL_S="0.2", TRIAGE_STABLE_SCANS="1", TRIAGE_STABLE_SECONDS="0",
               TRIAGE_DICOM_ENABLED="false", TRIAGE_HTTP_ENABLED="false")
    for key in ("TRIAGE_DATABASE_URL", "TRIAGE_BROKER_URL", "TRIAGE_MODEL_STORE_DIR"):
        env.pop(key, None)
    if broker_url:
        import redis

        redis.Redis.from_url(broker_url).flushdb()  # a database of its own: nothing left over
        env["TRIAGE_BROKER_URL"] = broker_url
    home.mkdir(parents=True)
    log = open(home / "run.log", "w")
    t_start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--home", str(home)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    intake, db = home / "intake", home / "triage.db"
    result: dict = {"concurrency": concurrency}
    try:
        deadline = time.time() + timeout_s
        while True:
            text = (home / "run.log").read_text()
            if any("triage@" in line and " ready." in line for line in text.splitlines()):
                break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"service did not start:\n{text[-3000:]}")
            time.sleep(0.1)
        # every pool child has warmed its model by now (worker_process_init)
        ready_s = time.time() - t_start
        mains, children = _triage_processes(proc.pid)
        result["rss_ready"] = [_safe_rss(p) for p in mains + children]

        _, name, data = warm_input
        t0 = time.time()
        (intake / (name + ".part")).write_bytes(data)
        (intake / (name + ".part")).rename(intake / name)
        while name not in (done := _done(db)):
            if time.time() > deadline:
                raise RuntimeError("the first image was not reported")
            time.sleep(0.02)
        result["cold_first_image_s"] = done[name] - t0
        outbox = home / "outbox" / "fhir"  # its deliver task too, before the idle window
        while not any(outbox.glob("*.json")) and time.time() < deadline:
            time.sleep(0.02)
        result["start_to_first_report_s"] = done[name] - t_start
        result["ready_s"] = ready_s

        result.update(_batch(proc.pid, intake, db, inputs, deadline))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return result


# ---------------------------------------------------------------- report


def print_in_process(res: dict, floor: dict, decode_floor: dict) -> None:
    stages, admit = res["stages"], res["admit"]
    names = ["decode", "quality check", "classify", "PDF report", "rest (database, files, lease)",
             "job total"]
    print(f"\n## 1. In process: one worker, stages timed inside pipeline.process_job "
          f"(model {res['version']}, LiteRT float32, 1 thread; model load + warm-up "
          f"{1000 * res['load_s']:.0f} ms once per worker process)")
    print(f"{'stage (median / p95 ms)':32}" + "".join(f"{k:>20}" for k in KINDS) + f"{'all':>20}")
    rows = [("admission (door -> queued)", admit)] + [
        (n, {k: stages.get((k, n), []) for k in KINDS}) for n in names]
    for label, by_kind in rows:
        every = [v for k in KINDS for v in by_kind.get(k, [])]
        print(f"{label:32}" + "".join(f"{ms(by_kind.get(k, [])):>20}" for k in KINDS) + f"{ms(every):>20}")
    n = {k: len(stages.get((k, "job total"), [])) for k in KINDS}
    print(f"  images per kind: {n}")

    print("\n## 2. Floors, same run, same images (median ms), and our job total / their sum")
    infer = statistics.median(floor["inference (one LiteRT invoke)"])
    page = statistics.median(floor["minimal reportlab page"])
    print(f"  bare inference (one LiteRT invoke, 224 px): {1000 * infer:.1f}   "
          f"minimal reportlab page: {1000 * page:.1f}")
    for k in KINDS:
        dec = statistics.median(decode_floor[k])
        total = statistics.median(stages[(k, "job total")])
        ours = {s: statistics.median(stages.get((k, s), [0])) for s in names}
        print(f"  {k:16} bare decode {1000 * dec:6.1f}  floor sum {1000 * (dec + infer + page):6.1f}"
              f"  | ours: decode+quality {1000 * (ours['decode'] + ours['quality check']):6.1f}"
              f" ({(ours['decode'] + ours['quality check']) / dec:4.1f}x)"
              f"  classify {1000 * ours['classify']:5.1f} ({ours['classify'] / infer:3.1f}x)"
              f"  PDF {1000 * ours['PDF report']:5.1f} ({ours['PDF report'] / page:3.1f}x)"
              f"  job {1000 * total:6.1f} = {total / (dec + infer + page):3.1f}x floor sum")

    rss = res["rss"]
    print(f"\n## 3. Memory of this (worker-like) process over {rss[-1][0]} more jobs (MB RSS)")
    print("  " + "  ".join(f"{i}:{m:.0f}" for i, m in rss))
    if len(rss) > 2:
        xs, ys = np.array([r[0] for r in rss[1:]]), np.array([r[1] for r in rss[1:]])
        slope = np.polyfit(xs, ys, 1)[0] * 1000
        print(f"  growth after the first {rss[1][0]} jobs: {slope:+.1f} MB per 1,000 images")


def print_service(runs: list[dict], broker_url: str) -> None:
    broker = f"broker {broker_url}" if broker_url else "filesystem broker"
    print(f"\n## 4. The real service: `melanoma-triage run`, fresh home, SQLite, {broker}, "
          "watcher polling 0.2 s, doors off")
    for r in runs:
        lat = r["latency"]
        print(f"  {r['concurrency']} worker process(es): {r['n']} images dropped in {r['drop_s']:.1f} s, "
              f"all reported in {r['total_s']:.1f} s = {r['per_min']:.0f} images/min "
              f"({r['per_min'] / r['concurrency']:.0f} per worker process); latency median "
              f"{statistics.median(lat):.1f} s p95 {pct(lat, 0.95):.1f} s; PDFs {r['reports']}")
        print(f"    cold start: worker ready {r['ready_s']:.1f} s after `run`; first image "
              f"dropped then -> report in the database {r['cold_first_image_s']:.2f} s "
              f"(`run` started -> first report {r['start_to_first_report_s']:.1f} s)")
        cpu, idle = r["cpu_ms_per_image"], r["idle_cpu_ms_per_s"]
        total = sum(cpu.values())
        print(f"    CPU per image by process (user + system, from the drop until the last "
              f"deliver task), and idle CPU before the drop ({IDLE_S:.0f} s):")
        print(f"      {'process':36}{'ms/image':>10}{'idle ms/s':>11}")
        for k in sorted(cpu, key=lambda k: -cpu[k]):
            print(f"      {k:36}{cpu[k]:10.1f}{idle.get(k, 0.0):11.1f}")
        print(f"      {'whole service':36}{total:10.1f}{sum(idle.values()):11.1f}")
        print(f"    = {60_000 / total:.0f} images per CPU-minute of the whole service "
              f"(target >= 1,000 per core used); wall clock {r['per_min']:.0f} images/min "
              f"on {r['cpu_s'] / r['cpu_wall_s']:.2f} cores used on average")
        ready = ", ".join(f"{m:.0f}" for m in r["rss_ready"])
        print(f"    triage worker RSS (MB; main, then each pool process): at ready [{ready}]")
        samples = r["rss"]
        pick = samples[:: max(1, len(samples) // 8)] + ([samples[-1]] if samples else [])
        for t, values in pick:
            print(f"      t={t:5.1f} s  [{', '.join(f'{v:.0f}' for v in values)}]")
    if len(runs) >= 2:
        one = next(r for r in runs if r["concurrency"] == 1)
        for r in runs:
            if r["concurrency"] > 1:
                print(f"  {r['concurrency']} workers / 1 worker: {r['per_min'] / one['per_min']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=120, help="images timed in process (a third per kind)")
    ap.add_argument("--rss-n", type=int, default=2000, help="further jobs while watching memory")
    ap.add_argument("--service-n", type=int, default=200, help="images dropped per service run")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--floor-runs", type=int, default=30)
    ap.add_argument("--skip-service", action="store_true")
    ap.add_argument("--service-timeout", type=float, default=900)
    ap.add_argument("--broker-url", default="", help="e.g. redis://127.0.0.1:6379/13 (a database "
                    "this benchmark may empty); default: the embedded filesystem broker")
    args = ap.parse_args()

    from reportlab.lib.rl_accel import _c_funcs

    import psutil

    t = time.perf_counter()
    inputs = make_inputs(args.data, args.n + 3)
    print(f"# bench_pipeline: {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at start; reportlab C accelerator "
          f"{'on' if _c_funcs else 'OFF'}; inputs made in {time.perf_counter() - t:.0f} s")
    for k in KINDS:
        sizes = [len(d) for kk, _, d in inputs if kk == k]
        print(f"  {k}: {len(sizes)} files, median {statistics.median(sizes) // 1024} KB")

    with tempfile.TemporaryDirectory() as tmp:
        res = in_process(inputs, args.rss_n, Path(tmp) / "home")
        tflite = next((Path(tmp) / "home" / "model_store" / "versions" / res["version"]).glob("model.tflite"))
        floor = floors(inputs, tflite, args.floor_runs)
        decode_floor = per_image_decode_floors(inputs[3:])
    print_in_process(res, floor, decode_floor)

    if not args.skip_service:
        service_inputs = make_inputs(args.data, args.service_n + 1, offset=args.n + 3)
        warm, rest = service_inputs[0], service_inputs[1:]
        runs = []
        for c in args.concurrency:
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(service(rest, c, Path(tmp) / "home", args.service_timeout, warm,
                                    args.broker_url))
        print_service(runs, args.broker_url)
    print(f"\nload average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"(the machine's other work shares these {psutil.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
