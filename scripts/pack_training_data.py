"""Pack the training data small enough to travel to a GPU machine, and unpack it there.

A GPU machine lent to a session receives the project checkout only, at most 64 MiB in all,
and ``../shared/data`` (147 MB of JPEGs) does not travel. ``pack`` copies the three source
layouts (``isic-9class/train/<class>/``, ``ham10000-224/images`` + ``labels.csv``,
``isic2017-train/images`` + ``labels.csv``) with every image re-encoded as WebP (quality 70,
EXIF orientation applied, size unchanged): about 27 MB. ``unpack`` turns them back into PNG
files of the same names (lossless from there on), in the same layout, which the trainer's
manifest scan reads as usual.

Re-encoding is deterministic, so exact duplicate files stay exact duplicates and the data
checks find the same cases. A model trained on an unpacked copy has seen WebP-compressed
pixels; its model card says so through the training command, and the copy goes into an
ignored folder (``.devdata/``): it is never committed.

    python scripts/pack_training_data.py pack ../shared/data .devdata/data
    python scripts/pack_training_data.py unpack .devdata/data /tmp/data     # on the GPU machine
"""

from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
QUALITY = 70


def _pack_one(job: tuple[Path, Path]) -> int:
    src, dst = job
    with Image.open(src) as img:
        ImageOps.exif_transpose(img).convert("RGB").save(dst, "WEBP", quality=QUALITY, method=4)
    return dst.stat().st_size


def _unpack_one(job: tuple[Path, Path]) -> int:
    src, dst = job
    with Image.open(src) as img:
        img.convert("RGB").save(dst, "PNG", compress_level=1)
    return 1


def _jobs(src_root: Path, dst_root: Path, suffixes: set[str], new_suffix: str) -> list[tuple[Path, Path]]:
    """(source image, destination) for every image under ``src_root``; other files (labels.csv,
    README) are copied as they are and folders made."""
    jobs = []
    for path in sorted(src_root.rglob("*")):
        rel = path.relative_to(src_root)
        if path.is_dir():
            (dst_root / rel).mkdir(parents=True, exist_ok=True)
        elif path.suffix.lower() in suffixes:
            jobs.append((path, dst_root / rel.with_suffix(new_suffix)))
        elif path.suffix.lower() in {".csv", ".md"}:
            (dst_root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst_root / rel)
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    if args.dst.exists():
        shutil.rmtree(args.dst)
    if args.action == "pack":
        jobs, work = _jobs(args.src, args.dst, IMAGE_SUFFIXES, ".webp"), _pack_one
    else:
        jobs, work = _jobs(args.src, args.dst, {".webp"}, ".png"), _unpack_one
    with ProcessPoolExecutor(args.workers) as pool:
        total = sum(pool.map(work, jobs, chunksize=64))
    unit = "bytes" if args.action == "pack" else "images"
    print(f"{args.action}: {len(jobs)} images -> {args.dst} ({total} {unit})")


if __name__ == "__main__":
    main()
