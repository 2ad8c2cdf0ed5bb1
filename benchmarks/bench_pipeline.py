"""End-to-end time per image, measured two ways on this machine:

1. in process: admission + decode + classify + PDF + database for N images, per stage;
2. the real service: ``melanoma-triage run`` as a process tree, N files copied into
   intake/, time from the copy to each PDF (latency) and for the whole batch (throughput).

    .venv/bin/python benchmarks/bench_pipeline.py --n 20 [--model-store model_store]

Uses generated images (tests/imagegen.py), never patient data. Numbers are noisy on a
shared machine: compare runs side by side, not across days.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schemas import SourceDoor  # noqa: E402
from tests.imagegen import dicom_bytes, jpeg_bytes, lesion_rgb  # noqa: E402


def _inputs(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        rgb = lesion_rgb((450, 600), seed=1000 + i)  # a typical dermoscope frame
        if i % 2:
            out.append((f"img{i}.dcm", dicom_bytes(rgb, metadata={"PatientID": f"BENCH-{i}"})))
        else:
            out.append((f"img{i}.jpg", jpeg_bytes(rgb)))
    return out


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return f"median {1000 * statistics.median(values):7.1f} ms   p95 {1000 * p95:7.1f} ms"


def in_process(n: int, store_dir: Path, home: Path) -> None:
    from worker import pipeline
    from worker.imaging.decode import decode_bytes
    from worker.imaging.quality import assess_quality
    from worker.store.versions import ModelStore
    from worker.runtime import build_runtime
    from worker.home import prepare
    from worker.settings import Settings

    settings = Settings(home=home, model_store_dir=home / "model_store")
    prepare(settings)
    store = ModelStore(settings.model_store_dir)
    src = ModelStore(store_dir)
    store.set_current(store.add_version(src.version_dir(src.current_version())))
    rt = build_runtime(settings, send=lambda job_id: None)  # admitted, never queued
    t0 = time.perf_counter()
    classifier = rt.models.get()
    print(f"model {classifier.version}: load {1000 * (time.perf_counter() - t0):.0f} ms (once per worker process)")
    stages: dict[str, list[float]] = {k: [] for k in ("admit", "decode", "classify", "report", "job total")}
    render = pipeline.render_report

    def timed_render(*args, **kwargs):  # the real call inside process_job, timed
        t = time.perf_counter()
        out = render(*args, **kwargs)
        stages["report"].append(time.perf_counter() - t)
        return out

    pipeline.render_report = timed_render
    for name, data in _inputs(n):
        t = time.perf_counter()
        job_id = rt.intake.admit_bytes(data, SourceDoor.API, original_name=name).job_id
        stages["admit"].append(time.perf_counter() - t)
        t = time.perf_counter()
        decoded = decode_bytes(data)
        assess_quality(decoded.rgb)
        stages["decode"].append(time.perf_counter() - t)
        t = time.perf_counter()
        classifier.predict(decoded.rgb)
        stages["classify"].append(time.perf_counter() - t)
        t = time.perf_counter()
        assert pipeline.process_job(rt, job_id) == "done"
        stages["job total"].append(time.perf_counter() - t)
    print(f"in process, {n} images (600x450, half JPEG half DICOM):")
    for stage, values in stages.items():
        print(f"  {stage:<10} {_ms(values)}")
    print("  (report = PDF rendering inside the job; job total = decode + quality + classify +"
          " PDF + database, as a worker runs it)")
    rt.close()


def service(n: int, store_dir: Path, home: Path) -> None:
    from worker.store.versions import ModelStore

    store = ModelStore(home / "model_store")
    src = ModelStore(store_dir)
    store.set_current(store.add_version(src.version_dir(src.current_version())))
    env = dict(os.environ, TRIAGE_POLL_INTERVAL_S="0.5")
    log = open(home / "run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--home", str(home)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    intake, reports = home / "intake", home / "reports"
    try:
        while not intake.is_dir():
            time.sleep(0.2)
        time.sleep(3)
        # Warm the worker (first task loads TensorFlow and the model).
        warm_t = time.monotonic()
        (intake / "warm.jpg").write_bytes(jpeg_bytes(lesion_rgb((450, 600), seed=1)))
        while not list(reports.glob("*.pdf")):
            time.sleep(0.05)
        print(f"service: first image (cold worker, loads the model) {time.monotonic() - warm_t:.1f} s")
        start = time.monotonic()
        for name, data in _inputs(n):
            tmp = intake / (name + ".part")  # copy-then-rename, as staff tools do
            tmp.write_bytes(data)
            tmp.rename(intake / name)
        while len(list(reports.glob("*.pdf"))) < n + 1:
            time.sleep(0.05)
        total = time.monotonic() - start
        print(f"service: {n} images dropped at once, all reported in {total:.1f} s "
              f"= {total / n:.2f} s per image ({n / total * 60:.0f} images/min; "
              f"includes the {env['TRIAGE_POLL_INTERVAL_S']} s polling and 2-scan stability wait)")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        in_process(args.n, args.model_store, Path(tmp) / "a")
    with tempfile.TemporaryDirectory() as tmp:
        service(args.n, args.model_store, Path(tmp) / "b")


if __name__ == "__main__":
    main()
