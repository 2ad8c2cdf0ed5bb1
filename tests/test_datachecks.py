"""Data checks on generated fixtures: duplicates, conflicting labels, lesion grouping,
unreadable files. Also home of ``make_fixture_data`` (used by test_training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from schemas import CLASS_NAMES
from worker.training import datachecks, manifest, split

#: A distinct colour per class so a tiny network can learn something in two epochs.
_COLOURS = {name: tuple(int(c) for c in np.random.default_rng(i).integers(30, 230, 3))
            for i, name in enumerate(CLASS_NAMES)}
_DX = {v: k for k, v in manifest.HAM_DX_TO_CLASS.items()}


def blob_jpeg(path: Path, label: str, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    bg = rng.integers(170, 220, 3)
    arr = np.clip(bg + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    r = size * rng.uniform(0.2, 0.35)
    cx, cy = size / 2 + rng.uniform(-3, 3, 2)
    ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=_COLOURS[label])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)


def make_fixture_data(root: Path, per_class: int = 6) -> dict:
    """Three sets in the real layouts, with one instance of every known defect."""
    nine = root / "isic-9class" / "train"
    ham = root / "ham10000-224"
    i17 = root / "isic2017-train"
    n = 9_000_000
    for ci, label in enumerate(CLASS_NAMES):
        for k in range(per_class):
            n += 1
            blob_jpeg(nine / label / f"ISIC_{n:07d}.jpg", label, 40, n)
    # exact duplicate inside one folder (kept once)
    dup_src = nine / "nevus" / "ISIC_9000030.jpg"
    if not dup_src.exists():
        dup_src = sorted((nine / "nevus").iterdir())[0]
    (nine / "nevus" / f"{dup_src.stem}(1).jpg").write_bytes(dup_src.read_bytes())
    # the same file in two class folders, no other verdict (dropped)
    two = nine / "melanoma" / "ISIC_9500000.jpg"
    blob_jpeg(two, "melanoma", 40, 500)
    (nine / "dermatofibroma" / "ISIC_9500000.jpg").write_bytes(two.read_bytes())
    # unreadable file
    (nine / "nevus" / "ISIC_9600000.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")

    # HAM10000: one lesion with three images; one image id also in isic-9class with
    # another folder label (HAM wins) at another size.
    rows = []
    m = 9_100_000
    for ci, label in enumerate(manifest.HAM_DX_TO_CLASS.values()):
        for k in range(per_class):
            m += 1
            blob_jpeg(ham / "images" / f"ISIC_{m:07d}.jpg", label, 48, m)
            rows.append({"image_id": f"ISIC_{m:07d}", "dx": _DX[label], "lesion_id": f"HAM_{m:07d}"})
    lesion_ids = [r["image_id"] for r in rows if r["dx"] == "nv"][:3]
    for r in rows:
        if r["image_id"] in lesion_ids:
            r["lesion_id"] = "HAM_SHARED"
    override_id = next(r["image_id"] for r in rows if r["dx"] == "bcc")
    blob_jpeg(nine / "nevus" / f"{override_id}.jpg", "basal_cell_carcinoma", 40, 777)
    # HAM akiec that the folder calls squamous_cell_carcinoma (Bowen's disease): refined
    refined_id = next(r["image_id"] for r in rows if r["dx"] == "akiec")
    blob_jpeg(nine / "squamous_cell_carcinoma" / f"{refined_id}.jpg", "actinic_keratosis", 40, 778)
    pd.DataFrame(rows).to_csv(ham / "labels.csv", index=False)

    # ISIC 2017 melanoma-only; one id also in isic-9class as nevus but melanoma=1 (dropped)
    rows17 = []
    q = 9_200_000
    for k in range(4 * per_class):
        q += 1
        mel = int(k % 4 == 0)
        blob_jpeg(i17 / "images" / f"ISIC_{q:07d}.jpg", "melanoma" if mel else "nevus", 56, q)
        rows17.append({"image_id": f"ISIC_{q:07d}", "melanoma": mel})
    axis_id = sorted((nine / "vascular_lesion").iterdir())[0].stem
    blob_jpeg(i17 / "images" / f"{axis_id}.jpg", "melanoma", 56, 999)
    rows17.append({"image_id": axis_id, "melanoma": 1})
    pd.DataFrame(rows17).to_csv(i17 / "labels.csv", index=False)
    return {"dup_id": dup_src.stem, "two_folder_id": "ISIC_9500000", "override_id": override_id,
            "refined_id": refined_id,
            "axis_id": axis_id, "lesion_images": lesion_ids, "unreadable": "ISIC_9600000"}


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("data")
    return root, make_fixture_data(root)


@pytest.fixture(scope="module")
def checked(fixture_data, tmp_path_factory):
    root, facts = fixture_data
    scan = manifest.scan([root])
    out = tmp_path_factory.mktemp("dq")
    return scan, datachecks.run_checks(scan, out), out, facts


def test_manifest_columns_and_layouts(checked):
    scan, _, _, _ = checked
    df = scan.manifest
    assert list(df.columns) == list(manifest.MANIFEST_COLUMNS)
    assert set(df["source"]) == {"isic-9class", "ham10000", "isic2017"}
    assert df.loc[df["source"] == "isic2017", "label"].isna().all()
    assert df["melanoma"].isin([0, 1]).all()
    assert (df["width"] > 0).all() and df["sha256"].str.len().eq(64).all()
    assert manifest.manifest_sha256(df) == manifest.manifest_sha256(df.sample(frac=1, random_state=1))


def test_unreadable_file_listed_and_excluded(checked):
    scan, result, out, facts = checked
    assert [u["image_id"] for u in scan.unreadable] == [facts["unreadable"]]
    assert facts["unreadable"] not in set(result.resolved["image_id"])
    report = json.loads((out / "data_quality.json").read_text())
    assert report["unreadable"][0]["image_id"] == facts["unreadable"]
    assert "Unreadable files" in (out / "data_quality.md").read_text()


def test_exact_duplicates_collapse_to_one_row(checked):
    _, result, _, facts = checked
    assert result.report["exact_duplicates_within_set"]["count"] >= 2
    assert (result.resolved["image_id"] == facts["dup_id"]).sum() == 1
    assert result.resolved["image_id"].is_unique and result.resolved["sha256"].is_unique


def test_conflicting_labels_resolved_by_rule(checked):
    _, result, _, facts = checked
    res = result.resolved.set_index("image_id")
    # two class folders, no HAM or ISIC 2017 verdict: dropped
    assert facts["two_folder_id"] not in res.index
    # HAM dx wins over the folder label; the larger (HAM) copy is kept
    assert res.loc[facts["override_id"], "label"] == "basal_cell_carcinoma"
    assert res.loc[facts["override_id"], "source"] == "ham10000"
    # ...except where the folder label is a finer diagnosis the HAM code covers
    assert res.loc[facts["refined_id"], "label"] == "squamous_cell_carcinoma"
    assert res.loc[facts["refined_id"], "source"] == "ham10000"
    # ISIC 2017 melanoma=1 against a nine-class vascular_lesion label: dropped
    assert facts["axis_id"] not in res.index
    d = result.report["decisions"]
    assert d["dropped_folder_conflict"] == 1 and d["dropped_melanoma_axis_conflict"] == 1
    assert d["folder_label_overridden_by_ham"] == 1 and d["ham_code_refined_by_folder"] == 1


def test_split_keeps_lesions_and_copies_on_one_side(checked):
    _, result, _, facts = checked
    df = split.split_frame(result.resolved, seed=3)
    split.check_no_leak(df)
    sides = df.loc[df["image_id"].isin(facts["lesion_images"]), "subset"]
    assert len(sides) == 3 and sides.nunique() == 1
    assert set(df["subset"]) == {"train", "val", "test"}
    # deterministic for a fixed seed
    assert (split.split_frame(result.resolved, seed=3)["subset"] == df["subset"]).all()


def test_check_no_leak_detects_a_leak():
    df = pd.DataFrame({"lesion_id": ["L1", "L1"], "image_id": ["a", "b"], "sha256": ["x", "y"],
                       "subset": ["train", "test"]})
    with pytest.raises(AssertionError):
        split.check_no_leak(df)
