"""describe_dataset on a small synthetic manifest with generated images."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from schemas.classes import CLASS_NAMES
from worker.training.describe import describe_dataset


def _manifest(tmp_path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    # nine-class rows: class i gets i + 1 images (dermatofibroma..vascular), last class absent
    for ci, name in enumerate(CLASS_NAMES[:-1]):
        for j in range(ci + 1):
            size = 180 if j % 2 else 224
            source = "isic-9class" if size == 180 else "ham10000"
            p = tmp_path / "img" / f"{name}_{j}.jpg"
            p.parent.mkdir(exist_ok=True)
            Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 255, 3))).save(p)
            rows.append(dict(path=str(p), source=source, image_id=f"ISIC_{ci:02d}{j:02d}",
                             lesion_id=f"HAM_{ci:02d}" if source == "ham10000" else None, label=name,
                             melanoma=int(name == "melanoma"), sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
                             width=size, height=size))
    # melanoma / not-melanoma only rows, one of them unreadable
    for j in range(4):
        p = tmp_path / "img" / f"bin_{j}.jpg"
        if j == 3:
            p.write_bytes(b"garbage")
        else:
            Image.new("RGB", (256, 256), (200, 100, 50 * j)).save(p)
        rows.append(dict(path=str(p), source="isic2017", image_id=f"ISIC_9{j}", lesion_id=None, label=None,
                         melanoma=j % 2, sha256=hashlib.sha256(p.read_bytes()).hexdigest(), width=256, height=256))
    # an exact duplicate filed under a second class
    dup = dict(rows[0])
    dup["label"] = "nevus"
    rows.append(dup)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("describe")
    manifest = _manifest(tmp_path)
    out = tmp_path / "describe"
    return manifest, out, describe_dataset(manifest, out, samples_per_class=3, seed=1)


def test_describe_writes_files_and_summary(described):
    _, out, text = described
    for name in ("class_distribution.png", "samples_grid.png", "image_sizes.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert (out / "summary.txt").read_text() == text
    assert "isic2017" in text and "ham10000" in text and "isic-9class" in text
    # class index i has i + 1 images: squamous cell carcinoma (index 7) has 8, the largest;
    # actinic keratosis (index 0) has 1 -> ratio 8 / 1 (nevus: 5 + the duplicate = 6)
    assert "Imbalance ratio (largest / smallest non-empty class): 8.0" in text
    assert "Classes with no images: Vascular lesion" in text
    assert "Rows with a melanoma / not-melanoma label only: 4 (2 melanoma)" in text
    assert "1 group(s) with conflicting labels" in text
    assert "isic2017: width 256-256, height 256-256" in text


def test_describe_is_seeded(described, tmp_path):
    manifest, out, _ = described
    describe_dataset(manifest, tmp_path / "again", samples_per_class=3, seed=1)
    assert (tmp_path / "again" / "samples_grid.png").read_bytes() == (out / "samples_grid.png").read_bytes()


def test_describe_rejects_unknown_label(tmp_path):
    manifest = _manifest(tmp_path)
    manifest.loc[0, "label"] = "mel"
    with pytest.raises(ValueError, match="label space"):
        describe_dataset(manifest, tmp_path / "x")
