"""Serving runtime vs Keras, side by side in one run: latency, import + load cost, RSS, equality.

    .venv/bin/python benchmarks/bench_serving.py --data ../shared/data [--runs 200] [--n-images 0]
        [--store model_store] [--version V] [--onnx model.onnx]

1. Exports the version to LiteRT (worker.classify.export) in a temporary copy of its folder.
2. Cold cost: a fresh process per runtime imports it, loads the model and runs one image;
   prints import time, load time, first call, resident memory, and whether TensorFlow got in.
3. Latency: one process, one thread, the Keras tf.function (what the worker runs today) and
   LiteRT interleaved run by run on the same real images; median and p95.
4. Equality on the version's own test split (real images; ``--n-images 0`` = all): max
   |Δ logit|, max |Δ calibrated melanoma probability|, melanoma AUC of both, pairs whose
   melanoma ranking flips, and images whose triage level or named class differs.

Numbers are noisy on a shared machine: read the ratios, not the absolute values.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLD = {
    "litert": """
import time; t0 = time.perf_counter()
from worker.classify.runtime_litert import LiteRTModel
t1 = time.perf_counter()
m = LiteRTModel.from_version_dir(VDIR, SHA)
t2 = time.perf_counter()
m.logits(X)
""",
    "keras": """
import time; t0 = time.perf_counter()
import tensorflow as tf, keras
tf.config.threading.set_intra_op_parallelism_threads(1); tf.config.threading.set_inter_op_parallelism_threads(1)
t1 = time.perf_counter()
model = keras.saving.load_model(VDIR / "model.keras", compile=False)
f = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec(X.shape, tf.float32)])
t2 = time.perf_counter()
f(X).numpy()
""",
    "onnxruntime": """
import time; t0 = time.perf_counter()
import onnxruntime as ort
t1 = time.perf_counter()
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
s = ort.InferenceSession(str(ONNX), so, providers=["CPUExecutionProvider"])
t2 = time.perf_counter()
s.run(None, {s.get_inputs()[0].name: X})
""",
}
COLD_TAIL = """
t3 = time.perf_counter()
rss = {k: int(v.split()[0]) // 1024 for k, v in
       (l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM")))}
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2, **rss,
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def _cold(kind: str, vdir: Path, sha: str, onnx: Path | None) -> dict:
    head = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path\n"
            "import numpy as np, worker.errors  # every worker imports these anyway\n"
            f"VDIR = Path({str(vdir)!r}); SHA = {sha!r}; ONNX = Path({str(onnx)!r})\n"
            "X = np.zeros((1, 224, 224, 3), np.float32)\n")
    out = subprocess.run([sys.executable, "-c", head + COLD[kind] + COLD_TAIL],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ms(values: list[float]) -> tuple[float, float]:
    v = sorted(values)
    return 1000 * statistics.median(v), 1000 * v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]


def test_split(version_dir: Path, data: Path) -> list[tuple[Path, int]]:
    """(image path, is melanoma) for the version's own test split, from split.csv + labels."""
    ham = {r["image_id"]: r["dx"] == "mel" for r in csv.DictReader(open(data / "ham10000-224/labels.csv"))}
    i17 = {r["image_id"]: r["melanoma"] == "1" for r in csv.DictReader(open(data / "isic2017-train/labels.csv"))}
    nine = {}
    for p in sorted((data / "isic-9class/train").glob("*/*.jpg")):
        nine.setdefault(p.stem, (p, p.parent.name == "melanoma"))
    out = []
    for row in csv.DictReader(open(version_dir / "split.csv")):
        if row["subset"] != "test":
            continue
        iid, src = row["image_id"], row["source"]
        if src == "ham10000":
            out.append((data / "ham10000-224/images" / f"{iid}.jpg", int(ham[iid])))
        elif src == "isic2017":
            out.append((data / "isic2017-train/images" / f"{iid}.jpg", int(i17[iid])))
        elif iid in nine:
            out.append((nine[iid][0], int(nine[iid][1])))
    return out


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def _calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=ROOT / "model_store")
    ap.add_argument("--version", default=None)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--n-images", type=int, default=0, help="test images compared (0 = all)")
    ap.add_argument("--onnx", type=Path, default=None, help="also time an ONNX export with onnxruntime")
    args = ap.parse_args()

    from PIL import Image

    from schemas import CLASS_NAMES, MELANOMA_INDEX, TriageThresholds
    from worker.classify.export import export_version
    from worker.classify.preprocess import to_model_input
    from worker.classify.runtime_litert import LiteRTModel
    from worker.classify.triage import decide, named_class

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)  # before the export's first op
    tf.config.threading.set_inter_op_parallelism_threads(1)
    version = args.version or (args.store / "CURRENT").read_text().strip()
    with tempfile.TemporaryDirectory() as tmp:
        vdir = Path(tmp) / version
        shutil.copytree(args.store / "versions" / version, vdir)
        meta = json.loads((vdir / "model.json").read_text())
        t = time.perf_counter()
        export_version(vdir)
        print(f"model {version}: LiteRT export {time.perf_counter() - t:.1f} s, "
              f"{(vdir / 'model.tflite').stat().st_size / 1e6:.1f} MB "
              f"(model.keras {(vdir / 'model.keras').stat().st_size / 1e6:.1f} MB)")

        print("\ncold process: import runtime, load model, first image (one fresh process each)")
        kinds = ["keras", "litert"] + (["onnxruntime"] if args.onnx else [])
        for kind in kinds:
            c = _cold(kind, vdir, meta["sha256"], args.onnx)
            print(f"  {kind:<12} import {c['import_s']:5.2f} s  load {c['load_s']:5.2f} s  "
                  f"first call {1000 * c['first_call_s']:6.0f} ms  RSS {c['VmRSS']:4d} MB "
                  f"(peak {c['VmHWM']:4d})  tensorflow imported: {c['tensorflow_imported']}")

        images = test_split(vdir, args.data)
        if args.n_images:
            images = images[:args.n_images]
        size = int(meta["input_size"])
        inputs = []
        for path, _ in images:
            with Image.open(path) as im:
                inputs.append(to_model_input(np.asarray(im.convert("RGB")), size).astype(np.float32)[None])

        import keras

        model = keras.saving.load_model(vdir / "model.keras", compile=False)
        spec = tf.TensorSpec((1, size, size, 3), tf.float32)
        keras_fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        lite = LiteRTModel.from_version_dir(vdir, meta["sha256"])
        runners = {"keras tf.function": lambda x: keras_fn(x).numpy(), "litert float32": lite.logits}
        if args.onnx:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
            sess = ort.InferenceSession(str(args.onnx), so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            runners["onnxruntime"] = lambda x: sess.run(None, {name: x})[0]

        times: dict[str, list[float]] = {k: [] for k in runners}
        for i in range(args.runs + 10):  # interleaved, so load changes hit every runtime alike
            x = inputs[i % len(inputs)]
            for k, fn in runners.items():
                t = time.perf_counter()
                fn(x)
                if i >= 10:
                    times[k].append(time.perf_counter() - t)
        base = statistics.median(times["keras tf.function"])
        print(f"\nlatency, one image, one thread, {args.runs} runs interleaved:")
        for k, v in times.items():
            med, p95 = _ms(v)
            print(f"  {k:<18} median {med:6.1f} ms  p95 {p95:6.1f} ms  ({base / statistics.median(v):.2f}x keras)")

        ref = np.concatenate([runners["keras tf.function"](x) for x in inputs])
        got = np.concatenate([lite.logits(x) for x in inputs])
        labels = np.array([y for _, y in images])
        T, th = float(meta["temperature"]), TriageThresholds(**meta["thresholds"])
        p_ref, p_got = _calibrated(ref, T), _calibrated(got, T)
        mel_ref, mel_got = p_ref[:, MELANOMA_INDEX], p_got[:, MELANOMA_INDEX]
        as_dict = lambda row: dict(zip(CLASS_NAMES, map(float, row)))  # noqa: E731
        triage_diff = sum(decide(as_dict(a), th) != decide(as_dict(b), th) for a, b in zip(p_ref, p_got))
        class_diff = sum(named_class(as_dict(a), th) != named_class(as_dict(b), th) for a, b in zip(p_ref, p_got))
        flips = int(((np.sign(mel_ref[:, None] - mel_ref[None]) * np.sign(mel_got[:, None] - mel_got[None])) < 0)
                    .sum() // 2)
        print(f"\nequality, {len(images)} real test images ({labels.sum()} melanoma), LiteRT vs Keras:")
        print(f"  max |Δ logit| {np.abs(got - ref).max():.2e}   max |Δ p(melanoma)| "
              f"{np.abs(mel_got - mel_ref).max():.2e}")
        print(f"  melanoma AUC keras {_auc(mel_ref, labels):.6f}  litert {_auc(mel_got, labels):.6f}  "
              f"melanoma ranking pairs flipped: {flips}")
        print(f"  triage level differs: {triage_diff} images   named class differs: {class_diff} images")


if __name__ == "__main__":
    main()
