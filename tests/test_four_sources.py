"""The fourth source (derm7pt) and the three-class ISIC 2017 labels, on generated data: layout
detection, exclusions with a reason, lesion grouping of ``bis`` views in the split and in
leave-one-source-out folds, and label resolution across sources."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.test_datachecks import blob_jpeg
from worker.training import datachecks, manifest, split
from worker.training.loso import fold_rows


def make_four_sources(root: Path) -> dict:
    """isic-9class, HAM10000, three-class ISIC 2017 and derm7pt in their real layouts."""
    nine = root / "isic-9class" / "train"
    for label in ("nevus", "melanoma", "basal_cell_carcinoma"):
        for k in range(4):
            blob_jpeg(nine / label / f"ISIC_{label[:3]}{k}.jpg", label, 40, hash((label, k)) % 10_000)
    ham = root / "ham10000-224"
    ham_rows = []
    for k, dx in enumerate(["nv", "nv", "mel", "bkl", "bcc", "nv"]):
        iid = f"ISIC_8{k:06d}"
        blob_jpeg(ham / "images" / f"{iid}.jpg", manifest.HAM_DX_TO_CLASS[dx], 48, 100 + k)
        ham_rows.append({"image_id": iid, "dx": dx, "lesion_id": f"HAM_{k}"})
    pd.DataFrame(ham_rows).to_csv(ham / "labels.csv", index=False)
    i17 = root / "isic2017-train"
    rows17 = []
    for k, dia in enumerate(["melanoma", "seborrheic_keratosis", "nevus", "nevus", "seborrheic_keratosis",
                             "melanoma"]):
        iid = f"ISIC_7{k:06d}"
        blob_jpeg(i17 / "images" / f"{iid}.jpg", dia, 56, 200 + k)
        rows17.append({"image_id": iid, "melanoma": int(dia == "melanoma"),
                       "seborrheic_keratosis": int(dia == "seborrheic_keratosis"), "diagnosis": dia})
    # the same image id as a HAM10000 image: HAM's verdict (nevus) and ISIC 2017's agree on melanoma
    blob_jpeg(i17 / "images" / "ISIC_8000000.jpg", "nevus", 30, 300)
    rows17.append({"image_id": "ISIC_8000000", "melanoma": 0, "seborrheic_keratosis": 0, "diagnosis": "nevus"})
    pd.DataFrame(rows17).to_csv(i17 / "labels.csv", index=False)
    d7 = root / "derm7pt"
    rows7 = []
    for k, (dia, cls) in enumerate([("clark nevus", "nevus"), ("melanoma (in situ)", "melanoma"),
                                    ("seborrheic keratosis", "seborrheic_keratosis"), ("lentigo",
                                    "pigmented_benign_keratosis"), ("melanosis", ""), ("miscellaneous", ""),
                                    ("blue nevus", "nevus"), ("melanoma (0.76 to 1.5 mm)", "melanoma")]):
        iid = f"Aal{k:03d}"
        blob_jpeg(d7 / "images" / f"{iid}.jpg", cls or "nevus", 64, 400 + k)
        rows7.append({"image_id": iid, "lesion_id": iid, "diagnosis": dia, "class": cls,
                      "melanoma": int(cls == "melanoma"), "pigment_network": "absent"})
    # a second view of lesion Aal001 (a melanoma): same lesion id
    blob_jpeg(d7 / "images" / "Aal001bis.jpg", "melanoma", 64, 499)
    rows7.append({"image_id": "Aal001bis", "lesion_id": "Aal001", "diagnosis": "melanoma (in situ)",
                  "class": "melanoma", "melanoma": 1, "pigment_network": "atypical"})
    pd.DataFrame(rows7).to_csv(d7 / "labels.csv", index=False)
    return {"excluded": {"Aal004", "Aal005"}, "bis": ("Aal001", "Aal001bis")}


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    root = tmp_path_factory.mktemp("four")
    facts = make_four_sources(root)
    scan = manifest.scan([root])
    out = tmp_path_factory.mktemp("dq4")
    return scan, datachecks.run_checks(scan, out), out, facts


def test_derm7pt_layout_detected_and_labelled(four):
    scan, _, _, facts = four
    df = scan.manifest
    assert set(df["source"]) == {"isic-9class", "ham10000", "isic2017", "derm7pt"}
    d7 = df[df["source"] == "derm7pt"].set_index("image_id")
    assert d7.loc["Aal002", "label"] == "seborrheic_keratosis"
    assert d7.loc["Aal003", "label"] == "pigmented_benign_keratosis"
    assert d7.loc["Aal007", "melanoma"] == 1 and d7.loc["Aal000", "melanoma"] == 0
    assert d7.loc["Aal001bis", "lesion_id"] == "Aal001"
    assert not facts["excluded"] & set(d7.index)


def test_derm7pt_rows_without_a_class_are_excluded_with_a_reason(four):
    scan, result, out, facts = four
    assert {e["image_id"] for e in scan.excluded} == facts["excluded"]
    assert all("has no class of the nine" in e["reason"] for e in scan.excluded)
    assert any("melanosis" in e["reason"] for e in scan.excluded)
    report = json.loads((out / "data_quality.json").read_text())
    assert {e["image_id"] for e in report["excluded"]} == facts["excluded"]
    assert "Excluded files" in (out / "data_quality.md").read_text()
    assert not facts["excluded"] & set(result.resolved["image_id"])


def test_isic2017_three_class_labels_are_nine_class_labels(four):
    scan, result, _, _ = four
    i17 = scan.manifest[scan.manifest["source"] == "isic2017"].set_index("image_id")
    assert i17.loc["ISIC_7000001", "label"] == "seborrheic_keratosis"
    assert i17.loc["ISIC_7000000", "label"] == "melanoma" and i17.loc["ISIC_7000000", "melanoma"] == 1
    resolved = result.resolved.set_index("image_id")
    assert resolved.loc["ISIC_7000004", "label"] == "seborrheic_keratosis"
    assert result.report["final"]["per_class"]["melanoma_only_negative"] == 0
    # the id shared with HAM10000 is one image, kept once with HAM's label
    assert (result.resolved["image_id"] == "ISIC_8000000").sum() == 1
    assert resolved.loc["ISIC_8000000", "label"] == "nevus"


def test_isic2017_diagnosis_must_agree_with_its_melanoma_column(tmp_path):
    i17 = tmp_path / "isic2017-train"
    blob_jpeg(i17 / "images" / "ISIC_0000001.jpg", "nevus", 32, 1)
    pd.DataFrame([{"image_id": "ISIC_0000001", "melanoma": 1, "diagnosis": "nevus"}]).to_csv(
        i17 / "labels.csv", index=False)
    with pytest.raises(ValueError, match="melanoma=1 but diagnosis nevus"):
        manifest.scan([tmp_path])


def test_isic2017_without_diagnosis_stays_melanoma_only(tmp_path):
    i17 = tmp_path / "isic2017-train"
    blob_jpeg(i17 / "images" / "ISIC_0000002.jpg", "nevus", 32, 2)
    pd.DataFrame([{"image_id": "ISIC_0000002", "melanoma": 0}]).to_csv(i17 / "labels.csv", index=False)
    df = manifest.scan([tmp_path]).manifest
    assert df["label"].tolist() == [None] and df["melanoma"].tolist() == [0]


def test_derm7pt_second_views_stay_together_in_split_and_folds(four):
    _, result, _, facts = four
    df = split.split_frame(result.resolved, seed=3)
    split.check_no_leak(df)
    subsets = df.set_index("image_id").loc[list(facts["bis"]), "subset"]
    assert subsets.nunique() == 1
    train, held, _ = fold_rows(result.resolved, "derm7pt")
    assert set(facts["bis"]) <= set(held["image_id"]) and not set(facts["bis"]) & set(train["image_id"])
    assert set(held["source"]) == {"derm7pt"} and "derm7pt" not in set(train["source"])


def test_disagreeing_labelled_sources_drop_the_image(tmp_path):
    """The same file in ISIC 2017 (nevus) and derm7pt (seborrheic keratosis): no verdict wins."""
    i17, d7 = tmp_path / "isic2017-train", tmp_path / "derm7pt"
    blob_jpeg(i17 / "images" / "ISIC_0000003.jpg", "nevus", 32, 3)
    (d7 / "images").mkdir(parents=True)
    (d7 / "images" / "Xyz001.jpg").write_bytes((i17 / "images" / "ISIC_0000003.jpg").read_bytes())
    pd.DataFrame([{"image_id": "ISIC_0000003", "melanoma": 0, "diagnosis": "nevus"}]).to_csv(
        i17 / "labels.csv", index=False)
    pd.DataFrame([{"image_id": "Xyz001", "lesion_id": "Xyz001", "diagnosis": "seborrheic keratosis",
                   "class": "seborrheic_keratosis", "melanoma": 0}]).to_csv(d7 / "labels.csv", index=False)
    result = datachecks.check_and_resolve(manifest.scan([tmp_path]))
    assert result.resolved.empty
    assert result.report["decisions"]["dropped_labelled_sources_conflict"] == 1
