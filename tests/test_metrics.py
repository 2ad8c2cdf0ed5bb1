"""Metrics checked against values worked out by hand (arithmetic in the comments)."""

import math

import numpy as np
import pytest

from schemas.messages import TriageThresholds
from worker.training.metrics import (
    binary_sens_spec,
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    melanoma_metrics,
    reliability_bins,
)


def test_sens_spec_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.5])
    # threshold 0.5, positive when >= 0.5:
    # positives 0.9 TP, 0.6 TP, 0.2 FN            -> sensitivity 2/3
    # negatives 0.7 FP, 0.3 TN, 0.1 TN, 0.5 FP (>=) -> specificity 2/4
    sens, spec = binary_sens_spec(y, s, 0.5)
    assert sens == pytest.approx(2 / 3)
    assert spec == pytest.approx(0.5)


def test_sens_spec_undefined_without_positives():
    sens, spec = binary_sens_spec(np.zeros(3), np.array([0.1, 0.9, 0.2]), 0.5)
    assert math.isnan(sens)
    assert spec == pytest.approx(2 / 3)


# Five rows, two classes, n_bins=5 -> bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
ECE_PROBS = np.array(
    [
        [0.95, 0.05],  # label 0: conf .95, correct  -> bin (.8,1]
        [0.85, 0.15],  # label 1: conf .85, wrong    -> bin (.8,1]
        [0.35, 0.65],  # label 1: conf .65, correct  -> bin (.6,.8]
        [0.25, 0.75],  # label 0: conf .75, wrong    -> bin (.6,.8]
        [0.55, 0.45],  # label 0: conf .55, correct  -> bin (.4,.6]
    ]
)
ECE_LABELS = np.array([0, 1, 1, 0, 0])


def test_ece_by_hand():
    # (.8,1]: mean conf (.95+.85)/2 = .90, acc 1/2 -> |.5-.9| = .40, share 2/5 -> .16
    # (.6,.8]: mean conf (.65+.75)/2 = .70, acc 1/2 -> .20, share 2/5        -> .08
    # (.4,.6]: conf .55, acc 1                   -> .45, share 1/5        -> .09
    # ECE = .16 + .08 + .09 = .33
    assert expected_calibration_error(ECE_PROBS, ECE_LABELS, n_bins=5) == pytest.approx(0.33)


def test_reliability_bins_by_hand():
    bins = reliability_bins(ECE_PROBS, ECE_LABELS, n_bins=5)
    assert len(bins) == 5
    assert [b["count"] for b in bins] == [0, 0, 1, 2, 2]
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert bins[4]["lower"] == pytest.approx(0.8) and bins[4]["upper"] == pytest.approx(1.0)
    assert bins[4]["confidence"] == pytest.approx(0.90)
    assert bins[4]["accuracy"] == pytest.approx(0.5)
    assert bins[2]["confidence"] == pytest.approx(0.55)
    assert bins[2]["accuracy"] == pytest.approx(1.0)


def test_ece_perfect_and_confident_zero():
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3)[labels]
    # every row confidence 1.0 and correct -> ECE 0
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)
    # confidence 1.0 and always wrong -> ECE 1
    assert expected_calibration_error(probs, (labels + 1) % 3) == pytest.approx(1.0)


# Seven rows, four classes; class 3 never occurs (column of zeros).
CLS_PROBS = np.array(
    [
        [0.7, 0.2, 0.1, 0.0],  # true 0, pred 0
        [0.6, 0.3, 0.1, 0.0],  # true 0, pred 0
        [0.5, 0.2, 0.3, 0.0],  # true 0, pred 0
        [0.3, 0.6, 0.1, 0.0],  # true 0, pred 1
        [0.2, 0.7, 0.1, 0.0],  # true 1, pred 1
        [0.5, 0.4, 0.1, 0.0],  # true 1, pred 0
        [0.1, 0.1, 0.8, 0.0],  # true 2, pred 2
    ]
)
CLS_LABELS = np.array([0, 0, 0, 0, 1, 1, 2])
NAMES = ["a", "b", "c", "d"]


def test_classification_metrics_by_hand():
    m = classification_metrics(CLS_PROBS, CLS_LABELS, NAMES)
    # accuracy: correct rows 0,1,2,4,6 -> 5/7
    assert m["accuracy"] == pytest.approx(5 / 7)
    # recall a 3/4, b 1/2, c 1/1; balanced accuracy over present classes = 2.25/3 = .75
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    pc = m["per_class"]
    # precision a: predicted a = rows 0,1,2,5 -> 3/4; b: rows 3,4 -> 1/2; c: row 6 -> 1
    assert pc["a"]["precision"] == pytest.approx(0.75)
    assert pc["b"]["precision"] == pytest.approx(0.5)
    assert pc["c"]["precision"] == pytest.approx(1.0)
    assert pc["a"]["recall"] == pytest.approx(0.75)
    assert pc["b"]["recall"] == pytest.approx(0.5)
    # F1 = 2PR/(P+R): a 2*.75*.75/1.5 = .75, b .5, c 1
    assert pc["a"]["f1"] == pytest.approx(0.75)
    assert pc["b"]["f1"] == pytest.approx(0.5)
    assert pc["c"]["f1"] == pytest.approx(1.0)
    assert [pc[n]["support"] for n in NAMES] == [4, 2, 1, 0]
    # AUC c: positive .8 beats every negative (max .3) -> 1
    # AUC b: positives .7 (beats 5 negatives .2,.3,.2,.6,.1) and .4 (beats 4, loses to .6)
    #        -> 9/10 = .9
    # AUC a: positives .7,.6,.5,.3 vs negatives .2,.5,.1
    #        .7 -> 3, .6 -> 3, .5 -> 2 + tie .5 -> 2.5, .3 -> 2; total 10.5/12 = .875
    assert pc["c"]["auc"] == pytest.approx(1.0)
    assert pc["b"]["auc"] == pytest.approx(0.9)
    assert pc["a"]["auc"] == pytest.approx(0.875)
    # class d absent -> AUC undefined
    assert pc["d"]["auc"] is None
    # macro over present classes: recall (.75+.5+1)/3 = .75, AUC (.875+.9+1)/3 = .925
    assert m["macro"]["recall"] == pytest.approx(0.75)
    assert m["macro"]["auc"] == pytest.approx(0.925)
    assert m["macro"]["n_classes_present"] == 3
    assert m["confusion_matrix"] == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_classification_metrics_perfect():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[labels] * 0.9 + 0.1 / 3
    m = classification_metrics(probs, labels, ["x", "y", "z"])
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["macro"]["f1"] == 1.0 and m["macro"]["auc"] == 1.0


def test_classification_metrics_rejects_bad_shape():
    with pytest.raises(ValueError):
        classification_metrics(np.ones((3, 2)), np.array([0, 1, 0]), ["a", "b", "c"])


def test_bootstrap_contains_point_and_is_deterministic():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = np.clip(y * 0.3 + rng.random(80) * 0.7, 0, 1)
    from sklearn.metrics import roc_auc_score

    a = bootstrap_ci(roc_auc_score, y, s, n_boot=200, seed=7)
    b = bootstrap_ci(roc_auc_score, y, s, n_boot=200, seed=7)
    assert a == b
    point, low, high = a
    assert point == pytest.approx(roc_auc_score(y, s))
    assert low <= point <= high
    assert low < high


def test_bootstrap_constant_metric_and_undefined():
    # a constant sample -> every resample has the same mean
    assert bootstrap_ci(np.mean, np.full(10, 0.25), n_boot=50) == (0.25, 0.25, 0.25)
    from sklearn.metrics import roc_auc_score

    # two rows: about half of the resamples hold one class and are skipped, the rest work
    point, low, high = bootstrap_ci(roc_auc_score, np.array([0, 1]), np.array([0.2, 0.8]), n_boot=50)
    assert (point, low, high) == (1.0, 1.0, 1.0)
    # undefined point estimate -> NaN everywhere rather than an exception
    point, low, high = bootstrap_ci(roc_auc_score, np.zeros(4), np.arange(4.0), n_boot=20)
    assert math.isnan(point) and math.isnan(low) and math.isnan(high)


def test_melanoma_metrics_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    # AUC pairs (pos, neg): (.35,.1) win, (.35,.4) lose, (.8,.1) win, (.8,.4) win -> 3/4
    # threshold .4: preds 0,1,0,1 -> sens 1/2 (.8 yes, .35 no), spec 1/2 (.1 no, .4 yes)
    th = TriageThresholds(urgent_melanoma=0.4, soon_keratinocyte=0.5, min_confidence=0.3)
    m = melanoma_metrics(p, y, th, n_boot=100)
    assert m["auc"]["value"] == pytest.approx(0.75)
    assert m["sensitivity"]["value"] == pytest.approx(0.5)
    assert m["specificity"]["value"] == pytest.approx(0.5)
    assert m["threshold"] == 0.4 and m["n"] == 4 and m["n_positive"] == 1 + 1
    for key in ("auc", "sensitivity", "specificity"):
        assert m[key]["ci_low"] <= m[key]["value"] <= m[key]["ci_high"]


def test_melanoma_metrics_no_positives_gives_none():
    m = melanoma_metrics(np.array([0.1, 0.9]), np.array([0, 0]), 0.5, n_boot=20)
    assert m["auc"]["value"] is None and m["sensitivity"]["value"] is None
    assert m["specificity"]["value"] == pytest.approx(0.5)
