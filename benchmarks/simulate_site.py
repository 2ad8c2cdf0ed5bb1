"""A new clinic with another camera, simulated end to end: shift monitor, then calibrate.

    python benchmarks/simulate_site.py [--data ../shared/data] [--home DIR] [--baseline 200]

HAM10000 images of the shipped model's *test* split (never trained on, and not the
validation images its ``reference.json`` was computed from) are re-coloured as another
dermatoscope would record them (a blue colour cast, a gamma of 1.3, a strong vignette, JPEG
at quality 85) and submitted through the product's own door and pipeline
(``Intake.admit_bytes`` -> ``pipeline.process_job``: quality gate, classifier, PDF, database)
in a throw-away home. The lesions are split in two halves (by lesion, so no lesion is in both):

0. ``--baseline`` images of the test split of all three sources, *as recorded*: the same
   mix of sources and cameras as the validation images, so the shift monitor should be quiet;
1. half A re-coloured: a clinic with its own camera and its own case mix (HAM10000 alone has
   fewer melanomas and easier nevi than the pooled validation split). The monitor warns;
   the confirmed diagnoses of half A come back
   (``truth.add_label``, histopathology); ``calibrate`` proposes site thresholds from them,
   the proposal passes the gate and is promoted with ``models promote``'s code, with half A's
   traffic as the shift monitor's new reference;
2. half B re-coloured, through the promoted site version: the monitor is quiet again (same
   camera, same case mix), and the sensitivity and specificity on cases the thresholds were
   *not* chosen on, beside what the base thresholds give on the same cases.

Prints each step's output. Takes a few minutes on one core.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schemas import MELANOMA, SourceDoor  # noqa: E402
from worker.calibration import site  # noqa: E402
from worker.calibration.thresholds import interval_at  # noqa: E402
from worker.monitor import shift  # noqa: E402
from worker.jobs.pipeline import process_job  # noqa: E402
from worker.retrain import truth  # noqa: E402
from worker.jobs.runtime import build_runtime  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.store import admin  # noqa: E402
from worker.store.versions import ModelStore, shipped_store_root  # noqa: E402
from worker.training.manifest import HAM_DX_TO_CLASS as HAM_DX  # noqa: E402

#: The other camera: channel gains (blue cast), gamma, vignette depth at the corners.
GAINS = (0.86, 0.97, 1.22)
GAMMA = 1.3
VIGNETTE = 0.55


def recolour(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as another dermatoscope would record it."""
    h, w = rgb.shape[:2]
    x = (rgb.astype(np.float32) / 255.0) ** GAMMA * np.array(GAINS, np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((yy - h / 2) / (h / 2)) ** 2 / 2 + ((xx - w / 2) / (w / 2)) ** 2 / 2
    x *= (1 - VIGNETTE * r2)[..., None]
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_split_cases(data: Path, version_dir: Path) -> list[dict]:
    """HAM10000 rows of the version's test split: image id, 9-class diagnosis, lesion, file."""
    with open(version_dir / "split.csv", newline="") as f:
        test_ids = {r["image_id"] for r in csv.DictReader(f) if r["subset"] == "test" and r["source"] == "ham10000"}
    ham = data / "ham10000-224"
    with open(ham / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["image_id"] in test_ids]
    return [{"image_id": r["image_id"], "diagnosis": HAM_DX[r["dx"]], "lesion": r["lesion_id"],
             "path": ham / "images" / f"{r['image_id']}.jpg"} for r in rows]


def pooled_test_sample(data: Path, version_dir: Path, n: int, seed: int) -> list[dict]:
    """``n`` random test-split images of every source (found under ``data`` by content)."""
    from worker.monitor.reference import split_images

    paths = split_images(version_dir, [data], "test")
    return [{"path": p} for p in random.Random(seed).sample(paths, min(n, len(paths)))]


def halves(cases: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    lesions = sorted({c["lesion"] for c in cases})
    random.Random(seed).shuffle(lesions)
    first = set(lesions[: len(lesions) // 2])
    return [c for c in cases if c["lesion"] in first], [c for c in cases if c["lesion"] not in first]


def submit(rt, cases: list[dict], transform, tag: str) -> list[tuple[str, dict]]:
    """Each case through the product's door and pipeline; (job id, case) pairs."""
    out = []
    t0 = time.perf_counter()
    for c in cases:
        rgb = np.asarray(Image.open(c["path"]).convert("RGB"))
        admission = rt.intake.admit_bytes(jpeg(transform(rgb)), SourceDoor.CLI, original_name=f"{tag}.jpg")
        process_job(rt, admission.job_id)
        out.append((admission.job_id, c))
    print(f"   {len(cases)} images through the pipeline in {time.perf_counter() - t0:.0f} s")
    return out


def label(rt, jobs: list[tuple[str, dict]]) -> None:
    with rt.sessions.begin() as s:
        for job_id, c in jobs:
            truth.add_label(s, job_id, c["diagnosis"], "histopathology", "simulation")


def show_shift(rt, store: ModelStore, window: int) -> None:
    shift.warn_if_shifted(rt.sessions, store, window)  # what a periodic check would log
    for line in shift.format_lines(shift.check(rt.sessions, store, window, images=True)):
        print("   " + line)


def held_out(rt, store: ModelStore, jobs: list[tuple[str, dict]], base_threshold: float, site_threshold: float) -> None:
    """Sensitivity and specificity on cases the site thresholds were not chosen on."""
    from sqlalchemy import select

    from worker.db.models import Prediction

    with rt.sessions() as s:
        p = {j: s.scalar(select(Prediction.p_melanoma).where(Prediction.job_id == j, Prediction.shadow.is_(False)))
             for j, _ in jobs}
    y = np.array([c["diagnosis"] == MELANOMA for _, c in jobs])
    scores = np.array([p[j] for j, _ in jobs])
    for name, t in (("base", base_threshold), ("site", site_threshold)):
        sens, spec = interval_at(y, scores, t)
        print(f"   {name} threshold {t:.4f}: sensitivity {sens.text()}, specificity {spec.text()} "
              f"({int(y.sum())} melanomas, {int((~y).sum())} others)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--home", type=Path, default=None, help="throw-away home (default: a temp folder)")
    ap.add_argument("--baseline", type=int, default=200, help="unchanged images first (0: none)")
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="   log %(levelname)s %(name)s: %(message)s")
    logging.getLogger("worker.jobs.pipeline").setLevel(logging.WARNING)

    home = args.home or Path(tempfile.mkdtemp(prefix="site-sim-"))
    settings = Settings(home=home)
    from worker.process.home import prepare

    prepare(settings)
    store = ModelStore(settings.model_store_dir)
    base = store.current_version()
    cases = test_split_cases(args.data, ModelStore(shipped_store_root()).version_dir(base))
    a, b = halves(cases, args.seed)
    print(f"home {home}; model {base}; HAM10000 test split: {len(cases)} images "
          f"-> half A {len(a)} ({sum(c['diagnosis'] == MELANOMA for c in a)} melanomas), "
          f"half B {len(b)} ({sum(c['diagnosis'] == MELANOMA for c in b)} melanomas)")
    print(f"camera: gains {GAINS}, gamma {GAMMA}, vignette {VIGNETTE}, JPEG 85")
    rt = build_runtime(settings, send=lambda job_id: None)
    try:
        if args.baseline:
            pooled = pooled_test_sample(args.data, ModelStore(shipped_store_root()).version_dir(base),
                                        args.baseline, args.seed)
            print(f"\n0. {len(pooled)} test-split images of all three sources, as recorded")
            submit(rt, pooled, lambda x: x, "baseline")
            show_shift(rt, store, min(args.window, args.baseline))

        print(f"\n1. half A re-coloured by the other camera ({len(a)} images)")
        jobs_a = submit(rt, a, recolour, "site-a")
        show_shift(rt, store, args.window)
        label(rt, jobs_a)
        with rt.sessions() as s:
            m = truth.triage_metrics(s)[base]["urgent"]
        print(f"   confirmed diagnoses of half A recorded; `metrics` for {base}: urgent sensitivity "
              f"{m['sensitivity']}, specificity {m['specificity']}")

        print("\n2. melanoma-triage calibrate")
        with rt.sessions() as s:
            found = site.gather_cases(s, store, base)
        proposal = site.propose(found, store.metadata(base))
        for line in site.format_proposal(proposal):
            print("   " + line)
        if not proposal.passed:
            print("   the gate refused: nothing promoted")
            return
        # The monitor's new reference: this site's own traffic (half A), under the new thresholds.
        reference = shift.traffic_reference(rt.sessions, site.equivalent_versions(store, base), "(this site)",
                                            proposal.thresholds, n=len(jobs_a))
        added = site.write_version(store, proposal, "benchmarks/simulate_site.py", home / "calibration", reference)
        change = admin.promote(store, rt.sessions, added, "simulation", "site calibration from half A")
        print(f"   added and promoted {change.version} (was {change.previous_version})")

        print(f"\n3. half B re-coloured ({len(b)} images), served by {added}")
        jobs_b = submit(rt, b, recolour, "site-b")
        show_shift(rt, store, args.window)
        print("   held-out check on half B (not used to choose the threshold):")
        held_out(rt, store, jobs_b, store.metadata(base).thresholds.urgent_melanoma, proposal.thresholds.urgent_melanoma)
    finally:
        rt.close()


if __name__ == "__main__":
    main()
