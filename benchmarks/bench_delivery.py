"""CPU and wall time of ``deliver_results`` per finished job, in process, beside its parts.

    .venv/bin/python benchmarks/bench_delivery.py [--n 200]

A fresh home on the embedded defaults (SQLite), no destinations configured: what the
deliver worker does for every job in the usual case (read the finished job, build the FHIR
collection bundle, write it durably to the outbox, ensure/read the deliveries rows).
``--n`` done jobs are inserted through the ORM (tests/resultgen: DICOM, JPEG and PNG
inputs, every triage level, with and without patient data), then each is delivered once.
Per job: median and p95 of process CPU time and of wall time, for the whole call and for
its parts (load_finished_job, build_bundle, write_outbox) timed separately on the same jobs.
Numbers are noisy on a shared machine: compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import ImageMetadata, TriageLevel  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.resultgen import insert_done_job  # noqa: E402

CASES = [  # (format, triage, melanoma probability, predicted class, metadata or None for default)
    ("dicom", TriageLevel.URGENT, 0.83, "melanoma", None),
    ("jpeg", TriageLevel.SOON, 0.2, "basal_cell_carcinoma", None),
    ("png", TriageLevel.ROUTINE, 0.01, "nevus", ImageMetadata()),
    ("jpeg", TriageLevel.INDETERMINATE, 0.3, "melanoma", ImageMetadata()),
]


def _stats(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):6.2f} ms  p95 {p95:6.2f} ms"


def _timed(fn, cpu: list[float], wall: list[float]):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    cpu.append(time.process_time() - c0)
    wall.append(time.perf_counter() - w0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()

    from worker.db.engine import make_engine, make_session_factory
    from worker.db.migrate import upgrade
    from worker.results.delivery import deliver_results
    from worker.results.fhir import build_bundle, write_outbox
    from worker.results.finished_job import load_finished_job

    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings(Path(tmp) / "home")
        settings.ensure_folders()
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        job_ids = []
        for i in range(args.n):
            fmt, triage, p, klass, metadata = CASES[i % len(CASES)]
            job_ids.append(insert_done_job(sessions, settings, fmt, triage=triage, melanoma=p,
                                           predicted_class=klass, metadata=metadata,
                                           data=_distinct_input(fmt)))
        deliver_results(settings, sessions, job_ids[0])  # warm imports and caches, not timed

        timings: dict[str, tuple[list[float], list[float]]] = {
            k: ([], []) for k in ("deliver_results", "load_finished_job", "build_bundle",
                                  "write_outbox")}
        for job_id in job_ids[1:]:
            outcomes = _timed(lambda: deliver_results(settings, sessions, job_id),
                              *timings["deliver_results"])
            assert outcomes == []  # nothing configured: only the outbox
        for job_id in job_ids[1:]:
            def load():
                with sessions() as s:
                    return load_finished_job(s, job_id)
            job = _timed(load, *timings["load_finished_job"])
            pdf = job.report_path.read_bytes()
            bundle = _timed(lambda: build_bundle(job, pdf, settings.fhir_patient_id_system),
                            *timings["build_bundle"])
            _timed(lambda: write_outbox(settings, job, bundle), *timings["write_outbox"])
        engine.dispose()

    print(f"deliver path, {len(job_ids) - 1} jobs (SQLite home, no destinations: outbox only)")
    for name, (cpu, wall) in timings.items():
        print(f"  {name:18s} CPU  {_stats(cpu)}   wall  {_stats(wall)}")


_INPUTS: dict[str, bytes] = {}


def _distinct_input(fmt: str) -> bytes:
    """A distinct input per job (the images table is unique on sha256) without re-encoding."""
    from tests.resultgen import input_bytes

    if fmt not in _INPUTS:
        _INPUTS[fmt] = input_bytes(fmt)
    _INPUTS[fmt] += b"\0\0"  # trailing padding: the delivery path never decodes the input
    return _INPUTS[fmt]


if __name__ == "__main__":
    main()
