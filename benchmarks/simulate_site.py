"""A new clinic with another camera, simulated end to end: shift monitor, then calibrate.

    nice -n 10 python benchmarks/simulate_site.py --data ../shared/data [--home DIR]
        [--baseline 200] [--limit-a N] [--limit-b N] [--sensitivity 0.95]

HAM10000 images of the shipped model's *test* split (never trained on, and not the
validation images its ``reference.json`` was computed from) are re-coloured as another
dermatoscope would record them (a blue colour cast, a gamma of 1.3, a strong vignette, JPEG
at quality 85) and submitted through the product's own door and pipeline
(``Intake.admit_bytes`` -> ``pipeline.process_job``: quality gate, classifier, PDF, database)
in a throw-away home. The lesions are split in two halves (by lesion, so no lesion is in both):

0. ``--baseline`` images of the test split of all three sources, *as recorded*: the same
   mix of sources and cameras as the validation images, so the shift monitor should be quiet;
1. half A re-coloured: a clinic with its own camera and its own case mix (HAM10000 alone has
   fewer melanomas and easier nevi than the pooled validation split; ``--blur R``: soft
   optics as well, which shifts the melanoma probability more than the colours do). The
   monitor warns;
   the confirmed diagnoses of half A come back (``truth.add_label``, histopathology): every
   lesion of the half, so that the confirmed cases have the traffic's case mix (recalibrated
   on excised lesions only, the percentages would fit the excised population instead);
2. ``melanoma-triage calibrate --dry-run``, the same with ``--no-recalibrate`` (what a
   threshold-only version's gate says), then ``calibrate --sensitivity S --by --reason``,
   run as the commands (a subprocess on the same home): the probabilities are recalibrated
   on half A, the operating points shown, and the passing version's id (the last line of
   stdout) is promoted with ``models promote``'s code;
3. half B re-coloured (``--limit-b N``: a random N of it), through the promoted site version: the
   monitor against the site's own reference, then on cases the site version was *not*
   fitted on: the calibration error of the printed probabilities, and sensitivity and
   specificity, beside what the base gives on the same cases; and the report's calibration
   line.

Prints each step's output. Takes about a minute per hundred images on one core.
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
from worker.calibration.thresholds import interval_at  # noqa: E402
from worker.classify.export import ensure_export  # noqa: E402
from worker.classify.inference import Classifier  # noqa: E402
from worker.imaging import assess_quality, decode_bytes  # noqa: E402
from worker.intake import archive  # noqa: E402
from worker.jobs.pipeline import process_job  # noqa: E402
from worker.jobs.runtime import build_runtime  # noqa: E402
from worker.monitor import shift  # noqa: E402
from worker.retrain import truth  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.store import admin  # noqa: E402
from worker.store.versions import ModelStore, shipped_store_root  # noqa: E402
from worker.training.manifest import HAM_DX_TO_CLASS as HAM_DX  # noqa: E402

#: The other camera: channel gains (blue cast), gamma, vignette depth at the corners.
GAINS = (0.86, 0.97, 1.22)
GAMMA = 1.3
VIGNETTE = 0.55
#: ``--blur``: Gaussian blur radius in pixels of the 224-px images (soft optics); 0: sharp.
BLUR = {"radius": 0.0}


def recolour(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as another dermatoscope would record it."""
    if BLUR["radius"] > 0:
        from PIL import ImageFilter

        rgb = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(BLUR["radius"])))
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


def held_out(rt, store: ModelStore, jobs: list[tuple[str, dict]], base: str, site_version: str) -> None:
    """On cases the site version was not fitted on: the calibration error of what each version
    prints, and the sensitivity and specificity of each version's urgent threshold."""
    from sqlalchemy import select

    from schemas import CLASS_NAMES, MELANOMA_INDEX
    from worker.calibration.recalibrate import log_loss
    from worker.db.models import Image, Job
    from worker.training.metrics import expected_calibration_error

    with rt.sessions() as s:
        paths = {j: s.scalar(select(Image.archive_path).join(Job, Job.image_id == Image.id).where(Job.id == j))
                 for j, _ in jobs}
    y = np.array([c["diagnosis"] == MELANOMA for _, c in jobs])
    labels = np.array([CLASS_NAMES.index(c["diagnosis"]) for _, c in jobs])
    for name, version in (("base", base), ("site", site_version)):
        clf = Classifier.from_store(store, version)
        keep, probs = [], []
        for i, (j, _) in enumerate(jobs):
            rgb = decode_bytes(archive.load(paths[j])).rgb
            if assess_quality(rgb)[0]:
                p = clf.probabilities(rgb)
                keep.append(i)
                probs.append([p[c] for c in CLASS_NAMES])
        probs, yk = np.array(probs), y[keep]
        t = store.metadata(version).thresholds.urgent_melanoma
        ece = expected_calibration_error(probs, labels[keep])
        sens, spec = interval_at(yk, probs[:, MELANOMA_INDEX], t)
        print(f"   {name} ({version}): top-label ECE {ece:.3f}; melanoma log loss "
              f"{log_loss(probs[:, MELANOMA_INDEX], yk):.4f}, mean melanoma probability "
              f"{probs[:, MELANOMA_INDEX].mean():.3f} for a melanoma share of {yk.mean():.3f}; urgent threshold "
              f"{t:.4f}: sensitivity {sens.text()}, specificity {spec.text()} "
              f"({int(yk.sum())} melanomas, {int((~yk).sum())} others)")


def report_line(settings: Settings, job_id: str) -> str:
    """The calibration line of the PDF report of ``job_id`` (pdftotext)."""
    import subprocess

    pdf = next(settings.reports_dir.rglob(f"*{job_id}*.pdf"))
    text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True)
                    .stdout.split())
    start = text.find("Calibration:")
    end = text.find("Thresholds of this model version", start)
    return text[start:end].strip() if start >= 0 else "(no calibration line)"


def command(home: Path, *args: str, only: tuple[str, ...] = ()) -> tuple[int, str]:
    """``melanoma-triage ARGS --home HOME`` as a subprocess; (exit code, stdout). ``only``:
    print just the lines that start with one of these."""
    import subprocess

    argv = [sys.executable, "-m", "worker", *args, "--home", str(home)]
    print("   $ melanoma-triage " + " ".join(args[:1] + tuple(
        f"'{a}'" if " " in a else a for a in args[1:])) + f" --home {home}")
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    for line in done.stdout.splitlines():
        if not only or line.lstrip().startswith(only):
            print("   " + line)
    if done.returncode and done.stderr:
        print("   stderr: " + done.stderr.strip().splitlines()[-1])
    return done.returncode, done.stdout


def subsample(cases: list[dict], limit: int | None, seed: int) -> list[dict]:
    """A random ``limit`` of the cases (all when None): the same case mix, fewer images."""
    if limit is None or limit >= len(cases):
        return cases
    return random.Random(seed).sample(cases, limit)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--home", type=Path, default=None, help="throw-away home (default: a temp folder)")
    ap.add_argument("--baseline", type=int, default=200, help="unchanged images first (0: none)")
    ap.add_argument("--limit-a", type=int, default=None, help="images of half A (default: all)")
    ap.add_argument("--limit-b", type=int, default=None, help="images of half B (default: all)")
    ap.add_argument("--sensitivity", type=float, default=0.95, help="the operating point the site chooses")
    ap.add_argument("--blur", type=float, default=0.0, help="soft optics: Gaussian blur radius (px)")
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="   log %(levelname)s %(name)s: %(message)s")
    logging.getLogger("worker.jobs.pipeline").setLevel(logging.WARNING)

    BLUR["radius"] = args.blur
    home = args.home or Path(tempfile.mkdtemp(prefix="site-sim-"))
    settings = Settings(home=home)
    from worker.process.home import prepare

    prepare(settings)
    store = ModelStore(settings.model_store_dir, export=ensure_export)
    base = store.current_version()
    cases = test_split_cases(args.data, ModelStore(shipped_store_root()).version_dir(base))
    a, b = halves(cases, args.seed)
    a, b = subsample(a, args.limit_a, args.seed), subsample(b, args.limit_b, args.seed + 1)
    print(f"home {home}; model {base}; HAM10000 test split: {len(cases)} images "
          f"-> half A {len(a)} ({sum(c['diagnosis'] == MELANOMA for c in a)} melanomas), "
          f"half B {len(b)} ({sum(c['diagnosis'] == MELANOMA for c in b)} melanomas)")
    print(f"camera: gains {GAINS}, gamma {GAMMA}, vignette {VIGNETTE}, blur {args.blur} px, JPEG 85")
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

        print("\n2. calibrate")
        command(home, "calibrate", "--dry-run")
        print()
        command(home, "calibrate", "--dry-run", "--no-recalibrate", only=("probabilities", "calibration error", "gate",
                                                                           "- "))
        print()
        rc, out = command(home, "calibrate", "--sensitivity", f"{args.sensitivity}", "--by", "Dr Site Lead",
                          "--reason", "simulation: the site's governance board")
        if rc != 0:
            print("   the gate refused: nothing promoted")
            return
        added = out.strip().splitlines()[-1]
        change = admin.promote(store, rt.sessions, added, "simulation", "site calibration from half A")
        print(f"   promoted {change.version} (was {change.previous_version})")

        print(f"\n3. half B re-coloured ({len(b)} images), served by {added}")
        jobs_b = submit(rt, b, recolour, "site-b")
        show_shift(rt, store, args.window)
        print("   held-out check on half B (not used to fit the recalibration or choose the threshold):")
        held_out(rt, store, jobs_b, base, added)
        print(f"   report of {jobs_b[0][0]}: {report_line(settings, jobs_b[0][0])}")
    finally:
        rt.close()


if __name__ == "__main__":
    main()
