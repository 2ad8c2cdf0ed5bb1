"""evaluate_predictions on synthetic probabilities and small generated images."""

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from schemas.classes import CLASS_NAMES, MELANOMA_INDEX
from schemas.messages import TriageThresholds
from worker.training.evaluation import evaluate_predictions

THRESHOLDS = TriageThresholds(urgent_melanoma=0.3, soon_keratinocyte=0.4, min_confidence=0.4)


def _synthetic(tmp_path, n=90, n_mel_only=15, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASS_NAMES)
    logits = rng.normal(0, 1, (n, len(CLASS_NAMES)))
    logits[np.arange(n), labels] += 2.0
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    melanoma = (labels == MELANOMA_INDEX).astype(int)
    labels[:n_mel_only] = -1  # melanoma / not-melanoma only, as in ISIC 2017
    melanoma[:n_mel_only] = np.arange(n_mel_only) % 2
    paths = []
    for i in range(n):
        p = tmp_path / "img" / f"{i:03d}.png"
        p.parent.mkdir(exist_ok=True)
        if i % 7 == 3:
            p.write_bytes(b"not an image")  # unreadable files are skipped, not fatal
        elif i % 11 != 5:  # and some are missing altogether
            Image.new("RGB", (24, 24), tuple(int(c) for c in rng.integers(0, 255, 3))).save(p)
        paths.append(str(p))
    sources = ["isic2017" if i < n_mel_only else ("ham10000" if i % 2 else "isic-9class") for i in range(n)]
    return probs, labels, melanoma, paths, sources


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("eval")
    probs, labels, melanoma, paths, sources = _synthetic(tmp_path)
    out = tmp_path / "out"
    metrics = evaluate_predictions(probs, labels, melanoma, THRESHOLDS, paths, out, "Test evaluation",
                                   seed=3, sources=sources, n_boot=50)
    return metrics, out, (probs, labels, melanoma, paths, sources)


def test_all_files_written(evaluated):
    _, out, _ = evaluated
    for name in ("metrics.json", "confusion_matrix.png", "roc_curves.png", "reliability.png",
                 "confidently_wrong.png", "evaluation.pdf"):
        assert (out / name).stat().st_size > 0, name
    for name in ("confusion_matrix.png", "roc_curves.png", "reliability.png", "confidently_wrong.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"


def test_metrics_json_matches_return_and_has_keys(evaluated):
    metrics, out, (probs, labels, melanoma, _, _) = evaluated
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    for key in ("melanoma", "soon", "balanced_accuracy", "ece", "nine_class", "per_source",
                "triage_counts", "reliability_bins", "confidently_wrong", "thresholds"):
        assert key in metrics, key
    assert metrics["n"] == 90 and metrics["n_nine_class"] == 75 and metrics["n_melanoma_only"] == 15
    assert metrics["nine_class"]["n"] == 75  # -1 rows excluded from nine-class metrics
    assert metrics["melanoma"]["n"] == 90  # ...but counted for melanoma
    for key in ("auc", "sensitivity", "specificity"):
        d = metrics["melanoma"][key]
        assert d["ci_low"] <= d["value"] <= d["ci_high"]
    assert metrics["ece"]["ci_low"] <= metrics["ece"]["value"] <= metrics["ece"]["ci_high"]
    assert sum(metrics["triage_counts"].values()) == 90
    assert set(metrics["per_source"]) == {"isic2017", "ham10000", "isic-9class"}
    assert metrics["per_source"]["isic2017"]["balanced_accuracy"] is None
    assert len(metrics["nine_class"]["confusion_matrix"]) == 9


def test_soon_uses_sum_of_soon_classes(evaluated):
    from schemas.classes import SOON_CLASSES

    metrics, _, (probs, labels, _, _, _) = evaluated
    known = labels >= 0
    idx = [CLASS_NAMES.index(c) for c in SOON_CLASSES]
    truth = np.isin(labels[known], idx)
    flagged = probs[known][:, idx].sum(axis=1) >= THRESHOLDS.soon_keratinocyte
    assert metrics["soon"]["sensitivity"]["value"] == pytest.approx((flagged & truth).sum() / truth.sum())
    assert metrics["soon"]["specificity"]["value"] == pytest.approx((~flagged & ~truth).sum() / (~truth).sum())


def test_triage_counts_follow_decide(evaluated):
    from worker.classify.triage import decide

    metrics, _, (probs, *_rest) = evaluated
    expected = {}
    for row in probs:
        level = decide(dict(zip(CLASS_NAMES, row)), THRESHOLDS).value
        expected[level] = expected.get(level, 0) + 1
    assert {k: v for k, v in metrics["triage_counts"].items() if v} == expected


def test_confidently_wrong_sorted(evaluated):
    metrics, _, _ = evaluated
    probs_listed = [w["probability"] for w in metrics["confidently_wrong"]]
    assert probs_listed == sorted(probs_listed, reverse=True)
    assert probs_listed


def test_pdf_is_one_page(evaluated):
    _, out, _ = evaluated
    info = subprocess.run(["pdfinfo", str(out / "evaluation.pdf")], capture_output=True, text=True,
                          check=True).stdout
    assert "Pages:           1" in info


def test_rejects_mismatched_inputs(tmp_path):
    probs = np.full((3, 9), 1 / 9)
    with pytest.raises(ValueError):
        evaluate_predictions(probs, np.array([0, 1]), np.array([0, 0, 0]), THRESHOLDS,
                             ["a", "b", "c"], tmp_path, "x", n_boot=5)
    with pytest.raises(ValueError):  # a melanoma label with melanoma flag 0 is a contradiction
        evaluate_predictions(probs, np.array([MELANOMA_INDEX, 1, 2]), np.array([0, 0, 0]), THRESHOLDS,
                             ["a", "b", "c"], tmp_path, "x", n_boot=5)


def test_class_calls_follow_the_versions_class_bias(tmp_path):
    from sklearn.metrics import balanced_accuracy_score

    probs, labels, melanoma, paths, sources = _synthetic(tmp_path)
    bias = [0.0] * len(CLASS_NAMES)
    bias[CLASS_NAMES.index("dermatofibroma")] = 2.5  # names dermatofibroma far more often
    t = THRESHOLDS.model_copy(update={"class_bias": bias})
    m = evaluate_predictions(probs, labels, melanoma, t, paths, tmp_path / "o", "bias", n_boot=20,
                             sources=sources)
    known = labels >= 0
    calls = (np.log(probs[known]) + np.array(bias)).argmax(axis=1)
    assert not np.array_equal(calls, probs[known].argmax(axis=1))
    assert m["nine_class"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels[known], calls))
    assert m["balanced_accuracy"]["value"] == pytest.approx(m["nine_class"]["balanced_accuracy"])
    effect = m["class_call"]
    assert effect["rule"].startswith("prior-corrected")
    assert effect["balanced_accuracy"] == pytest.approx(m["nine_class"]["balanced_accuracy"])
    assert effect["accuracy_argmax"] == pytest.approx(np.mean(probs[known].argmax(axis=1) == labels[known]))
    assert effect["accuracy"] == pytest.approx(np.mean(calls == labels[known]))
    col = np.array(m["nine_class"]["confusion_matrix"]).sum(axis=0)
    assert col[CLASS_NAMES.index("dermatofibroma")] == (calls == CLASS_NAMES.index("dermatofibroma")).sum()
