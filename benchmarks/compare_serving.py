"""Are the served model's outputs those of the trained model? The own test split, both ways.

    .venv/bin/python benchmarks/compare_serving.py [--data ../shared/data] [--store model_store]
        [--version V] [--n-large 300]

1. Serving path vs training path, on every image of the version's own test split (real
   images, ../shared/data): each image decoded and quality-checked as a worker does it, then
   (a) ``Classifier.predict`` -- the version's model.tflite on LiteRT, what workers and
   ``melanoma-triage predict`` serve -- and (b) the Keras model through
   ``predict_probabilities``, what ``train`` and ``evaluate`` measured. Prints the largest
   difference of any calibrated probability, melanoma AUC both ways, and the images whose
   triage level or named class differs.
2. Decoding at the size triage needs: the first ``--n-large`` test images enlarged to a
   4,000 x 3,000 JPEG, decoded at full size and with DCT scaling (``DRAFT_MIN_SIDE``), both
   through the served model: differences in probability, usability and triage level.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serving import _auc, test_split  # noqa: E402


def _rows(probs: np.ndarray) -> list[dict[str, float]]:
    from schemas import CLASS_NAMES

    return [dict(zip(CLASS_NAMES, map(float, row))) for row in probs]


def _served(clf, rgbs: list[np.ndarray], usable: list[bool]) -> np.ndarray:
    from schemas import CLASS_NAMES

    out = []
    for rgb, ok in zip(rgbs, usable):
        res = clf.predict(rgb, usable_image=ok)
        out.append([res.probabilities[c] for c in CLASS_NAMES])
    return np.array(out)


def _levels(probs: np.ndarray, usable: list[bool], thresholds) -> list:
    from worker.classify.triage import decide

    return [decide(p, thresholds, ok) for p, ok in zip(_rows(probs), usable)]


def serving_vs_training(store, version: str, data: Path) -> None:
    import keras
    import tensorflow as tf

    from schemas import MELANOMA_INDEX
    from worker.classify.inference import Classifier, predict_probabilities
    from worker.classify.preprocess import to_model_input
    from worker.classify.triage import named_class
    from worker.imaging.decode import DRAFT_MIN_SIDE, decode_file
    from worker.imaging.quality import assess_quality

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    meta = store.metadata(version)
    images = test_split(store.version_dir(version), data)
    labels = np.array([y for _, y in images])
    rgbs = [decode_file(p, draft_min_side=DRAFT_MIN_SIDE).rgb for p, _ in images]
    usable = [assess_quality(rgb)[0] for rgb in rgbs]

    t = time.perf_counter()
    served = _served(Classifier.from_store(store, version), rgbs, usable)
    t_served = time.perf_counter() - t
    model = keras.saving.load_model(store.model_path(version), compile=False)
    stack = np.stack([to_model_input(rgb, meta.input_size) for rgb in rgbs])
    t = time.perf_counter()
    trained = predict_probabilities(model, stack, meta.temperature)
    t_trained = time.perf_counter() - t

    th = meta.thresholds
    lv_s, lv_t = _levels(served, usable, th), _levels(trained, usable, th)
    changed = [i for i, (a, b) in enumerate(zip(lv_s, lv_t)) if a != b]
    cls_changed = sum(named_class(a, th) != named_class(b, th)
                      for a, b in zip(_rows(served), _rows(trained)))
    mel_s, mel_t = served[:, MELANOMA_INDEX], trained[:, MELANOMA_INDEX]
    print(f"## 1. Served (LiteRT model.tflite) vs trained (Keras model.keras), model {version}")
    print(f"  own test split: {len(images)} real images, {labels.sum()} melanomas, "
          f"{len(images) - sum(usable)} judged unusable by the quality check (same for both)")
    print(f"  max |Δ probability| over all classes and images: {np.abs(served - trained).max():.2e}"
          f"   max |Δ p(melanoma)|: {np.abs(mel_s - mel_t).max():.2e}")
    print(f"  melanoma AUC: served {_auc(mel_s, labels):.6f}   trained {_auc(mel_t, labels):.6f}")
    print(f"  triage level differs: {len(changed)} of {len(images)}   named class differs: "
          f"{cls_changed}   (time: served {t_served:.0f} s one image at a time, "
          f"trained {t_trained:.0f} s in batches)")
    for i in changed[:10]:
        print(f"    {images[i][0].name}: served {lv_s[i].value} p(mel) {mel_s[i]:.6f}, "
              f"trained {lv_t[i].value} p(mel) {mel_t[i]:.6f} (urgent threshold {th.urgent_melanoma})")


def large_jpeg(path: Path, size: tuple[int, int] = (4000, 3000)) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        big = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def draft_effect(store, version: str, data: Path, n: int) -> None:
    from schemas import MELANOMA_INDEX
    from worker.classify.inference import Classifier
    from worker.imaging.decode import DRAFT_MIN_SIDE, decode_bytes
    from worker.imaging.quality import assess_quality

    meta = store.metadata(version)
    clf = Classifier.from_store(store, version)
    images = test_split(store.version_dir(version), data)[:n]
    labels = np.array([y for _, y in images])
    out: dict[str, tuple[np.ndarray, list[bool], float]] = {}
    files = [large_jpeg(p) for p, _ in images]
    for name, side in (("full size", None), (f"draft >= {DRAFT_MIN_SIDE} px", DRAFT_MIN_SIDE)):
        t = time.perf_counter()
        rgbs = [decode_bytes(f, draft_min_side=side).rgb for f in files]
        dt = (time.perf_counter() - t) / len(files)
        usable = [assess_quality(rgb)[0] for rgb in rgbs]
        out[name] = (_served(clf, rgbs, usable), usable, dt)
    (full, u_full, t_full), (draft, u_draft, t_draft) = out.values()
    th = meta.thresholds
    lv_f, lv_d = _levels(full, u_full, th), _levels(draft, u_draft, th)
    print(f"\n## 2. Decoding at the size triage needs: {len(files)} test images as 4,000 x 3,000 JPEG "
          f"({labels.sum()} melanomas), served model")
    print(f"  decode: full size {1000 * t_full:.0f} ms, draft {1000 * t_draft:.0f} ms per image")
    print(f"  max |Δ p(melanoma)| {np.abs(full - draft)[:, MELANOMA_INDEX].max():.4f}   max |Δ probability| "
          f"{np.abs(full - draft).max():.4f}   usability differs: "
          f"{sum(a != b for a, b in zip(u_full, u_draft))}")
    print(f"  melanoma AUC: full {_auc(full[:, MELANOMA_INDEX], labels):.4f}   draft "
          f"{_auc(draft[:, MELANOMA_INDEX], labels):.4f}   triage level differs: "
          f"{sum(a != b for a, b in zip(lv_f, lv_d))} of {len(files)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--store", type=Path, default=ROOT / "model_store")
    ap.add_argument("--version", default=None)
    ap.add_argument("--n-large", type=int, default=300)
    args = ap.parse_args()

    from worker.store.versions import ModelStore

    store = ModelStore(args.store)
    version = args.version or store.current_version()
    serving_vs_training(store, version, args.data)
    if args.n_large:
        draft_effect(store, version, args.data, args.n_large)


if __name__ == "__main__":
    main()
