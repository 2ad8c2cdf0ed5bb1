"""Our decode and PDF stages next to their floors, side by side in one run, as ratios.

    .venv/bin/python benchmarks/bench_floors.py [--data ../shared/data] [--runs 40]
        [--version-dir DIR_WITH_model.tflite] [--n-deviation 200]

Decode (600 x 450 and 4,000 x 3,000 JPEG made by upscaling a real dermoscopy image in memory):
  ours   = decode_bytes + assess_quality + to_model_input (what a job does today)
  draft  = worker.imaging.fast_decode.reduced_jpeg + assess_quality + to_model_input
  floor  = Pillow draft + bilinear resize to the model size, no checks
PDF (one report, real image 600 x 450):
  ours   = worker.report.layout.build_pdf as it is
  parts  = the thumbnail alone (LANCZOS + JPEG encode), build_story alone, and build_pdf
           with reportlab's ASCII85 of the image turned off (rl_config.useA85 = 0)
  floor  = a minimal platypus page: the same TTF font, an already-encoded JPEG, a bar chart
           of 9 bars, a table of 12 fields and 4 paragraphs
  The PDF part runs twice, in child processes with and without reportlab's C accelerator
  (the rl_accel package), because reportlab binds it at import.
With ``--version-dir`` (an exported version, see worker.classify.export): the draft path's
effect on the model, on real test images upscaled to 600 x 450 and 4,000 x 3,000: max
|Δ logit| against the current decode path and the number of triage levels that change.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"600x450": (600, 450), "4000x3000": (4000, 3000)}


def _med(v: list[float]) -> float:
    return 1000 * statistics.median(v)


def _p95(v: list[float]) -> float:
    s = sorted(v)
    return 1000 * s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def _interleaved(fns: dict, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(runs + 3):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= 3:
                times[k].append(time.perf_counter() - t)
    return times


def _print(times: dict[str, list[float]], floor: str) -> None:
    base = statistics.median(times[floor])
    for k, v in times.items():
        print(f"  {k:<34} median {_med(v):7.1f} ms  p95 {_p95(v):7.1f} ms  {statistics.median(v) / base:5.1f}x floor")


def real_image(data: Path) -> np.ndarray:
    from PIL import Image

    path = sorted((data / "ham10000-224/images").glob("*.jpg"))[0]
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def upscaled_jpeg(rgb: np.ndarray, size: tuple[int, int], quality: int = 92) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def bench_decode(rgb: np.ndarray, runs: int) -> None:
    from worker.classify.preprocess import to_model_input
    from worker.imaging.decode import decode_bytes
    from worker.imaging.fast_decode import decode_floor, reduced_jpeg
    from worker.imaging.quality import assess_quality

    for name, size in SIZES.items():
        data = upscaled_jpeg(rgb, size)

        def ours(data=data):
            d = decode_bytes(data)
            assess_quality(d.rgb)
            to_model_input(d.rgb, 224)

        def draft(data=data, min_side=224):
            d = reduced_jpeg(data, min_side).decoded
            assess_quality(d.rgb)
            to_model_input(d.rgb, 224)

        n = runs if size[0] < 1000 else max(5, runs // 4)
        times = _interleaved({"ours (decode+quality+resize)": ours,
                              "draft>=224 (reduced_jpeg+quality+resize)": draft,
                              "draft>=448 (reduced_jpeg+quality+resize)": lambda: draft(min_side=448),
                              "floor (draft+resize)": lambda data=data: decode_floor(data, 224)}, n)
        print(f"decode, JPEG {name} ({len(data) // 1024} KB), {n} runs interleaved:")
        _print(times, "floor (draft+resize)")


def minimal_page(jpeg: bytes, probs: list[float]) -> bytes:
    """The floor: what a one-page report with an image and a bar chart must cost."""
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


def make_content(image_rgb: np.ndarray):  # -> ReportContent (imported lazily)
    """A typical report: every field filled, an urgent result (made-up identifiers)."""
    from datetime import date, datetime, timedelta, timezone

    from schemas import CLASS_NAMES, MELANOMA, ImageMetadata, TriageLevel, TriageThresholds
    from worker.report import ReportContent

    received = datetime(2024, 3, 5, 9, 12, 3, tzinfo=timezone.utc)
    rest = (1 - 0.31) / (len(CLASS_NAMES) - 1)
    return ReportContent(
        job_id="3f2a9c1e-6b7d-4e21-9a0b-5c4d3e2f1a00",
        metadata=ImageMetadata(
            patient_id="P00012345", patient_name="Doe^Jane", accession_number="ACC0001",
            study_instance_uid="1.2.826.0.1.3680043.8.498.1", series_instance_uid="1.2.826.0.1.3680043.8.498.2",
            sop_instance_uid="1.2.826.0.1.3680043.8.498.3", study_date=date(2024, 3, 5),
            body_site="Upper back", laterality="L"),
        image_rgb=image_rgb,
        probabilities={c: (0.31 if c == MELANOMA else rest) for c in CLASS_NAMES},
        triage=TriageLevel.URGENT,
        triage_explanation="Melanoma probability 31.0 % is at or above this model's urgent threshold (12.0 %).",
        thresholds=TriageThresholds(urgent_melanoma=0.12, soon_keratinocyte=0.2, min_confidence=0.4),
        model_version="2024.03.1-bench", image_sha256="ab" * 32,
        received_at=received, reported_at=received + timedelta(seconds=6),
    )


def bench_pdf(rgb: np.ndarray, runs: int) -> None:
    from PIL import Image as PILImage
    from reportlab import rl_config

    from worker.report import layout

    from reportlab.lib.rl_accel import _c_funcs

    accel = bool(_c_funcs)
    image = np.asarray(PILImage.fromarray(rgb).resize((600, 450), PILImage.Resampling.BICUBIC))
    big = np.asarray(PILImage.fromarray(rgb).resize((4000, 3000), PILImage.Resampling.BICUBIC))
    content = make_content(image_rgb=image)
    content_big = make_content(image_rgb=big)
    jpeg = io.BytesIO()
    PILImage.fromarray(image).save(jpeg, "JPEG", quality=92)
    probs = [content.probabilities[k] for k in content.probabilities]

    def no_a85():
        rl_config.useA85 = 0
        try:
            layout.build_pdf(content)
        finally:
            rl_config.useA85 = 1

    def thumbnail(img):
        t = PILImage.fromarray(img)
        t.thumbnail((600, 600), PILImage.Resampling.LANCZOS)
        t.save(io.BytesIO(), format="JPEG", quality=92, subsampling=0)

    layout.build_pdf(content)
    times = _interleaved({
        "ours build_pdf (600x450 image)": lambda: layout.build_pdf(content),
        "ours build_pdf, useA85=0": no_a85,
        "  part: build_story only": lambda: layout.build_story(content),
        "  part: thumbnail 600x450 in": lambda: thumbnail(image),
        "  part: thumbnail 4000x3000 in": lambda: thumbnail(big),
        "ours build_pdf (4000x3000 image)": lambda: layout.build_pdf(content_big),
        "floor minimal page": lambda: minimal_page(jpeg.getvalue(), probs),
    }, runs)
    sizes = (len(layout.build_pdf(content)), len(minimal_page(jpeg.getvalue(), probs)))
    print(f"PDF, reportlab C accelerator {'ON' if accel else 'OFF'}, {runs} runs interleaved "
          f"(report {sizes[0] // 1024} KB, floor {sizes[1] // 1024} KB):")
    _print(times, "floor minimal page")


def bench_deviation(data: Path, version_dir: Path, n: int) -> None:
    """How much the draft path moves the model's outputs (LiteRT, float32)."""
    from PIL import Image

    from schemas import CLASS_NAMES, TriageThresholds
    from worker.classify.preprocess import to_model_input
    from worker.classify.runtime_litert import LiteRTModel
    from worker.classify.triage import decide
    from worker.imaging.decode import decode_bytes
    from worker.imaging.fast_decode import reduced_jpeg
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_serving import _calibrated, test_split

    meta = json.loads((version_dir / "model.json").read_text())
    model = LiteRTModel.from_version_dir(version_dir, meta["sha256"])
    th, temp = TriageThresholds(**meta["thresholds"]), float(meta["temperature"])
    paths = [p for p, _ in test_split(version_dir, data)][:n]
    row = lambda r: dict(zip(CLASS_NAMES, map(float, r)))  # noqa: E731
    mel = CLASS_NAMES.index("melanoma")
    for name, size in SIZES.items():
        jpegs = []
        for path in paths:
            with Image.open(path) as im:
                jpegs.append(upscaled_jpeg(np.asarray(im.convert("RGB")), size))
        variants = {
            "current": lambda j: decode_bytes(j).rgb,
            "draft>=224": lambda j: reduced_jpeg(j, 224).decoded.rgb,
            "draft>=448": lambda j: reduced_jpeg(j, 448).decoded.rgb,
            # yardstick: the same photo saved at JPEG quality 85 instead of 92, current decode
            "current, JPEG q85": lambda j: decode_bytes(_requality(j, 85)).rgb,
        }
        logits = {k: np.concatenate([model.logits(to_model_input(f(j), 224)) for j in jpegs])
                  for k, f in variants.items()}
        pa = _calibrated(logits["current"], temp)
        for k in list(variants)[1:]:
            pb = _calibrated(logits[k], temp)
            changed = sum(decide(row(x), th) != decide(row(y), th) for x, y in zip(pa, pb))
            print(f"  {name} {k:<18} vs current, {len(paths)} real test images: max |Δ logit| "
                  f"{np.abs(logits[k] - logits['current']).max():.3f}, max |Δ p(mel)| "
                  f"{np.abs(pa - pb)[:, mel].max():.4f}, triage level changed on {changed}")


def _requality(jpeg: bytes, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with Image.open(io.BytesIO(jpeg)) as im:
        im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--version-dir", type=Path, default=None)
    ap.add_argument("--n-deviation", type=int, default=200)
    ap.add_argument("--pdf-only", choices=("accel", "noaccel"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pdf_only:
        bench_pdf(real_image(args.data), args.runs)
        return
    rgb = real_image(args.data)
    bench_decode(rgb, args.runs)
    for mode in ("noaccel", "accel"):
        pre = "import sys; sys.modules['_rl_accel'] = None; " if mode == "noaccel" else ""
        argv = [__file__, "--pdf-only", mode, "--runs", str(args.runs), "--data", str(args.data)]
        code = f"{pre}import runpy, sys; sys.argv = {argv!r}; runpy.run_path({__file__!r}, run_name='__main__')"
        print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout, end="")
    if args.version_dir:
        print("model outputs, decode variants (LiteRT float32):")
        bench_deviation(args.data, args.version_dir, args.n_deviation)


if __name__ == "__main__":
    main()
