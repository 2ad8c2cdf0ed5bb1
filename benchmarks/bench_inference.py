"""Single-image inference latency of a stored model on one core (LiteRT, one thread).

    python benchmarks/bench_inference.py [--store model_store] [--model VERSION] [--runs 200]

Times three stages per image after a warm-up: resize (to_model_input), the network call
(the version's model.tflite on LiteRT/XNNPACK, as the workers serve it), and the whole
``Classifier.predict`` (resize + network + calibration + triage). Target (issue 10):
predict median <= 8 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

TARGET_MS = 8.0


def _stats(samples: list[float]) -> tuple[float, float, float]:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return statistics.median(ms), p95, statistics.mean(ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("model_store"))
    ap.add_argument("--model", default=None, help="version (default: CURRENT)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--image-size", type=int, nargs=2, default=(768, 1024), metavar=("H", "W"))
    args = ap.parse_args()

    from worker.classify.inference import Classifier
    from worker.classify.preprocess import to_model_input
    from worker.store.versions import ModelStore

    t0 = time.perf_counter()
    clf = Classifier.from_store(ModelStore(args.store), args.model)
    clf.warm_up()
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*args.image_size, 3), dtype=np.uint8)
    x = to_model_input(rgb, clf.input_size).astype(np.float32)[None]

    stages = {
        "resize": lambda: to_model_input(rgb, clf.input_size),
        "network": lambda: clf._model.logits(x),
        "predict (total)": lambda: clf.predict(rgb),
    }
    results = {}
    for name, fn in stages.items():
        for _ in range(args.warmup):
            fn()
        samples = []
        for _ in range(args.runs):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        results[name] = _stats(samples)

    print(f"model {clf.version}  input {clf.input_size}px  image {args.image_size[0]}x{args.image_size[1]}"
          f"  threads 1  runs {args.runs}  load {load_s:.2f} s  cpu {platform.processor() or platform.machine()}")
    print(f"{'stage':18} {'median ms':>10} {'p95 ms':>8} {'mean ms':>8}")
    for name, (med, p95, mean) in results.items():
        print(f"{name:18} {med:10.2f} {p95:8.2f} {mean:8.2f}")
    med = results["predict (total)"][0]
    print(f"target < {TARGET_MS:.0f} ms median: {'PASS' if med < TARGET_MS else 'FAIL'}")


if __name__ == "__main__":
    main()
