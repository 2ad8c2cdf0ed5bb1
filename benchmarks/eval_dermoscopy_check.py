"""How well does "not a dermoscopy image -> indeterminate" work? (issue 12, item 3)

    python benchmarks/eval_dermoscopy_check.py [--data ../shared/data] [--n 1000] [--seed 0]

Runs the product's quality gate (``worker.imaging.assess_quality``, which calls
``worker.imaging.dermoscopy_check``) on

* **not dermoscopy**: the pictures generated in ``tests/nondermgen.py`` (radiographs,
  documents, screenshots, blank frames, clinical photos of an arm) and the sample photos
  packaged with scikit-image, scikit-learn and matplotlib (portraits, a cat, a coffee cup,
  a street, a fundus photo, a histology slide, greyscale test images...);
* **real dermoscopy**: ``--n`` random images spread evenly over the three sources under
  ``--data`` (read there, never copied). The rules' thresholds were set on a *tuning*
  sample (seed 1, 200 images per source) and revised once after a first evaluation sample
  (seed 0, 1,000 images); those images, and every copy of them under another source (same
  ISIC id), are left out of the evaluation sample (default seed 2).

Prints, per picture, what was caught and why; then "caught X/Y not-dermoscopy" and "wrongly
flagged Z/N dermoscopy" (per source), and the check's cost at 224 pixels.

``--model VERSION`` (repeatable; ``--store`` default model_store): also what each model
alone -- without the check -- would have triaged the not-dermoscopy pictures, to compare the
models' own out-of-distribution behaviour (a classifier that says "urgent" to a cat needs the
check more).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.nondermgen import generated_set  # noqa: E402
from worker.imaging.dermoscopy_check import check_dermoscopy  # noqa: E402
from worker.imaging.quality import assess_quality  # noqa: E402

SOURCES = ("isic-9class/train/*/*.jpg", "ham10000-224/images/*.jpg", "isic2017-train/images/*.jpg")
#: (seed, images per source) of the samples the rules were tuned and revised on.
SEEN_SAMPLES = ((1, 200), (0, 334))


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = (255 * (a - a.min()) / (np.ptp(a) or 1)).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def packaged_photos() -> dict[str, np.ndarray]:
    """Sample photos that ship inside installed packages (no network)."""
    out: dict[str, np.ndarray] = {}
    try:
        import skimage.data as sk

        for name in ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel",
                     "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
                     "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
                     "cell"):
            out[f"skimage.{name}"] = _rgb(getattr(sk, name)())
        left, right = sk.stereo_motorcycle()[:2]
        out["skimage.motorcycle_left"], out["skimage.motorcycle_right"] = _rgb(left), _rgb(right)
        out["crop.astronaut_face"] = out["skimage.astronaut"][30:230, 150:330]
    except ImportError:
        print("scikit-image is not installed: its sample photos are left out", file=sys.stderr)
    try:
        from sklearn.datasets import load_sample_images

        images = load_sample_images()
        for filename, img in zip(images.filenames, images.images):
            out[f"sklearn.{Path(filename).name}"] = _rgb(img)
    except ImportError:
        pass
    try:
        import matplotlib.cbook as cbook

        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
            with cbook.get_sample_data(name) as f:
                out[f"matplotlib.{name}"] = np.asarray(Image.open(f).convert("RGB"))
        out["crop.grace_hopper_face"] = out["matplotlib.grace_hopper.jpg"][80:380, 150:400]
    except ImportError:
        pass
    return out


def _stem_sample(data: Path, seed: int, per_source: int, exclude_ids: frozenset[str] = frozenset()
                 ) -> list[tuple[str, Path]]:
    rng = random.Random(seed)
    out = []
    for pattern in SOURCES:
        paths = [p for p in sorted(data.glob(pattern)) if p.stem not in exclude_ids]
        out += [(pattern.split("/")[0], p) for p in rng.sample(paths, min(per_source, len(paths)))]
    return out


def dermoscopy_sample(data: Path, n: int, seed: int) -> list[tuple[str, Path]]:
    """``n`` images over the three sources, none of them (by ISIC id) in the samples seen
    while the rules were written."""
    seen = frozenset(p.stem for s, k in SEEN_SAMPLES for _, p in _stem_sample(data, s, k))
    per_source = -(-n // len(SOURCES))
    return _stem_sample(data, seed, per_source, seen)[:n]


def model_alone(store_root: Path, version: str, pictures: dict[str, np.ndarray]) -> dict[str, int]:
    """Triage levels one version gives the pictures with the dermoscopy check left out."""
    from collections import Counter

    from worker.classify.inference import Classifier
    from worker.store.versions import ModelStore

    clf = Classifier.from_store(ModelStore(store_root), version)
    return dict(Counter(clf.predict(rgb).triage.value for rgb in pictures.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=1000, help="real dermoscopy images to score")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--model", action="append", default=[], help="also: this version's triage "
                    "of the not-dermoscopy pictures without the check (repeatable)")
    ap.add_argument("--store", type=Path, default=ROOT / "model_store")
    args = ap.parse_args()

    foreign = {**{f"generated.{k}": v for k, v in generated_set().items()}, **packaged_photos()}
    print(f"== not dermoscopy: {len(foreign)} pictures (tests/nondermgen.py + packaged sample photos)")
    missed = []
    for name, rgb in foreign.items():
        usable, reason = assess_quality(rgb)
        print(f"  {'caught' if not usable else 'MISSED':6}  {name:40} {reason or ''}")
        if usable:
            missed.append(name)
    caught = len(foreign) - len(missed)
    model_only = {version: model_alone(args.store, version, foreign) for version in args.model}

    sample = dermoscopy_sample(args.data, args.n, args.seed)
    print(f"\n== real dermoscopy: {len(sample)} images from {args.data} (seed {args.seed}; the samples seen while tuning excluded)")
    flagged: dict[str, list[str]] = {src: [] for src, _ in sample}
    counts = {src: 0 for src, _ in sample}
    times = []
    for src, path in sample:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        counts[src] += 1
        usable, reason = assess_quality(rgb)
        if min(rgb.shape[:2]) <= 256:
            t0 = time.perf_counter()
            check_dermoscopy(rgb)
            times.append(time.perf_counter() - t0)
        if not usable:
            flagged[src].append(f"{path.relative_to(args.data)}: {reason}")
    n_flagged = sum(len(v) for v in flagged.values())
    for src in counts:
        print(f"  {src:16} flagged {len(flagged[src])}/{counts[src]}")
        for line in flagged[src]:
            print(f"      {line}")

    ms = sorted(t * 1000 for t in times)
    print("\n== summary")
    generated = [k for k in foreign if k.startswith("generated.")]
    gen_caught = sum(k not in missed for k in generated)
    print(f"caught {caught}/{len(foreign)} not-dermoscopy pictures: generated {gen_caught}/{len(generated)}, "
          f"packaged photos {caught - gen_caught}/{len(foreign) - len(generated)}"
          f" (missed: {', '.join(missed) or 'none'})")
    print(f"wrongly flagged {n_flagged}/{len(sample)} real dermoscopy images ({n_flagged / max(1, len(sample)):.1%})")
    for version, levels in model_only.items():
        print(f"model {version} alone (no check) on the {len(foreign)} not-dermoscopy pictures: "
              + ", ".join(f"{k} {v}" for k, v in sorted(levels.items())))
    if ms:
        print(f"check_dermoscopy at 180-256 px: median {statistics.median(ms):.2f} ms, "
              f"p95 {ms[int(0.95 * (len(ms) - 1))]:.2f} ms over {len(ms)} images")
    if args.json:
        args.json.write_text(json.dumps({
            "caught": caught, "not_dermoscopy": len(foreign), "missed": missed,
            "flagged": n_flagged, "dermoscopy": len(sample), "flagged_images": flagged,
            "median_ms": statistics.median(ms) if ms else None, "model_alone": model_only}, indent=1))


if __name__ == "__main__":
    main()
