"""What a larger backbone or input would cost at serving time, side by side in one run.

    .venv/bin/python benchmarks/bench_backbones.py [--runs 200] [lite0:224 lite1:240 lite2:224 lite2:260]

For each candidate the full classifier network (Shades of Gray, backbone, head) is built with
ImageNet weights where ``runs/weights`` has them (latency does not depend on the values),
saved, converted to LiteRT exactly as the workers' export does (``worker.classify.export``),
and checked against Keras on the exporter's probe images. The interpreters (one thread each,
as in a worker) then run one image per call, round-robin across candidates so that machine
noise hits all alike: median and p95 milliseconds, model file size and parameter count.
The serving budget (issue 12): single-image inference under 25 ms on one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # runs/weights is relative to the project root


def build(backbone: str, size: int, folder: Path) -> tuple[Path, int]:
    """A saved network for the candidate and its parameter count."""
    from worker.training import network

    weights = network.resolve_weights("imagenet", backbone)
    model = network.build_network(size, weights if weights and weights.is_file() else None,
                                  backbone=backbone, colour_constancy="shades_of_gray")
    path = folder / f"{backbone}-{size}.keras"
    model.save(path)
    return path, model.count_params()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates", nargs="*", default=["lite0:224", "lite1:240", "lite2:224", "lite2:260"])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()

    from worker.classify.export import convert_to_litert
    from worker.classify.runtime_litert import LiteRTModel

    loaded = []
    with tempfile.TemporaryDirectory() as tmp:
        for cand in args.candidates:
            backbone, size = cand.split(":")
            path, params = build(backbone, int(size), Path(tmp))
            flatbuffer, delta, _ = convert_to_litert(path, int(size))
            loaded.append((cand, LiteRTModel.from_bytes(flatbuffer, num_threads=1), int(size),
                           len(flatbuffer), params, delta))
    rng = np.random.default_rng(0)
    images = {size: rng.integers(0, 256, (8, 1, size, size, 3)).astype(np.float32)
              for size in {c[2] for c in loaded}}
    times: dict[str, list[float]] = {c[0]: [] for c in loaded}
    for i in range(args.warmup + args.runs):
        for cand, model, size, *_ in loaded:
            t = time.perf_counter()
            model.logits(images[size][i % 8])
            if i >= args.warmup:
                times[cand].append((time.perf_counter() - t) * 1000)
    base = statistics.median(times[loaded[0][0]])
    print(f"{'candidate':<11} {'params':>10} {'tflite MB':>9} {'max |dlogit|':>12} "
          f"{'median ms':>9} {'p95 ms':>7} {'x first':>7}")
    for cand, _, _, nbytes, params, delta in loaded:
        t = sorted(times[cand])
        med = statistics.median(t)
        print(f"{cand:<11} {params:>10,} {nbytes / 1e6:>9.1f} {delta:>12.1e} {med:>9.1f} "
              f"{t[int(0.95 * (len(t) - 1))]:>7.1f} {med / base:>7.2f}")
    print(f"({args.runs} runs each after {args.warmup} warm-up, one thread, interleaved)")


if __name__ == "__main__":
    main()
